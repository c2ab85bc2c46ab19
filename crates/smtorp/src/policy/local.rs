//! The rules of local submission (`smtorp sendmail`): the daemon knows who submits (the uid
//! of the socket peer, or of the maildrop file's owner) and binds the envelope sender to
//! it, as Postfix's `local_login_sender_maps` does.
//!
//! - root, the daemon's own user and the users in `[local] trusted_submitters` are trusted:
//!   they send with the sender they ask for (`-f`, or `<login>@<our domain>` without it);
//! - a local user (in `[local] users`) sends as one of their own addresses: an `-f` with
//!   one of them is kept, anything else (another address, `<>`) is replaced by
//!   `user@<our domain>`;
//! - any other user of the machine may not submit (553 5.7.1).

use smtorp_smtp::{Address, Reply};

use super::Directory;

/// Who submits a message through `sendmail`, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Submitter {
    /// The user id.
    pub(crate) uid: u32,
    /// The login name, when the system knows one.
    pub(crate) name: Option<String>,
    /// True for root, the daemon's own user and `[local] trusted_submitters`.
    pub(crate) trusted: bool,
}

impl Submitter {
    /// The submitter with user id `uid`, looked up in the system's user database.
    pub(crate) fn from_uid(uid: u32, trusted_names: &[String]) -> Submitter {
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        let own = nix::unistd::geteuid().as_raw();
        let trusted = uid == 0
            || uid == own
            || name
                .as_deref()
                .is_some_and(|n| trusted_names.iter().any(|t| t == n));
        Submitter { uid, name, trusted }
    }

    /// How logs name the submitter.
    pub(crate) fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("uid {}", self.uid),
        }
    }
}

/// The envelope sender of a message `submitter` submits, asking for `requested` (`None`:
/// no `-f`; `Some("")`: the null sender), or the refusal.
pub(crate) fn envelope_sender(
    directory: &Directory,
    submitter: &Submitter,
    requested: Option<&str>,
) -> Result<String, Reply> {
    let domain = directory.primary_domain();
    if submitter.trusted {
        return Ok(match requested {
            Some(sender) => sender.to_owned(),
            None => format!("{}@{domain}", submitter.name.as_deref().unwrap_or("root")),
        });
    }
    let Some(name) = submitter.name.as_deref().filter(|n| directory.is_user(n)) else {
        return Err(Reply::new(
            553,
            [5, 7, 1],
            format!(
                "{} is not a local user and may not submit mail (add it to [local] users or trusted_submitters)",
                submitter.label()
            ),
        ));
    };
    let user = name.to_ascii_lowercase();
    let own = requested
        .filter(|s| !s.is_empty())
        .and_then(|s| Address::parse(s, true).ok())
        .filter(|a| directory.owns(&user, a));
    Ok(match own {
        Some(address) => address.to_string(),
        None => format!("{user}@{domain}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::directory;

    fn submitter(name: &str, trusted: bool) -> Submitter {
        Submitter {
            uid: 1000,
            name: Some(name.into()),
            trusted,
        }
    }

    #[test]
    fn senders_are_bound_to_the_submitter() {
        let d = directory();
        let alice = submitter("alice", false);
        assert_eq!(
            envelope_sender(&d, &alice, None).unwrap(),
            "alice@mail.test"
        );
        // Her own addresses (an alias pointing at her included) are kept...
        assert_eq!(
            envelope_sender(&d, &alice, Some("postmaster@mail.test")).unwrap(),
            "postmaster@mail.test"
        );
        // ...anyone else's, and the null sender, become hers.
        for forged in [
            "bob@mail.test",
            "info@mail.test",
            "",
            "x@y.onion",
            "garbage",
        ] {
            assert_eq!(
                envelope_sender(&d, &alice, Some(forged)).unwrap(),
                "alice@mail.test",
                "{forged}"
            );
        }
        // Trusted submitters send as they ask.
        let root = submitter("root", true);
        assert_eq!(
            envelope_sender(&d, &root, Some("bob@mail.test")).unwrap(),
            "bob@mail.test"
        );
        assert_eq!(envelope_sender(&d, &root, Some("")).unwrap(), "");
        assert_eq!(envelope_sender(&d, &root, None).unwrap(), "root@mail.test");
        // Anyone else may not submit.
        let r = envelope_sender(&d, &submitter("www-data", false), None).unwrap_err();
        assert_eq!((r.code, r.enhanced), (553, [5, 7, 1]));
        let nobody = Submitter {
            uid: 4242,
            name: None,
            trusted: false,
        };
        assert!(envelope_sender(&d, &nobody, None)
            .unwrap_err()
            .text
            .contains("uid 4242"));
    }
}
