//! Our onion service's identity key in arti's keystore: opened for importing a C tor key
//! (`import`) and read for signing with it (sender authentication, docs/sender-auth.md). The
//! secret is handed out only as the 64 bytes a signer needs; it is never logged.

use tor_hscrypto::pk::HsIdKeypair;
use tor_hsservice::{HsIdKeypairSpecifier, HsNickname};
use tor_keymgr::{ArtiNativeKeystore, KeyMgr, KeyMgrBuilder};
use tor_llcrypto::pk::ed25519::ExpandedKeypair;

use crate::config::{client_config, OnionSettings};
use crate::transport::OnionError;

fn keystore_error(text: impl Into<String>) -> OnionError {
    OnionError::Launch(text.into())
}

/// The key manager over arti's keystore in `settings.state_dir`, and the specifier of our
/// service's identity key.
pub(crate) fn keystore(
    settings: &OnionSettings,
) -> Result<(KeyMgr, HsIdKeypairSpecifier), OnionError> {
    let config = client_config(settings)?;
    let store = ArtiNativeKeystore::from_path_and_mistrust(
        settings.state_dir.join("keystore"),
        config.fs_mistrust(),
    )
    .map_err(|e| keystore_error(format!("keystore: {e}")))?;
    let keymgr = KeyMgrBuilder::default()
        .primary_store(Box::new(store))
        .build()
        .map_err(|e| keystore_error(format!("keystore: {e}")))?;
    let nickname = HsNickname::new(settings.nickname.clone())
        .map_err(|e| keystore_error(format!("onion service nickname: {e}")))?;
    Ok((keymgr, HsIdKeypairSpecifier::new(nickname)))
}

/// The expanded secret key (scalar || prefix, 64 bytes) of our onion service's identity,
/// or `None` if there is no identity yet. Offline: reads the keystore only.
pub fn identity_secret(settings: &OnionSettings) -> Result<Option<[u8; 64]>, OnionError> {
    let (keymgr, spec) = keystore(settings)?;
    let keypair = keymgr
        .get::<HsIdKeypair>(&spec)
        .map_err(|e| keystore_error(format!("keystore: {e}")))?;
    Ok(keypair.map(|k| {
        let expanded: ExpandedKeypair = k.into();
        expanded.to_secret_key_bytes()
    }))
}
