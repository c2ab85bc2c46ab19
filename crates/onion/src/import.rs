//! Importing the identity key of a C tor onion service (`hs_ed25519_secret_key` in its
//! `HiddenServiceDir`), so that a user of the classic setup (exim4-smtorp: Exim + C tor)
//! keeps their onion address when moving to smtorp.
//!
//! C tor's file is a 32-byte header, `== ed25519v1-secret: type0 ==` padded with NULs,
//! followed by the 64-byte expanded ed25519 secret key. It goes into arti's keystore as the
//! identity of our onion service; an existing identity is never replaced.

use std::path::Path;

use tor_hscrypto::pk::HsIdKeypair;
use tor_keymgr::KeystoreSelector;
use tor_llcrypto::pk::ed25519::ExpandedKeypair;

use crate::config::OnionSettings;
use crate::transport::{onion_address, OnionError};

/// The header of C tor's `hs_ed25519_secret_key`.
const CTOR_HEADER: &[u8; 32] = b"== ed25519v1-secret: type0 ==\0\0\0";

fn import_error(text: impl Into<String>) -> OnionError {
    OnionError::Config(text.into())
}

/// Reads a C tor `hs_ed25519_secret_key` file (or the `HiddenServiceDir` holding it).
fn read_ctor_key(path: &Path) -> Result<ExpandedKeypair, OnionError> {
    let file = if path.is_dir() {
        path.join("hs_ed25519_secret_key")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file)
        .map_err(|e| import_error(format!("cannot read {}: {e}", file.display())))?;
    if bytes.len() != 96 || &bytes[..32] != CTOR_HEADER {
        return Err(import_error(format!(
            "{} is not a C tor hs_ed25519_secret_key (expected 96 bytes starting with \"== ed25519v1-secret: type0 ==\")",
            file.display()
        )));
    }
    let mut secret = [0u8; 64];
    secret.copy_from_slice(&bytes[32..]);
    ExpandedKeypair::from_secret_key_bytes(secret)
        .ok_or_else(|| import_error(format!("{} holds no valid ed25519 key", file.display())))
}

/// Imports the C tor key at `path` as our onion service's identity and returns the onion
/// address. Fails if we already have an identity (move `<state_dir>/keystore` aside first).
pub fn import_ctor_key(settings: &OnionSettings, path: &Path) -> Result<String, OnionError> {
    let keypair = read_ctor_key(path)?;
    let (keymgr, spec) = crate::identity::keystore(settings)?;
    let existing = keymgr
        .get::<HsIdKeypair>(&spec)
        .map_err(|e| import_error(format!("keystore: {e}")))?;
    if existing.is_some() {
        return Err(import_error(format!(
            "an onion service identity already exists in {}: move it aside first (smtorp never replaces an identity)",
            settings.state_dir.join("keystore").display()
        )));
    }
    keymgr
        .insert(
            HsIdKeypair::from(keypair),
            &spec,
            KeystoreSelector::Primary,
            false,
        )
        .map_err(|e| import_error(format!("cannot store the key: {e}")))?;
    onion_address(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_files_that_are_not_ctor_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hs_ed25519_secret_key");
        std::fs::write(&p, b"hello").unwrap();
        let Err(e) = read_ctor_key(&p) else {
            panic!("accepted a non-key")
        };
        assert!(e.to_string().contains("not a C tor"), "{e}");
        let mut wrong = CTOR_HEADER.to_vec();
        wrong[3] = b'X';
        wrong.extend([7u8; 64]);
        std::fs::write(&p, &wrong).unwrap();
        assert!(read_ctor_key(&p).is_err());
        let mut right = CTOR_HEADER.to_vec();
        right.extend([7u8; 64]);
        std::fs::write(&p, &right).unwrap();
        assert!(
            read_ctor_key(dir.path()).is_ok(),
            "the HiddenServiceDir itself works too"
        );
    }
}
