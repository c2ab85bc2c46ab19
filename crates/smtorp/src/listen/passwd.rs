//! The passwords of the submission port: `smtorp passwd USER` and the check behind AUTH.
//!
//! They live in `<data_dir>/passwd`, mode 0600, one `user:<argon2id PHC string>` line per
//! user (salted, never the password itself). The file is rewritten atomically (a temporary
//! file, fsync, rename, fsync of the folder). Only users in `[local] users` may have one.
//! The daemon reads the file at each AUTH, so a change takes effect at once.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use crate::say;

use anyhow::{bail, Context};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::PasswordHasher;
use argon2::Argon2;

use crate::config::Settings;
use crate::policy::Directory;

/// The password file of a configuration.
pub(crate) fn path(settings: &Settings) -> PathBuf {
    settings.config.data_dir.join("passwd")
}

/// A salted argon2id hash of `password` (PHC string).
pub(crate) fn hash(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

/// The largest argon2 memory cost (KiB) we compute: a password file line asking for more
/// is treated as not matching (the memory per check stays bounded).
const MAX_MEMORY_KIB: u32 = 64 * 1024;

/// True if `password` matches the PHC string. Slow on purpose: call it off the async
/// runtime (`spawn_blocking`).
#[cfg(test)]
fn verify(phc: &str, password: &str) -> bool {
    verify_with(phc, password, &mut Vec::new())
}

/// [`verify`] computing in `memory` (grown to the hash's memory cost and kept by the caller
/// for the next check, so that checks do not allocate).
pub(crate) fn verify_with(phc: &str, password: &str, memory: &mut Vec<argon2::Block>) -> bool {
    use argon2::{Algorithm, Params, Version};
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
        None => Version::default(),
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_MEMORY_KIB {
        return false;
    }
    memory.resize(params.block_count(), argon2::Block::default());
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt.as_ref(),
            &mut out,
            &mut memory[..],
        )
        .is_err()
    {
        return false;
    }
    // `Output` compares in constant time.
    argon2::password_hash::phc::Output::new(&out).is_ok_and(|computed| &computed == expected)
}

/// A hash nobody's password matches, checked for unknown users so that they take as long
/// as known ones.
static DUMMY: LazyLock<String> =
    LazyLock::new(|| hash("\u{0}no such user\u{0}").unwrap_or_default());

/// The entries of a password file (a missing file has none). Lines that are not `user:phc`
/// are skipped.
pub(crate) fn load(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(user, phc)| !user.is_empty() && phc.starts_with('$'))
        .map(|(user, phc)| (user.to_owned(), phc.to_owned()))
        .collect())
}

/// Writes the entries atomically, mode 0600.
fn save(path: &Path, entries: &BTreeMap<String, String>) -> std::io::Result<()> {
    let text: String = entries
        .iter()
        .map(|(user, phc)| format!("{user}:{phc}\n"))
        .collect();
    crate::config::layout::write_atomically(path, text.as_bytes(), 0o600)
}

/// The local user a login name means: `alice`, or `alice@<one of our domains>` (aliases
/// resolved); only users in `[local] users`.
pub(crate) fn login_user(directory: &Directory, login: &str) -> Option<String> {
    let settings = directory.settings();
    let login = login.trim().to_ascii_lowercase();
    let local = match login.rsplit_once('@') {
        Some((local, domain)) if directory.is_local_domain(domain) => local.to_owned(),
        Some(_) => return None,
        None => login,
    };
    let user = directory.user_of(&local)?;
    settings
        .config
        .local
        .users
        .iter()
        .any(|u| u.eq_ignore_ascii_case(&user))
        .then_some(user)
}

/// The AUTH check: true if `password` is right for `user`. Blocking (argon2, file read).
#[cfg(test)]
fn check(file: &Path, user: Option<&str>, password: &str) -> bool {
    check_with(file, user, password, &mut Vec::new())
}

/// [`check`] computing in `memory` (see [`verify_with`]).
pub(crate) fn check_with(
    file: &Path,
    user: Option<&str>,
    password: &str,
    memory: &mut Vec<argon2::Block>,
) -> bool {
    let phc = user.and_then(|user| match load(file) {
        Ok(entries) => entries.get(user).cloned(),
        Err(e) => {
            tracing::error!(error = %e, path = %file.display(), "cannot read the password file");
            None
        }
    });
    match phc {
        Some(phc) => verify_with(&phc, password, memory),
        None => {
            // Same work for an unknown user or one without a password.
            let _ = verify_with(&DUMMY, password, memory);
            false
        }
    }
}

/// Reads the new password: one line from stdin; on a terminal, twice and without echo.
fn read_password(user: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let ask = |prompt: &str| -> anyhow::Result<String> {
        rpassword::prompt_password(prompt).context("cannot read the password")
    };
    let first = ask(&format!("New password for {user}: "))?;
    let second = ask("Again: ")?;
    if first != second {
        bail!("the passwords differ; nothing changed");
    }
    Ok(first)
}

/// `smtorp passwd [--delete] USER`.
pub(crate) fn command(settings: &Settings, user: &str, delete: bool) -> anyhow::Result<()> {
    let user = user.to_ascii_lowercase();
    if !settings
        .config
        .local
        .users
        .iter()
        .any(|u| u.eq_ignore_ascii_case(&user))
    {
        bail!("`{user}` is not a local user: add it to [local] users first");
    }
    let file = path(settings);
    if !settings.config.data_dir.is_dir() {
        bail!(
            "{} does not exist: run `smtorp init` first",
            settings.config.data_dir.display()
        );
    }
    let mut entries = load(&file).with_context(|| format!("cannot read {}", file.display()))?;
    if delete {
        if entries.remove(&user).is_none() {
            bail!("`{user}` has no password");
        }
        save(&file, &entries).with_context(|| format!("cannot write {}", file.display()))?;
        say!("password of {user} removed");
        return Ok(());
    }
    let password = read_password(&user)?;
    if password.is_empty() {
        bail!("empty password; nothing changed");
    }
    if password.chars().any(char::is_control) {
        bail!("the password contains control characters; nothing changed");
    }
    entries.insert(user.clone(), hash(&password)?);
    save(&file, &entries).with_context(|| format!("cannot write {}", file.display()))?;
    say!("password of {user} set in {}", file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn hashes_verify_and_are_salted() {
        let a = hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert!(!a.contains("correct horse"));
        assert!(verify(&a, "correct horse"));
        assert!(!verify(&a, "wrong"));
        // With a reused memory block, as the submission port checks.
        let mut memory = Vec::new();
        assert!(verify_with(&a, "correct horse", &mut memory));
        assert!(!verify_with(&a, "wrong", &mut memory));
        assert!(verify_with(&a, "correct horse", &mut memory));
        assert_eq!(memory.len(), 19 * 1024, "argon2id default: 19 MiB");
        assert_ne!(a, hash("correct horse").unwrap());
        assert!(!verify("garbage", "x"));
    }

    #[test]
    fn file_round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        let mut entries = BTreeMap::new();
        entries.insert("alice".to_owned(), hash("pw").unwrap());
        save(&file, &entries).unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&file).unwrap(), entries);
        assert!(check(&file, Some("alice"), "pw"));
        assert!(!check(&file, Some("alice"), "nope"));
        assert!(!check(&file, Some("bob"), "pw"));
        assert!(!check(&file, None, "pw"));
        assert!(load(&dir.path().join("missing")).unwrap().is_empty());
    }
}
