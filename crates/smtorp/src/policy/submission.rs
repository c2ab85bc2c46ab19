//! The submission port's rules: an authenticated user sends only as one of their own
//! addresses (user@ each of our domains, and the aliases that point at them); recipients
//! are local users or any valid `.onion` address (relayed).

use std::sync::Arc;

use smtorp_smtp::{Address, Policy, Reply, SenderContext};

use super::{check, Directory, Side};

/// Who may send what on the submission port.
#[derive(Debug, Clone)]
pub(crate) struct SubmissionPolicy(pub Arc<Directory>);

impl Policy for SubmissionPolicy {
    fn check_sender(
        &self,
        sender: Option<&Address>,
        context: &SenderContext<'_>,
    ) -> Result<(), Reply> {
        let Some(user) = context.auth_user else {
            return Err(Reply::new(530, [5, 7, 0], "Authentication required"));
        };
        let own = sender.is_some_and(|s| self.0.owns(user, s));
        if own {
            Ok(())
        } else {
            Err(Reply::new(
                553,
                [5, 7, 1],
                format!("Sender address rejected: not owned by user {user}"),
            ))
        }
    }

    fn check_recipient(&self, rcpt: &Address) -> Result<(), Reply> {
        check(&self.0.classify(rcpt), Side::Submission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SubmissionPolicy {
        SubmissionPolicy(Arc::new(crate::policy::tests::directory()))
    }

    fn addr(s: &str) -> Address {
        Address::parse(s, true).unwrap()
    }

    fn ctx<'a>(user: Option<&'a str>, none: &'a smtorp_smtp::AuthResult) -> SenderContext<'a> {
        SenderContext {
            auth_user: user,
            onion_auth: none,
        }
    }

    #[test]
    fn senders_are_the_users_own_addresses() {
        let p = policy();
        let none = smtorp_smtp::AuthResult::None;
        assert!(p
            .check_sender(Some(&addr("alice@mail.test")), &ctx(Some("alice"), &none))
            .is_ok());
        assert!(p
            .check_sender(
                Some(&addr("postmaster@mail.test")),
                &ctx(Some("alice"), &none)
            )
            .is_ok());
        assert!(p
            .check_sender(Some(&addr("info@mail.test")), &ctx(Some("bob"), &none))
            .is_ok());
        for (sender, user) in [
            ("bob@mail.test", "alice"),
            ("info@mail.test", "alice"),
            ("alice@other.test", "alice"),
        ] {
            let r = p
                .check_sender(Some(&addr(sender)), &ctx(Some(user), &none))
                .unwrap_err();
            assert_eq!((r.code, r.enhanced), (553, [5, 7, 1]), "{sender}");
        }
        assert_eq!(
            p.check_sender(None, &ctx(Some("alice"), &none))
                .unwrap_err()
                .code,
            553
        );
        assert_eq!(
            p.check_sender(Some(&addr("alice@mail.test")), &ctx(None, &none))
                .unwrap_err()
                .code,
            530
        );
    }

    #[test]
    fn recipients_local_or_onion() {
        let p = policy();
        assert!(p.check_recipient(&addr("bob@mail.test")).is_ok());
        assert_eq!(
            p.check_recipient(&addr("carol@mail.test"))
                .unwrap_err()
                .code,
            550
        );
        let onion = smtorp_smtp::address::onion_v3_from_key(&[3u8; 32]);
        assert!(p.check_recipient(&addr(&format!("x@{onion}"))).is_ok());
        let r = p.check_recipient(&addr("x@example.com")).unwrap_err();
        assert_eq!(r.code, 550);
        assert!(r.text.contains("only to onion addresses"));
    }
}
