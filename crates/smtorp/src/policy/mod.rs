//! Who is local: our domains, users and aliases, and the recipient policy of the onion side.
//!
//! Mail from the onion side (arti streams and `[smtp] listen` listeners) is accepted only
//! for our own domains and known users or aliases; `postmaster` always (RFC 5321). Nothing
//! is relayed. The same directory routes recipients at delivery time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use smtorp_delivery::{Route, Router};
use smtorp_smtp::{Address, Policy, Reply};

use crate::config::Settings;

/// Our domains, users and aliases.
#[derive(Debug, Clone)]
pub struct Directory {
    domains: BTreeSet<String>,
    users: BTreeSet<String>,
    aliases: BTreeMap<String, String>,
    primary: String,
    settings: Arc<Settings>,
}

impl Directory {
    /// The directory of a configuration. `onion` is our onion address, when known: it is
    /// always one of our domains, and the primary one.
    pub fn new(settings: Arc<Settings>, onion: Option<&str>) -> Directory {
        let mut domains: BTreeSet<String> = settings.local_domains().into_iter().collect();
        let primary = match onion {
            Some(o) => {
                domains.insert(o.to_ascii_lowercase());
                o.to_ascii_lowercase()
            }
            None => settings.primary_domain(),
        };
        let lower = |s: &String| s.to_ascii_lowercase();
        Directory {
            users: settings.config.local.users.iter().map(lower).collect(),
            aliases: settings
                .config
                .local
                .aliases
                .iter()
                .map(|(k, v)| (lower(k), lower(v)))
                .collect(),
            domains,
            primary,
            settings,
        }
    }

    /// The name we present: our onion address, else the first local domain, else localhost.
    pub fn primary_domain(&self) -> &str {
        &self.primary
    }

    /// True if `domain` (lower-case) is ours (a local domain, our onion address, or the
    /// primary name, which is `localhost` when nothing else is configured).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains(domain) || domain == self.primary
    }

    /// The local user a local part reaches (aliases resolved), if any. `postmaster` with no
    /// alias reaches the user named postmaster.
    pub fn user_of(&self, local_part: &str) -> Option<String> {
        let local = local_part.to_ascii_lowercase();
        if let Some(target) = self.aliases.get(&local) {
            return Some(target.clone());
        }
        if self.users.contains(&local) || local == "postmaster" {
            return Some(local);
        }
        None
    }
}

/// The onion-side recipient policy.
#[derive(Debug, Clone)]
pub struct OnionSidePolicy(pub Arc<Directory>);

impl Policy for OnionSidePolicy {
    fn check_sender(
        &self,
        _sender: Option<&Address>,
        _auth_user: Option<&str>,
    ) -> Result<(), Reply> {
        // Any syntactically valid sender (the engine checked it, including onion checksums).
        Ok(())
    }

    fn check_recipient(&self, rcpt: &Address) -> Result<(), Reply> {
        if !self.0.is_local_domain(&rcpt.domain) {
            return Err(Reply::new(550, [5, 7, 1], "Relay access denied"));
        }
        match self.0.user_of(&rcpt.local_part) {
            Some(_) => Ok(()),
            None => Err(Reply::new(550, [5, 1, 1], "No such user here")),
        }
    }
}

impl Router for Directory {
    fn route(&self, recipient: &str) -> Route {
        let Some((local, domain)) = recipient.rsplit_once('@') else {
            return Route::Unroutable(format!("malformed recipient {recipient}"));
        };
        let domain = domain.to_ascii_lowercase();
        if self.is_local_domain(&domain) {
            return match self.user_of(local) {
                Some(user) => Route::Local {
                    maildir: self.maildir_of(&user),
                    user,
                },
                None => Route::Unroutable("550 5.1.1 No such user here".into()),
            };
        }
        if domain.ends_with(".onion") {
            return Route::Remote { domain };
        }
        Route::Unroutable("550 5.1.2 smtorp delivers only to onion addresses".into())
    }
}

impl Directory {
    fn maildir_of(&self, user: &str) -> PathBuf {
        self.settings.maildir_of(user)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config;

    fn directory() -> Directory {
        let c = config::parse(
            "data_dir = \"/d\"\n[local]\ndomains = [\"Mail.Test\"]\nusers = [\"alice\", \"bob\"]\naliases = { postmaster = \"alice\", Info = \"bob\" }\n",
        )
        .unwrap();
        Directory::new(Arc::new(config::check(c).unwrap()), None)
    }

    fn addr(s: &str) -> Address {
        let (l, d) = s.rsplit_once('@').unwrap();
        Address {
            local_part: l.into(),
            domain: d.to_ascii_lowercase(),
        }
    }

    #[test]
    fn policy() {
        let p = OnionSidePolicy(Arc::new(directory()));
        assert!(p.check_recipient(&addr("alice@mail.test")).is_ok());
        assert!(p.check_recipient(&addr("ALICE@mail.test")).is_ok());
        assert!(p.check_recipient(&addr("info@mail.test")).is_ok());
        assert!(p.check_recipient(&addr("postmaster@mail.test")).is_ok());
        assert_eq!(
            p.check_recipient(&addr("carol@mail.test"))
                .unwrap_err()
                .code,
            550
        );
        let relay = p.check_recipient(&addr("alice@other.test")).unwrap_err();
        assert_eq!((relay.code, relay.enhanced), (550, [5, 7, 1]));
    }

    #[test]
    fn routes() {
        let d = directory();
        assert_eq!(
            d.route("info@mail.test"),
            Route::Local {
                user: "bob".into(),
                maildir: PathBuf::from("/d/mail/bob")
            }
        );
        assert!(matches!(d.route("x@abc.onion"), Route::Remote { .. }));
        assert!(matches!(d.route("x@example.com"), Route::Unroutable(_)));
        assert!(matches!(d.route("nobody@mail.test"), Route::Unroutable(_)));
    }
}
