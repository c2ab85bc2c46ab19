//! The onion side's rules (onion-service streams and `[smtp] listen` listeners): senders
//! as sender authentication allows ([`SenderRules`]); recipients only our own users (no
//! relay).

use std::sync::Arc;

use smtorp_smtp::{Address, Policy, Reply, SenderContext};

use super::{check, Directory, SenderRules, Side};

/// The onion-side policy.
#[derive(Debug, Clone)]
pub(crate) struct OnionSidePolicy {
    /// Our domains and users.
    pub(crate) directory: Arc<Directory>,
    /// What the session's XONIONAUTH result allows.
    pub(crate) senders: Arc<SenderRules>,
}

impl Policy for OnionSidePolicy {
    fn check_sender(
        &self,
        sender: Option<&Address>,
        context: &SenderContext<'_>,
    ) -> Result<(), Reply> {
        // The engine checked the syntax (including onion checksums).
        self.senders.check_sender(sender, context.onion_auth)
    }

    fn check_recipient(&self, rcpt: &Address) -> Result<(), Reply> {
        check(&self.directory.classify(rcpt), Side::Onion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::directory;

    fn addr(s: &str) -> Address {
        Address::parse(s, true).unwrap()
    }

    #[test]
    fn only_our_users() {
        let directory = Arc::new(directory());
        let p = OnionSidePolicy {
            senders: Arc::new(SenderRules::new(
                crate::config::SenderAuth::Verify,
                directory.clone(),
                None,
            )),
            directory,
        };
        assert!(p.check_recipient(&addr("alice@mail.test")).is_ok());
        assert!(p.check_recipient(&addr("ALICE@mail.test")).is_ok());
        assert!(p.check_recipient(&addr("info@mail.test")).is_ok());
        assert!(p.check_recipient(&addr("postmaster@mail.test")).is_ok());
        let unknown = p.check_recipient(&addr("carol@mail.test")).unwrap_err();
        assert_eq!((unknown.code, unknown.enhanced), (550, [5, 1, 1]));
        let relay = p.check_recipient(&addr("alice@other.test")).unwrap_err();
        assert_eq!((relay.code, relay.enhanced), (550, [5, 7, 1]));
        let onion = smtorp_smtp::address::onion_v3_from_key(&[3u8; 32]);
        let relay = p.check_recipient(&addr(&format!("x@{onion}"))).unwrap_err();
        assert_eq!((relay.code, relay.enhanced), (550, [5, 7, 1]));
    }
}
