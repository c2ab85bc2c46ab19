//! Rotated nicknames for relaunching the onion service in the same Tor client.
//!
//! arti 0.47 built with `hs-pow-full` never lets go of a dropped service's state folder:
//! the proof-of-work manager's task (`tor-hsservice` `pow/v1.rs`, `main_loop_task`) loops
//! for as long as its runtime runs and holds the instance's lock (`hss/<nickname>.lock`),
//! so a second launch under the same nickname fails ("lockfile already in use"). A
//! relaunch therefore uses the next nickname, `<nickname>-r<N>`, whose keystore entry is a
//! copy of our identity key: same key, same onion address, fresh state. A rebuild of the
//! client (its runtime shut down, every task dropped) frees the original nickname again,
//! and the rotated ones are removed.

use std::path::{Path, PathBuf};

use tor_hscrypto::pk::HsIdKeypair;
use tor_hsservice::{HsIdKeypairSpecifier, HsNickname};
use tor_keymgr::{ArtiNativeKeystore, KeyMgr, KeyMgrBuilder, KeystoreSelector};

use crate::config::{client_config, OnionSettings};
use crate::transport::OnionError;

/// The nickname of rotation `n` (0: the service's own nickname).
pub(crate) fn rotated(base: &str, n: u32) -> String {
    if n == 0 {
        base.to_owned()
    } else {
        format!("{base}-r{n}")
    }
}

/// The lock file arti keeps while a service with this nickname runs.
pub(crate) fn instance_lock(settings: &OnionSettings, nickname: &str) -> PathBuf {
    settings
        .state_dir
        .join("hss")
        .join(format!("{nickname}.lock"))
}

fn keymgr(settings: &OnionSettings) -> Result<KeyMgr, OnionError> {
    let config = client_config(settings)?;
    let store = ArtiNativeKeystore::from_path_and_mistrust(
        settings.state_dir.join("keystore"),
        config.fs_mistrust(),
    )
    .map_err(|e| OnionError::Launch(format!("keystore: {e}")))?;
    KeyMgrBuilder::default()
        .primary_store(Box::new(store))
        .build()
        .map_err(|e| OnionError::Launch(format!("keystore: {e}")))
}

fn spec(nickname: &str) -> Result<HsIdKeypairSpecifier, OnionError> {
    HsNickname::new(nickname.to_owned())
        .map(HsIdKeypairSpecifier::new)
        .map_err(|e| OnionError::Config(format!("onion service nickname {nickname}: {e}")))
}

/// Stores a copy of our identity key as the identity of `nickname` (replacing what was
/// there: a rotated nickname only ever holds our own key).
pub(crate) fn copy_identity(settings: &OnionSettings, nickname: &str) -> Result<(), OnionError> {
    let keys = keymgr(settings)?;
    let ours = keys
        .get::<HsIdKeypair>(&spec(&settings.nickname)?)
        .map_err(|e| OnionError::Launch(format!("keystore: {e}")))?
        .ok_or_else(|| OnionError::Launch("no onion service identity in the keystore".into()))?;
    keys.insert(ours, &spec(nickname)?, KeystoreSelector::Primary, true)
        .map_err(|e| {
            OnionError::Launch(format!("cannot store the identity for {nickname}: {e}"))
        })?;
    Ok(())
}

/// Removes the state and the key copies of every rotated nickname (`<nickname>-r<N>`) that
/// no service holds any more. Best effort: what cannot be removed stays.
pub(crate) fn remove_rotated(settings: &OnionSettings) {
    let prefix = format!("{}-r", settings.nickname);
    let is_rotated = |name: &str| {
        let stem = name.strip_suffix(".lock").unwrap_or(name);
        stem.strip_prefix(&prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    for folder in [
        settings.state_dir.join("hss"),
        settings.state_dir.join("keystore").join("hss"),
    ] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_rotated(&name) || held(&folder.join(&name)) {
                continue;
            }
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// True if the lock of this instance (its `.lock` file beside it) is held.
fn held(path: &Path) -> bool {
    let lock = if path.extension().is_some_and(|e| e == "lock") {
        path.to_path_buf()
    } else {
        path.with_extension("lock")
    };
    lock.exists() && !matches!(fslock_guard::LockFileGuard::try_lock(&lock), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Defences;

    fn settings(dir: &Path) -> OnionSettings {
        for d in ["state", "cache"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(d), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        OnionSettings {
            state_dir: dir.join("state"),
            cache_dir: dir.join("cache"),
            arti_config: None,
            nickname: "smtorp".into(),
            connect_timeout: std::time::Duration::from_secs(30),
            defences: Defences::default(),
        }
    }

    #[test]
    fn a_rotated_nickname_has_our_address_and_is_removed_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        std::fs::set_permissions(
            dir.path(),
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
        )
        .unwrap();
        let ours = crate::onion_address(&s).unwrap();
        let name = rotated("smtorp", 2);
        assert_eq!(name, "smtorp-r2");
        copy_identity(&s, &name).unwrap();
        let copy = OnionSettings {
            nickname: name.clone(),
            ..s.clone()
        };
        assert_eq!(crate::onion_address(&copy).unwrap(), ours);
        // A held rotation stays; a free one goes; ours is never touched.
        std::fs::create_dir_all(s.state_dir.join("hss").join("smtorp-r1")).unwrap();
        let guard = fslock_guard::LockFileGuard::try_lock(instance_lock(&s, "smtorp-r1"))
            .unwrap()
            .unwrap();
        remove_rotated(&s);
        let keys = s.state_dir.join("keystore").join("hss");
        assert!(!keys.join("smtorp-r2").exists());
        assert!(keys.join("smtorp").exists());
        assert!(s.state_dir.join("hss").join("smtorp-r1").exists());
        drop(guard);
        remove_rotated(&s);
        assert!(!s.state_dir.join("hss").join("smtorp-r1").exists());
        assert!(!instance_lock(&s, "smtorp-r1").exists());
        assert_eq!(crate::onion_address(&s).unwrap(), ours);
    }
}
