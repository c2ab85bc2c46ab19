//! XONIONAUTH on the sending side (docs/sender-auth.md 8): which of our onion keys signs
//! for a message, reading the nonce from a peer's raw EHLO reply, and the command.
//!
//! A session authenticates as the domain of its MAIL FROM: with the key of that onion
//! domain, or the primary key for the null sender (bounces). Mail from a domain we hold no
//! key for goes unauthenticated. The remote deliverer keeps one session per (destination,
//! signing onion), so a receiver only ever sees a pass for the domain whose key signed.

use smtorp_onionauth::{find_ehlo_nonce, Nonce, Onion, Signer};

/// Our signing keys.
pub struct ClientAuth {
    /// The first one is the primary key (signs bounces).
    signers: Vec<Signer>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys: only whose they are.
        let onions: Vec<String> = self.signers.iter().map(|s| s.onion().to_string()).collect();
        f.debug_struct("ClientAuth")
            .field("onions", &onions)
            .finish()
    }
}

impl ClientAuth {
    /// Signs with `signers`, the first one for the null sender. `None` if there is none.
    pub fn new(signers: Vec<Signer>) -> Option<ClientAuth> {
        (!signers.is_empty()).then_some(ClientAuth { signers })
    }

    /// The onions we can sign for.
    pub fn onions(&self) -> Vec<String> {
        self.signers.iter().map(|s| s.onion().to_string()).collect()
    }

    /// The key that signs for `sender` (RFC 5321 form, empty for `<>`), if any.
    pub fn signer_for(&self, sender: &str) -> Option<&Signer> {
        if sender.is_empty() {
            return self.signers.first();
        }
        let domain = sender.rsplit_once('@').map(|(_, d)| d)?;
        let domain = domain.trim_end_matches('.');
        self.signers
            .iter()
            .find(|s| s.onion().to_string().eq_ignore_ascii_case(domain))
    }
}

/// The command that authenticates `signer` to the server of `destination` (the onion we
/// chose to connect to: never a name from the peer) over a session whose EHLO reply was
/// `ehlo_raw`. `None` when the peer does not offer XONIONAUTH, offers it with a malformed
/// nonce, or `destination` is not an onion address.
pub(crate) fn command_for(signer: &Signer, destination: &str, ehlo_raw: &str) -> Option<String> {
    let nonce: Nonce = find_ehlo_nonce(ehlo_raw).ok()??;
    let server = Onion::parse(destination).ok()?;
    Some(format!("{}\r\n", signer.command(&server, &nonce)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtorp_onionauth::{AuthResult, ServerAuth};

    fn signer(n: u8) -> Signer {
        Signer::from_seed(&[n; 32]).unwrap()
    }

    #[test]
    fn the_sender_domain_picks_the_key() {
        let auth = ClientAuth::new(vec![signer(1), signer(2)]).unwrap();
        let [a, b] = [signer(1).onion().to_string(), signer(2).onion().to_string()];
        assert_eq!(auth.onions(), vec![a.clone(), b.clone()]);
        let pick = |s: &str| auth.signer_for(s).map(|s| s.onion().to_string());
        assert_eq!(pick(&format!("x@{b}")), Some(b.clone()));
        assert_eq!(pick(&format!("x@{}", a.to_uppercase())), Some(a.clone()));
        assert_eq!(pick(""), Some(a.clone()));
        assert_eq!(pick("x@mail.test"), None);
        assert!(ClientAuth::new(Vec::new()).is_none());
        assert!(!format!("{auth:?}").contains("secret"));
    }

    #[test]
    fn the_command_passes_at_the_destination_only() {
        let me = signer(1);
        let dest = *signer(7).onion();
        let mut server = ServerAuth::new(vec![dest]);
        let ehlo = format!(
            "250-{dest}\r\n250-PIPELINING\r\n250-{}\r\n250 8BITMIME\r\n",
            server.ehlo_keyword()
        );
        let command = command_for(&me, &dest.to_string(), &ehlo).unwrap();
        assert!(command.ends_with("\r\n"));
        let argument = command
            .trim_end()
            .strip_prefix("XONIONAUTH ")
            .unwrap()
            .to_owned();
        server.attempt(&argument).unwrap();
        assert!(matches!(server.result(), AuthResult::Pass(c) if c.onion() == me.onion()));
        // Signed for another destination (a relaying server M): refused at the real one.
        let mut server = ServerAuth::new(vec![dest]);
        let ehlo = format!("250-m\r\n250 {}\r\n", server.ehlo_keyword());
        let other = signer(8).onion().to_string();
        let command = command_for(&me, &other, &ehlo).unwrap();
        let argument = command.trim_end().strip_prefix("XONIONAUTH ").unwrap();
        assert!(server.attempt(argument).is_err());
        // No keyword, a malformed nonce, a destination that is no onion: no command.
        assert!(command_for(&me, &dest.to_string(), "250-x\r\n250 SIZE 1\r\n").is_none());
        assert!(command_for(&me, &dest.to_string(), "250-x\r\n250 XONIONAUTH abc\r\n").is_none());
        assert!(command_for(&me, "peer.test", &ehlo).is_none());
    }
}
