//! The onion side's rules (onion-service streams and `[smtp] listen` listeners): any valid
//! sender; recipients only our own users (no relay).

use std::sync::Arc;

use smtorp_smtp::{Address, Policy, Reply};

use super::{check, Directory, Side};

/// The onion-side policy.
#[derive(Debug, Clone)]
pub(crate) struct OnionSidePolicy(pub Arc<Directory>);

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
        check(&self.0.classify(rcpt), Side::Onion)
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
        let p = OnionSidePolicy(Arc::new(directory()));
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
