//! What the XONIONAUTH result (docs/sender-auth.md) allows on the onion side
//! (`[smtp] sender_auth`): which envelope senders and header `From` domains a session may
//! use, and the peers known to authenticate, so that skipping XONIONAUTH cannot downgrade
//! them.
//!
//! With `verify` and `require`:
//! - an authenticated session (onion C) sends only as C: MAIL FROM at C (or `<>`), and no
//!   header `From` naming another onion or one of our domains;
//! - any other session may not use our own domains, nor a peer that authenticated to us
//!   before ([`KnownPeers`]), in MAIL FROM or header `From`;
//! - anything else unauthenticated (Postfix or Exim behind C tor) is accepted and marked
//!   `x-onion-auth=none`.
//!
//! `require` also refuses every unauthenticated transaction (the SMTP engine does that, 530).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use smtorp_queue::Queue;
use smtorp_smtp::{Address, AuthResult, Reply};
use tracing::{debug, warn};

use super::Directory;
use crate::config::SenderAuth;

/// How long a peer stays known after its last authenticated message.
pub(crate) const PEER_EXPIRY: Duration = Duration::from_secs(180 * 86400);
/// A known peer's last-seen time is written again only when it is older than this (so a
/// busy peer does not cost a store write per message).
const PEER_REFRESH: u64 = 86400;
/// The most peers remembered (about 10 MB of memory and store): onion keys cost nothing to
/// make, so without a bound anyone could grow the record by one entry per accepted message.
/// Past it, new peers are not recorded (known ones still are), and a warning is logged.
pub(crate) const MAX_KNOWN_PEERS: usize = 100_000;

/// Peers that authenticated to us before, by keyed hash (SHA-256 of a secret key and the
/// onion address): the store holds no address, and only the key's holder can test one.
/// Read from memory during sessions; written after a message from an authenticated peer
/// was accepted.
pub(crate) struct KnownPeers {
    key: [u8; 32],
    seen: RwLock<HashMap<[u8; 32], u64>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for KnownPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownPeers")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl KnownPeers {
    /// The peers recorded in `queue`, hashed with the key in `key_file` (made, mode 0600,
    /// if missing). Expired records are dropped from the store.
    pub(crate) fn load(key_file: &Path, queue: Arc<Queue>, now: u64) -> anyhow::Result<Self> {
        let key = read_or_make_key(key_file)?;
        let mut seen = HashMap::new();
        for (hash, when) in queue.peers()? {
            if when.saturating_add(PEER_EXPIRY.as_secs()) < now {
                queue.forget_peer(&hash)?;
            } else {
                seen.insert(hash, when);
            }
        }
        Ok(KnownPeers {
            key,
            seen: RwLock::new(seen),
            queue,
        })
    }

    fn hash(&self, onion: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(onion.to_ascii_lowercase().as_bytes());
        h.finalize().into()
    }

    /// True if `onion` authenticated to us within [`PEER_EXPIRY`] before `now`.
    pub(crate) fn is_known(&self, onion: &str, now: u64) -> bool {
        let hash = self.hash(onion);
        let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
        seen.get(&hash)
            .is_some_and(|when| when.saturating_add(PEER_EXPIRY.as_secs()) >= now)
    }

    /// How many peers are known.
    pub(crate) fn count(&self) -> usize {
        self.seen.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Remembers that `onion` authenticated a message accepted at `now`. The record is
    /// made durable with the next queue sync; losing it in a crash only delays it to the
    /// peer's next message.
    pub(crate) async fn record(&self, onion: &str, now: u64) {
        self.record_within(onion, now, MAX_KNOWN_PEERS).await;
    }

    async fn record_within(&self, onion: &str, now: u64, max: usize) {
        let hash = self.hash(onion);
        {
            let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
            let known = seen.get(&hash).copied();
            if known.is_none() && seen.len() >= max {
                warn!(max, "too many known peers: a new one is not recorded");
                return;
            }
            seen.insert(hash, now);
            if known.is_some_and(|when| now.saturating_sub(when) < PEER_REFRESH) {
                return;
            }
        }
        if let Err(e) = self.queue.call(move |q| q.record_peer(&hash, now)).await {
            warn!(error = %e, "cannot record an authenticated peer");
        } else {
            debug!("authenticated peer recorded");
        }
    }

    /// Forgets `onion` (in memory and in the store); true if it was known.
    pub(crate) async fn forget(&self, onion: &str) -> anyhow::Result<bool> {
        let hash = self.hash(onion);
        let in_memory = self
            .seen
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash)
            .is_some();
        let stored = self.queue.call(move |q| q.forget_peer(&hash)).await?;
        self.queue.sync().await?;
        Ok(in_memory || stored)
    }
}

/// The secret key of the peer hashes: 32 random bytes, made once.
fn read_or_make_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    use anyhow::Context;
    match std::fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            anyhow::anyhow!(
                "{} is not a 32-byte key (delete it to make a new one; known peers are then forgotten)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            crate::config::layout::write_atomically(path, &key, 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The onion side's sender rules.
#[derive(Debug)]
pub(crate) struct SenderRules {
    mode: SenderAuth,
    directory: Arc<Directory>,
    peers: Option<Arc<KnownPeers>>,
}

/// Which part of a message names a sender, for the refusal's text.
#[derive(Debug, Clone, Copy)]
enum Place {
    Envelope,
    HeaderFrom,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Envelope => "Sender",
            Place::HeaderFrom => "Header From",
        }
    }
}

impl SenderRules {
    /// The rules of `mode` for our `directory`; `peers` is `None` where nothing is recorded
    /// (a tool run without the daemon).
    pub(crate) fn new(
        mode: SenderAuth,
        directory: Arc<Directory>,
        peers: Option<Arc<KnownPeers>>,
    ) -> SenderRules {
        SenderRules {
            mode,
            directory,
            peers,
        }
    }

    /// The mode.
    pub(crate) fn mode(&self) -> SenderAuth {
        self.mode
    }

    /// The known peers, when recorded.
    pub(crate) fn peers(&self) -> Option<&Arc<KnownPeers>> {
        self.peers.as_ref()
    }

    /// MAIL FROM on the onion side, given the session's XONIONAUTH result.
    pub(crate) fn check_sender(
        &self,
        sender: Option<&Address>,
        session: &AuthResult,
    ) -> Result<(), Reply> {
        match sender {
            // The null sender (bounces) is always allowed; its header is checked.
            None => Ok(()),
            Some(sender) => self.check_domain(&sender.domain, session, Place::Envelope),
        }
    }

    /// The header `From` fields of a message on the onion side (checked when the header
    /// section is complete), given the session's result.
    pub(crate) fn check_header_from(
        &self,
        header: &[u8],
        session: &AuthResult,
    ) -> Result<(), Reply> {
        if self.mode == SenderAuth::Off {
            return Ok(());
        }
        for domain in from_domains(header) {
            self.check_domain(&domain, session, Place::HeaderFrom)?;
        }
        Ok(())
    }

    fn check_domain(&self, domain: &str, session: &AuthResult, place: Place) -> Result<(), Reply> {
        if self.mode == SenderAuth::Off {
            return Ok(());
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let what = place.name();
        let refuse = |text: String| Err(Reply::new(550, [5, 7, 1], text));
        match session {
            AuthResult::Pass(client) => {
                let client = client.to_string();
                if domain == client {
                    return Ok(());
                }
                // The envelope may only name the onion that authenticated; a header From
                // may name other mail domains, but no other onion and none of ours.
                let other_onion = domain.ends_with(".onion");
                if matches!(place, Place::Envelope) || other_onion || self.is_ours(&domain) {
                    return refuse(format!(
                        "{what} domain {domain} is not the onion this session authenticated as ({client})"
                    ));
                }
                Ok(())
            }
            AuthResult::None | AuthResult::Fail => {
                if self.is_ours(&domain) {
                    return refuse(format!(
                        "{what} domain {domain} is ours: our mail never comes in from outside"
                    ));
                }
                let now = crate::intake::headers::unix_now();
                if self
                    .peers
                    .as_ref()
                    .is_some_and(|p| p.is_known(&domain, now))
                {
                    return refuse(format!(
                        "{what} domain {domain} authenticates its mail (XONIONAUTH); this session did not"
                    ));
                }
                Ok(())
            }
        }
    }

    fn is_ours(&self, domain: &str) -> bool {
        self.directory.is_local_domain(domain)
    }
}

/// Every domain named in the header's `From` fields: of the addresses, and of anything
/// that looks like an address in a display name (raw or MIME-decoded), so that
/// `"alice@<A>.onion" <eve@<E>.onion>` counts as claiming both.
pub(crate) fn from_domains(header: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in crate::intake::headers::fields(header) {
        if !name.eq_ignore_ascii_case("from") {
            continue;
        }
        let raw = String::from_utf8_lossy(value).into_owned();
        let mut texts = vec![raw.clone()];
        let field = format!("From:{raw}\r\n\r\n");
        if let Some(message) = mail_parser::MessageParser::default().parse_headers(field.as_bytes())
        {
            if let Some(from) = message.from() {
                for address in from.iter() {
                    texts.extend(address.name().map(str::to_owned));
                    texts.extend(address.address().map(str::to_owned));
                }
            }
        }
        for text in texts {
            for domain in address_domains(&text) {
                if !out.contains(&domain) {
                    out.push(domain);
                }
            }
        }
    }
    out
}

/// The domain after each `@` in `text` (letters, digits, `-`, `.`), lower-cased.
fn address_domains(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices('@') {
        let domain: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .collect();
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        if !domain.is_empty() {
            out.push(domain);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::directory;
    use smtorp_smtp::address::onion_v3_from_key;

    fn onion(n: u8) -> String {
        onion_v3_from_key(&[n; 32])
    }

    /// A session that authenticated as [`signer_onion`] (a `ClientOnion` is made only by
    /// verification: authenticate for real).
    fn pass() -> AuthResult {
        let signer = smtorp_onionauth::Signer::from_seed(&[9u8; 32]).unwrap();
        let server = smtorp_onionauth::Onion::parse(&onion_v3_from_key(&[200u8; 32])).unwrap();
        let mut auth = smtorp_onionauth::ServerAuth::new(vec![server]);
        let _ = auth.ehlo_keyword();
        let command = signer.command(&server, auth.nonce());
        let argument = command.strip_prefix("XONIONAUTH ").unwrap();
        auth.attempt(argument).unwrap();
        auth.result().clone()
    }

    fn signer_onion() -> String {
        smtorp_onionauth::Signer::from_seed(&[9u8; 32])
            .unwrap()
            .onion()
            .to_string()
    }

    fn addr(s: &str) -> Address {
        Address::parse(s, true).unwrap()
    }

    fn rules(mode: SenderAuth, peers: Option<Arc<KnownPeers>>) -> SenderRules {
        SenderRules::new(mode, Arc::new(directory()), peers)
    }

    fn peers(dir: &Path) -> Arc<KnownPeers> {
        let queue = Arc::new(Queue::open(&dir.join("queue")).unwrap());
        Arc::new(KnownPeers::load(&dir.join("peers.key"), queue, 1_000).unwrap())
    }

    #[test]
    fn authenticated_sessions_send_only_as_their_onion() {
        let r = rules(SenderAuth::Verify, None);
        let c = signer_onion();
        let session = pass();
        assert!(r
            .check_sender(Some(&addr(&format!("alice@{c}"))), &session)
            .is_ok());
        assert!(r.check_sender(None, &session).is_ok());
        let other = r
            .check_sender(Some(&addr(&format!("alice@{}", onion(2)))), &session)
            .unwrap_err();
        assert_eq!((other.code, other.enhanced), (550, [5, 7, 1]));
        assert!(
            other
                .text
                .contains("not the onion this session authenticated as"),
            "{}",
            other.text
        );
        assert!(r
            .check_sender(Some(&addr("x@example.org")), &session)
            .is_err());

        let header = format!("From: Alice <alice@{c}>\r\nSubject: x\r\n");
        assert!(r.check_header_from(header.as_bytes(), &session).is_ok());
        let header = format!("From: Eve <eve@{}>\r\n", onion(2));
        assert!(r.check_header_from(header.as_bytes(), &session).is_err());
        // A display name claiming another onion counts too.
        let header = format!("From: \"alice@{}\" <a@{c}>\r\n", onion(2));
        assert!(r.check_header_from(header.as_bytes(), &session).is_err());
        // MIME-encoded display name: "bob@<onion 2>" in base64.
        let encoded = data_encoding::BASE64.encode(format!("bob@{}", onion(2)).as_bytes());
        let header = format!("From: =?utf-8?b?{encoded}?= <a@{c}>\r\n");
        assert!(r.check_header_from(header.as_bytes(), &session).is_err());
        // A second From field is looked at too.
        let header = format!("From: a@{c}\r\nFrom: b@{}\r\n", onion(2));
        assert!(r.check_header_from(header.as_bytes(), &session).is_err());
        // Our own domain in From: refused even from an authenticated peer.
        assert!(r
            .check_header_from(b"From: alice@mail.test\r\n", &session)
            .is_err());
        // A non-onion mail domain in the header is not checked.
        assert!(r
            .check_header_from(b"From: news@lists.example\r\n", &session)
            .is_ok());
    }

    #[test]
    fn unauthenticated_sessions_may_not_use_our_domains_or_known_peers() {
        let dir = tempfile::tempdir().unwrap();
        let known = peers(dir.path());
        let r = rules(SenderAuth::Verify, Some(known.clone()));
        for session in [AuthResult::None, AuthResult::Fail] {
            let ours = r
                .check_sender(Some(&addr("carol@mail.test")), &session)
                .unwrap_err();
            assert_eq!((ours.code, ours.enhanced), (550, [5, 7, 1]));
            assert!(ours.text.contains("is ours"), "{}", ours.text);
            assert!(r
                .check_header_from(b"From: <ALICE@Mail.Test>\r\n", &session)
                .is_err());
            assert!(r
                .check_sender(Some(&addr(&format!("a@{}", onion(3)))), &session)
                .is_ok());
            assert!(r.check_sender(None, &session).is_ok());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let now = crate::intake::headers::unix_now();
        rt.block_on(known.record(&onion(3), now));
        let e = r
            .check_sender(Some(&addr(&format!("a@{}", onion(3)))), &AuthResult::None)
            .unwrap_err();
        assert!(e.text.contains("authenticates its mail"), "{}", e.text);
        let header = format!("From: a@{}\r\n", onion(3).to_uppercase());
        assert!(r
            .check_header_from(header.as_bytes(), &AuthResult::None)
            .is_err());
        // Forgotten: accepted again.
        assert!(rt.block_on(known.forget(&onion(3))).unwrap());
        assert!(r
            .check_sender(Some(&addr(&format!("a@{}", onion(3)))), &AuthResult::None)
            .is_ok());
    }

    #[test]
    fn off_checks_nothing() {
        let r = rules(SenderAuth::Off, None);
        assert!(r
            .check_sender(Some(&addr("carol@mail.test")), &AuthResult::None)
            .is_ok());
        assert!(r
            .check_header_from(b"From: carol@mail.test\r\n", &AuthResult::None)
            .is_ok());
    }

    #[test]
    fn peers_are_stored_as_keyed_hashes_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::intake::headers::unix_now();
        let a = onion(4);
        {
            let known = peers(dir.path());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(known.record(&a, now));
            rt.block_on(known.queue.sync()).unwrap();
            assert!(known.is_known(&a, now));
            assert!(!known.is_known(&onion(5), now));
            assert!(!known.is_known(&a, now + PEER_EXPIRY.as_secs() + 1));
        }
        let key = std::fs::read(dir.path().join("peers.key")).unwrap();
        assert_eq!(key.len(), 32);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("peers.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The store holds no address, only the hash.
        let queue = Arc::new(Queue::open(&dir.path().join("queue")).unwrap());
        let stored = queue.peers().unwrap();
        assert_eq!(stored.len(), 1);
        assert!(!stored[0]
            .0
            .windows(8)
            .any(|w| a.as_bytes().windows(8).any(|x| x == w)));
        // Reloaded: still known; reloaded after the expiry: dropped from the store.
        let known = KnownPeers::load(&dir.path().join("peers.key"), queue.clone(), now).unwrap();
        assert!(known.is_known(&a, now));
        drop(known);
        let later = now + PEER_EXPIRY.as_secs() + 10;
        let known = KnownPeers::load(&dir.path().join("peers.key"), queue.clone(), later).unwrap();
        assert_eq!(known.count(), 0);
        assert!(queue.peers().unwrap().is_empty());
    }

    #[test]
    fn the_record_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let known = peers(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let now = crate::intake::headers::unix_now();
        for n in 0..5 {
            rt.block_on(known.record_within(&onion(n), now, 3));
        }
        assert_eq!(known.count(), 3);
        assert!(known.is_known(&onion(0), now) && !known.is_known(&onion(4), now));
        // A known peer is still refreshed when the record is full.
        rt.block_on(known.record_within(&onion(1), now + 2 * PEER_REFRESH, 3));
        assert_eq!(known.count(), 3);
        rt.block_on(known.queue.sync()).unwrap();
        assert_eq!(known.queue.peers().unwrap().len(), 3);
    }

    #[test]
    fn address_like_text_is_found() {
        assert_eq!(
            address_domains("\"x@A.onion.\" <y@b.test>, z@"),
            vec!["a.onion".to_owned(), "b.test".to_owned()]
        );
    }
}
