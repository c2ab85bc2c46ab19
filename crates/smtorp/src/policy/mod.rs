//! Who is local and who may send what, where: our domains, users and aliases; the one
//! recipient classifier ([`Directory::classify`]) and the one place that turns each class
//! into an SMTP reply ([`refusal`]); the rules of each way in (`onion_side`, `submission`,
//! `local`) and what sender authentication allows on the onion side (`sender_auth`).
//!
//! Mail from the onion side (arti streams and `[smtp] listen` listeners) is accepted only
//! for our own domains and known users or aliases; `postmaster` always (RFC 5321). Nothing
//! is relayed. The same directory routes recipients at delivery time.

pub(crate) mod local;
pub(crate) mod onion_side;
pub(crate) mod sender_auth;
pub(crate) mod submission;

pub(crate) use local::Submitter;
pub(crate) use onion_side::OnionSidePolicy;
pub(crate) use sender_auth::{KnownPeers, SenderRules};
pub(crate) use submission::SubmissionPolicy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use smtorp_delivery::{Route, Router};
use smtorp_smtp::{Address, Reply};

use crate::config::Settings;

/// Our domains, users and aliases.
#[derive(Debug, Clone)]
pub(crate) struct Directory {
    domains: BTreeSet<String>,
    users: BTreeSet<String>,
    aliases: BTreeMap<String, String>,
    primary: String,
    settings: Arc<Settings>,
}

impl Directory {
    /// The directory of a configuration. `onion` is our onion address, when known: it is
    /// always one of our domains, and the primary one.
    pub(crate) fn new(settings: Arc<Settings>, onion: Option<&str>) -> Directory {
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

    /// The configuration this directory was made from.
    pub(crate) fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The name we present: our onion address, else the first local domain, else localhost.
    pub(crate) fn primary_domain(&self) -> &str {
        &self.primary
    }

    /// True if `domain` (lower-case) is ours (a local domain, our onion address, or the
    /// primary name, which is `localhost` when nothing else is configured).
    pub(crate) fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains(domain) || domain == self.primary
    }

    /// The local user a local part reaches (aliases resolved), if any. `postmaster` with no
    /// alias reaches the user named postmaster.
    pub(crate) fn user_of(&self, local_part: &str) -> Option<String> {
        let local = local_part.to_ascii_lowercase();
        if let Some(target) = self.aliases.get(&local) {
            return Some(target.clone());
        }
        if self.users.contains(&local) || local == "postmaster" {
            return Some(local);
        }
        None
    }

    /// True if `address` is one of `user`'s own: `user@` one of our domains, or an alias
    /// there that points at `user`.
    pub(crate) fn owns(&self, user: &str, address: &Address) -> bool {
        self.is_local_domain(&address.domain)
            && self.user_of(&address.local_part).as_deref() == Some(user)
    }

    /// All our domains (lower case), the primary one first.
    pub(crate) fn domains(&self) -> Vec<String> {
        let mut out = vec![self.primary.clone()];
        out.extend(self.domains.iter().filter(|d| **d != self.primary).cloned());
        out
    }

    /// Our domains that are onion addresses (lower case): the onions a peer may sign for
    /// in XONIONAUTH (their public keys are all the server side needs).
    pub(crate) fn onion_domains(&self) -> Vec<String> {
        self.domains
            .iter()
            .chain(std::iter::once(&self.primary))
            .filter(|d| d.ends_with(".onion"))
            .fold(Vec::new(), |mut out, d| {
                if !out.contains(d) {
                    out.push(d.clone());
                }
                out
            })
    }

    /// True if `name` is in `[local] users`.
    pub(crate) fn is_user(&self, name: &str) -> bool {
        self.users.contains(&name.to_ascii_lowercase())
    }
}

/// What a recipient address is to us: the one classification every way in and the router
/// share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecipientClass {
    /// One of our domains and a known user or alias: delivered to this local user.
    Local(String),
    /// One of our domains, but no such user or alias.
    UnknownLocal,
    /// Another onion domain (relayed only from local submission).
    Onion,
    /// Neither ours nor an onion address: never delivered.
    NotOnion,
}

/// Which way a recipient came in, for [`refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The onion side: only our own users (no relay).
    Onion,
    /// Local submission (submission port, `sendmail`): our users and any onion address.
    Submission,
    /// At delivery time (the router).
    Delivery,
}

/// The text of every refusal of a recipient that is not an onion address.
pub(crate) const ONION_ONLY: &str =
    "smtorp delivers only to onion addresses (user@<56 characters>.onion)";

/// Whether a recipient of `class` is accepted when it comes in on `side`; the refusal if not.
pub(crate) fn check(class: &RecipientClass, side: Side) -> Result<(), Reply> {
    match (class, side) {
        (RecipientClass::Local(_), _) => Ok(()),
        (RecipientClass::Onion, Side::Submission | Side::Delivery) => Ok(()),
        _ => Err(refusal(class, side)),
    }
}

/// The reply that refuses `class` on `side` (the one place these texts live).
pub(crate) fn refusal(class: &RecipientClass, side: Side) -> Reply {
    match (class, side) {
        (RecipientClass::Onion, Side::Onion) => Reply::new(550, [5, 7, 1], "Relay access denied"),
        (RecipientClass::NotOnion, Side::Onion) => {
            Reply::new(550, [5, 7, 1], "Relay access denied")
        }
        (RecipientClass::NotOnion, _) => Reply::new(550, [5, 1, 2], ONION_ONLY),
        (RecipientClass::UnknownLocal, _) => Reply::new(550, [5, 1, 1], "No such user here"),
        // Accepted classes have no refusal; callers ask only after `check` said no.
        (RecipientClass::Local(_) | RecipientClass::Onion, _) => {
            Reply::new(550, [5, 1, 0], "Recipient refused")
        }
    }
}

impl Directory {
    /// Classifies a validated recipient address.
    pub(crate) fn classify(&self, address: &Address) -> RecipientClass {
        if self.is_local_domain(&address.domain) {
            return match self.user_of(&address.local_part) {
                Some(user) => RecipientClass::Local(user),
                None => RecipientClass::UnknownLocal,
            };
        }
        if address.is_onion() {
            RecipientClass::Onion
        } else {
            RecipientClass::NotOnion
        }
    }
}

impl Router for Directory {
    fn route(&self, recipient: &str) -> Route {
        let address = match Address::parse(recipient, true) {
            Ok(address) => address,
            Err(e) => {
                return Route::Unroutable(Reply::new(
                    550,
                    [5, 1, 3],
                    format!("malformed recipient: {e}"),
                ))
            }
        };
        match self.classify(&address) {
            RecipientClass::Local(user) => Route::Local {
                maildir: self.maildir_of(&user),
                user,
            },
            RecipientClass::Onion => Route::Remote {
                domain: address.domain,
            },
            class @ (RecipientClass::UnknownLocal | RecipientClass::NotOnion) => {
                Route::Unroutable(refusal(&class, Side::Delivery))
            }
        }
    }
}

impl Directory {
    fn maildir_of(&self, user: &str) -> PathBuf {
        self.settings.maildir_of(user)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config;

    pub(crate) fn directory() -> Directory {
        let c = config::parse(
            "data_dir = \"/d\"\n[local]\ndomains = [\"Mail.Test\"]\nusers = [\"alice\", \"bob\"]\naliases = { postmaster = \"alice\", Info = \"bob\" }\n",
        )
        .unwrap();
        Directory::new(Arc::new(config::check(c).unwrap()), None)
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
        let onion = smtorp_smtp::address::onion_v3_from_key(&[7u8; 32]);
        assert_eq!(
            d.route(&format!("x@{onion}")),
            Route::Remote { domain: onion }
        );
        assert!(matches!(d.route("x@abc.onion"), Route::Unroutable(_)));
        assert!(matches!(d.route("x@example.com"), Route::Unroutable(_)));
        assert!(matches!(d.route("nobody@mail.test"), Route::Unroutable(_)));
    }
}
