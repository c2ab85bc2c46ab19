//! The thin async driver: runs a [`Session`] over any `AsyncRead + AsyncWrite` stream
//! ([`serve`]), or over a stream that may turn into TLS at STARTTLS ([`serve_submission`]).
//!
//! Time limits: a whole command line must arrive within the command timeout (a client that
//! sends a byte now and then does not hold its place longer); message text may pause for
//! the data timeout, and once DATA has run for a while it must average the minimum data
//! rate. With a listener [`Slot`], stress shortens both timeouts and the listener may ask
//! an idle session to leave for a newcomer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::reply::Reply;
use crate::session::{Credentials, Policy, Session, Step, Transaction};
use crate::slots::Slot;

/// Size of the read buffer: one read never adds more than this to the session's input.
const READ_BUFFER: usize = 8 * 1024;

/// The longest a single write of message text may take (a hung disk must not hold a
/// session forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where messages go (the binary's one way into the queue), and who checks AUTH
/// credentials on the submission port.
pub trait Handler: Send + Sync {
    /// A message being received (e.g. a spool file and what is known of its header).
    type Message: Send;

    /// DATA is about to start: prepare where the message goes, or give the reply that
    /// refuses it (452 4.3.1 when the disk is nearly full, 451 4.3.0 on a store error).
    fn begin(
        &self,
        transaction: &Transaction,
    ) -> impl Future<Output = Result<Self::Message, Reply>> + Send;

    /// Appends message text (dot-unstuffed, CRLF line endings, in chunks of bounded size).
    fn write(
        &self,
        message: &mut Self::Message,
        text: &[u8],
    ) -> impl Future<Output = Result<(), Reply>> + Send;

    /// The message is complete: make it durable with its envelope and return its queue
    /// id, or the reply to give. Must not return before the message is on stable storage.
    fn enqueue(
        &self,
        transaction: Transaction,
        message: Self::Message,
    ) -> impl Future<Output = Result<String, Reply>> + Send;

    /// Checks AUTH credentials: the user name the session will know the client by, or the
    /// reply to give (535 5.7.8). Never log the password. The default refuses everyone (the
    /// onion side offers no AUTH anyway).
    fn authenticate(
        &self,
        credentials: Credentials,
    ) -> impl Future<Output = Result<String, Reply>> + Send {
        drop(credentials);
        std::future::ready(Err(Reply::new(
            535,
            [5, 7, 8],
            "Authentication credentials invalid",
        )))
    }
}

/// A stream that is plain until STARTTLS and TLS after it.
#[derive(Debug)]
pub enum MaybeTls<S> {
    /// Before STARTTLS (and always on the onion side).
    Plain(S),
    /// After a successful STARTTLS handshake.
    Tls(Box<TlsStream<S>>),
    /// During the handshake (reads and writes fail).
    Upgrading,
}

fn upgrading() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "TLS handshake in progress",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

/// Runs `session` over `stream` until QUIT, an error limit, a timeout, EOF, `shutdown`
/// resolving or the listener taking back its `slot`. I/O errors end the session quietly
/// (they are returned for logging).
pub async fn serve<S, P, H>(
    stream: S,
    session: Session<P>,
    handler: &H,
    shutdown: impl Future<Output = ()>,
    slot: Option<Arc<Slot>>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Policy,
    H: Handler,
{
    drive(
        MaybeTls::Plain(stream),
        session,
        handler,
        None,
        shutdown,
        slot,
    )
    .await
}

/// [`serve`] for the submission port: the session (configured with
/// `SessionKind::Submission`) may ask for STARTTLS, which `tls` answers, and for AUTH, which
/// [`Handler::authenticate`] answers; a failed AUTH is answered only after
/// [`Session::auth_failure_delay`].
pub async fn serve_submission<S, P, H>(
    stream: S,
    session: Session<P>,
    handler: &H,
    tls: &TlsAcceptor,
    shutdown: impl Future<Output = ()>,
    slot: Option<Arc<Slot>>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Policy,
    H: Handler,
{
    drive(
        MaybeTls::Plain(stream),
        session,
        handler,
        Some(tls),
        shutdown,
        slot,
    )
    .await
}

/// What the driver knows of the session's pace.
struct Pace {
    /// Command lines processed when the current wait started.
    commands: u64,
    /// When the current command wait started.
    since: Instant,
    /// When the DATA phase under way started.
    data_since: Option<Instant>,
    /// The last time message text arrived.
    last_data: Instant,
}

/// How long the next read may wait, or what to do because time is up.
enum Wait {
    Read(Duration),
    TimedOut,
    TooSlow,
}

impl Pace {
    fn new() -> Pace {
        let now = Instant::now();
        Pace {
            commands: 0,
            since: now,
            data_since: None,
            last_data: now,
        }
    }

    /// Updates from the session and decides the next wait.
    fn next<P: Policy>(&mut self, session: &Session<P>, slot: Option<&Arc<Slot>>) -> Wait {
        let now = Instant::now();
        let stressed = slot.is_some_and(|s| s.stressed());
        let seen = session.commands_seen();
        if seen != self.commands {
            self.commands = seen;
            self.since = now;
            if let Some(slot) = slot {
                slot.progress();
            }
        }
        let limit = session.timeout_under(stressed);
        match (session.data_received(), self.data_since) {
            (Some(received), Some(started)) => {
                let config = session.config();
                let elapsed = now.duration_since(started);
                if config.min_data_rate > 0 && elapsed >= config.min_data_rate_after {
                    let floor = config.min_data_rate.saturating_mul(elapsed.as_secs());
                    if received < floor {
                        return Wait::TooSlow;
                    }
                }
                let idle = now.duration_since(self.last_data);
                if idle >= limit {
                    return Wait::TimedOut;
                }
                // Wake at least every second to check the rate.
                Wait::Read((limit - idle).min(Duration::from_secs(1)))
            }
            (Some(_), None) => {
                self.data_since = Some(now);
                self.last_data = now;
                Wait::Read(limit.min(Duration::from_secs(1)))
            }
            (None, _) => {
                self.data_since = None;
                match limit.checked_sub(now.duration_since(self.since)) {
                    Some(left) if !left.is_zero() => Wait::Read(left),
                    _ => Wait::TimedOut,
                }
            }
        }
    }

    /// Bytes arrived.
    fn received<P: Policy>(&mut self, session: &Session<P>, slot: Option<&Arc<Slot>>) {
        if session.in_data() {
            self.last_data = Instant::now();
            if let Some(slot) = slot {
                slot.progress();
            }
        }
    }
}

/// Marks the slot busy while the driver serves the session (never evicted meanwhile).
fn busy(slot: Option<&Arc<Slot>>, on: bool) {
    if let Some(slot) = slot {
        slot.set_busy(on);
    }
}

/// The loop behind [`serve`] and [`serve_submission`].
async fn drive<S, P, H>(
    mut stream: MaybeTls<S>,
    mut session: Session<P>,
    handler: &H,
    tls: Option<&TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    slot: Option<Arc<Slot>>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Policy,
    H: Handler,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutdown_seen = false;
    let mut evicted_seen = false;
    let mut buf = vec![0u8; READ_BUFFER];
    let mut message: Option<H::Message> = None;
    let mut pace = Pace::new();
    let slot = slot.as_ref();
    loop {
        match session.step() {
            Step::NeedInput => {
                write_output(&mut stream, &mut session, slot).await?;
                let wait = match pace.next(&session, slot) {
                    Wait::Read(wait) => wait,
                    Wait::TimedOut => {
                        session.timed_out();
                        continue;
                    }
                    Wait::TooSlow => {
                        tracing::debug!("client below the minimum data rate");
                        session.too_slow();
                        continue;
                    }
                };
                let evicted = async {
                    match slot {
                        Some(slot) => slot.evicted().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = &mut shutdown, if !shutdown_seen => {
                        shutdown_seen = true;
                        session.shutting_down();
                    }
                    () = evicted, if !evicted_seen => {
                        evicted_seen = true;
                        session.evicted();
                    }
                    read = tokio::time::timeout(wait, stream.read(&mut buf)) => match read {
                        Err(_elapsed) => {} // time limits are checked at the top
                        Ok(Ok(0)) => {
                            tracing::debug!("client closed the connection");
                            return Ok(());
                        }
                        Ok(Ok(n)) => {
                            session.receive(buf.get(..n).unwrap_or_default());
                            pace.received(&session, slot);
                        }
                        Ok(Err(error)) => return Err(error),
                    },
                }
            }
            Step::StartData(transaction) => {
                busy(slot, true);
                let outcome = handler.begin(&transaction).await;
                busy(slot, false);
                session.data_started(match outcome {
                    Ok(started) => {
                        message = Some(started);
                        Ok(())
                    }
                    Err(reply) => Err(reply),
                });
            }
            Step::Write(text) => {
                let outcome = match message.as_mut() {
                    Some(m) => {
                        match tokio::time::timeout(WRITE_TIMEOUT, handler.write(m, &text)).await {
                            Ok(outcome) => outcome,
                            Err(_) => Err(Reply::new(
                                451,
                                [4, 3, 0],
                                "Error: writing the message took too long, try again later",
                            )),
                        }
                    }
                    None => Err(Reply::new(451, [4, 3, 0], "Error: no message in progress")),
                };
                session.written(outcome);
            }
            Step::DiscardData => message = None,
            Step::Enqueue(transaction) => {
                // Never raced against shutdown: an enqueue always runs to completion.
                busy(slot, true);
                let outcome = match message.take() {
                    Some(m) => handler.enqueue(transaction, m).await,
                    None => Err(Reply::new(451, [4, 3, 0], "Error: no message in progress")),
                };
                busy(slot, false);
                session.enqueued(outcome);
            }
            Step::StartTls => {
                write_output(&mut stream, &mut session, slot).await?;
                let (Some(acceptor), MaybeTls::Plain(plain)) =
                    (tls, std::mem::replace(&mut stream, MaybeTls::Upgrading))
                else {
                    // Cannot happen: only submission sessions (which have TLS) say StartTls.
                    return Err(std::io::Error::other("STARTTLS without TLS configuration"));
                };
                let handshake = acceptor.accept(plain);
                let limit = session.timeout_under(slot.is_some_and(|s| s.stressed()));
                match tokio::time::timeout(limit, handshake).await {
                    Ok(Ok(tls_stream)) => {
                        stream = MaybeTls::Tls(Box::new(tls_stream));
                        session.tls_started();
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        return Err(error);
                    }
                    Err(_elapsed) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "TLS handshake timed out",
                        ))
                    }
                }
            }
            Step::Authenticate(credentials) => {
                // Never raced against shutdown, like an enqueue.
                busy(slot, true);
                let outcome = handler.authenticate(credentials).await;
                if outcome.is_err() {
                    tokio::time::sleep(session.auth_failure_delay()).await;
                }
                busy(slot, false);
                session.authenticated(outcome);
            }
            Step::Close => {
                write_output(&mut stream, &mut session, slot).await?;
                // The peer may already be gone; nothing more to say either way.
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// Writes the pending output, bounded by the session's timeout (a client that never reads
/// cannot hold us forever).
async fn write_output<S, P>(
    stream: &mut S,
    session: &mut Session<P>,
    slot: Option<&Arc<Slot>>,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
    P: Policy,
{
    let output = session.take_output();
    if output.is_empty() {
        return Ok(());
    }
    let write = async {
        stream.write_all(&output).await?;
        stream.flush().await
    };
    let limit = session.timeout_under(slot.is_some_and(|s| s.stressed()));
    match tokio::time::timeout(limit, write).await {
        Ok(result) => result,
        Err(_elapsed) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

#[cfg(test)]
mod tests {

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
    use tokio::sync::{oneshot, Notify};

    use super::*;
    use crate::session::SessionConfig;
    use crate::test_support::{config, TestPolicy, DOMAIN};

    /// Records transactions and their text; optionally waits for a go-ahead before
    /// answering.
    #[derive(Default)]
    struct TestHandler {
        got: Mutex<Vec<(Transaction, Vec<u8>)>>,
        started: Notify,
        gate: Option<Arc<Notify>>,
    }

    impl Handler for TestHandler {
        type Message = Vec<u8>;

        async fn begin(&self, _transaction: &Transaction) -> Result<Vec<u8>, Reply> {
            Ok(Vec::new())
        }

        async fn write(&self, message: &mut Vec<u8>, text: &[u8]) -> Result<(), Reply> {
            message.extend_from_slice(text);
            Ok(())
        }

        async fn enqueue(&self, transaction: Transaction, text: Vec<u8>) -> Result<String, Reply> {
            self.started.notify_one();
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            let mut got = self.got.lock().unwrap();
            got.push((transaction, text));
            Ok(format!("Q{}", got.len()))
        }
    }

    /// The client side: write lines, read replies (multi-line replies joined).
    struct Client {
        io: BufReader<DuplexStream>,
    }

    impl Client {
        async fn reply(&mut self) -> String {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                    .await
                    .expect("reply timeout")
                    .unwrap();
                if n == 0 {
                    return all;
                }
                all.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return all;
                }
            }
        }

        async fn send(&mut self, text: &str) {
            self.io.get_mut().write_all(text.as_bytes()).await.unwrap();
        }

        async fn cmd(&mut self, line: &str, expect: &str) -> String {
            self.send(&format!("{line}\r\n")).await;
            let reply = self.reply().await;
            assert!(
                reply.starts_with(expect),
                "{line}: expected {expect}, got {reply:?}"
            );
            reply
        }
    }

    fn start(
        cfg: SessionConfig,
        handler: Arc<TestHandler>,
    ) -> (
        Client,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let session = Session::new(cfg, TestPolicy);
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            serve(server, session, &*handler, shutdown, None).await
        });
        (
            Client {
                io: BufReader::new(client),
            },
            stop_tx,
            task,
        )
    }

    #[tokio::test]
    async fn whole_dialogue_over_a_pipe() {
        let handler = Arc::new(TestHandler::default());
        let (mut c, _stop, task) = start(config(), handler.clone());
        assert_eq!(c.reply().await, format!("220 {} ESMTP\r\n", *DOMAIN));
        let ehlo = c.cmd("EHLO client.example", "250-").await;
        assert!(ehlo.ends_with("250 ENHANCEDSTATUSCODES\r\n"));
        // Pipelined envelope: the four replies arrive together.
        c.send(&format!(
            "MAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@{d}>\r\nRCPT TO:<nobody@{d}>\r\nDATA\r\n",
            d = *DOMAIN
        ))
        .await;
        assert!(c.reply().await.starts_with("250 2.1.0"));
        assert!(c.reply().await.starts_with("250 2.1.5"));
        assert!(c.reply().await.starts_with("550 5.1.1"));
        assert!(c.reply().await.starts_with("354 "));
        c.send("Subject: test\r\n\r\n..dot\r\n.\r\n").await;
        assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as Q1\r\n");
        c.cmd("QUIT", "221 2.0.0").await;
        assert_eq!(c.reply().await, ""); // EOF after 221
        task.await.unwrap().unwrap();
        let got = handler.got.lock().unwrap();
        assert_eq!(
            *got,
            vec![(
                Transaction {
                    helo: "client.example".into(),
                    sender: "carol@example.org".into(),
                    recipients: vec![format!("alice@{}", *DOMAIN)],
                    auth_user: None,
                    onion_auth: crate::AuthResult::None,
                },
                b"Subject: test\r\n\r\n.dot\r\n".to_vec()
            )]
        );
    }

    #[tokio::test]
    async fn shutdown_says_421() {
        let handler = Arc::new(TestHandler::default());
        let (mut c, stop, task) = start(config(), handler);
        c.reply().await;
        c.cmd("EHLO c", "250-").await;
        stop.send(()).unwrap();
        assert_eq!(
            c.reply().await,
            format!("421 4.3.2 {} Service shutting down\r\n", *DOMAIN)
        );
        assert_eq!(c.reply().await, "");
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_never_abandons_an_enqueue() {
        let gate = Arc::new(Notify::new());
        let handler = Arc::new(TestHandler {
            gate: Some(gate.clone()),
            ..Default::default()
        });
        let (mut c, stop, task) = start(config(), handler.clone());
        c.reply().await;
        c.cmd("EHLO c", "250-").await;
        c.cmd("MAIL FROM:<>", "250 2.1.0").await;
        c.cmd(&format!("RCPT TO:<bob@{}>", *DOMAIN), "250 2.1.5")
            .await;
        c.cmd("DATA", "354").await;
        c.send("x\r\n.\r\n").await;
        handler.started.notified().await;
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
        assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as Q1\r\n");
        assert!(c.reply().await.starts_with("421 4.3.2 "));
        task.await.unwrap().unwrap();
        assert_eq!(handler.got.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn idle_client_times_out() {
        let cfg = SessionConfig {
            command_timeout: Duration::from_millis(50),
            ..config()
        };
        let (mut c, _stop, task) = start(cfg, Arc::new(TestHandler::default()));
        c.reply().await;
        assert!(c.reply().await.starts_with("421 4.4.2 "));
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn eof_and_bare_lf_end_quietly() {
        let (mut c, _stop, task) = start(config(), Arc::new(TestHandler::default()));
        c.reply().await;
        drop(c);
        task.await.unwrap().unwrap();

        let handler = Arc::new(TestHandler::default());
        let (mut c, _stop, task) = start(config(), handler.clone());
        c.reply().await;
        c.send(&format!(
            "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@{}>\r\nDATA\r\nhi\r\n.\nQUIT\r\n",
            *DOMAIN
        ))
        .await;
        let mut all = String::new();
        loop {
            let r = c.reply().await;
            if r.is_empty() {
                break;
            }
            all.push_str(&r);
        }
        assert!(
            all.ends_with("Bare CR or LF received; lines must end with CRLF\r\n"),
            "{all}"
        );
        task.await.unwrap().unwrap();
        assert!(handler.got.lock().unwrap().is_empty());
    }

    /// A TLS acceptor and a matching client config for `DOMAIN`.
    fn tls_pair() -> (TlsAcceptor, tokio_rustls::TlsConnector) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::generate_simple_self_signed(vec![DOMAIN.clone()]).unwrap();
        let cert = key.cert.der().clone();
        let private =
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], private)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            TlsAcceptor::from(Arc::new(server)),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    /// Accepts alice/secret.
    struct AuthHandler;

    impl Handler for AuthHandler {
        type Message = ();

        async fn begin(&self, _transaction: &Transaction) -> Result<(), Reply> {
            Ok(())
        }

        async fn write(&self, _message: &mut (), _text: &[u8]) -> Result<(), Reply> {
            Ok(())
        }

        async fn enqueue(&self, transaction: Transaction, _message: ()) -> Result<String, Reply> {
            assert_eq!(transaction.auth_user.as_deref(), Some("alice"));
            Ok("S1".into())
        }

        async fn authenticate(&self, c: Credentials) -> Result<String, Reply> {
            if c.user == "alice" && c.password == "secret" {
                Ok("alice".into())
            } else {
                Err(Reply::new(
                    535,
                    [5, 7, 8],
                    "Authentication credentials invalid",
                ))
            }
        }
    }

    async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(io: &mut R) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), io.read_line(&mut line))
                .await
                .expect("reply timeout")
                .unwrap();
            all.push_str(&line);
            if n == 0 || line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    #[tokio::test]
    async fn submission_over_real_tls_ignores_injected_plaintext() {
        let (acceptor, connector) = tls_pair();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let cfg = SessionConfig {
            kind: crate::session::SessionKind::Submission,
            auth_failure_delay: Duration::from_millis(10),
            ..config()
        };
        let task = tokio::spawn(async move {
            let session = Session::new(cfg, TestPolicy);
            serve_submission(
                server,
                session,
                &AuthHandler,
                &acceptor,
                std::future::pending(),
                None,
            )
            .await
        });
        let mut plain = BufReader::new(client);
        assert!(read_reply(&mut plain).await.starts_with("220 "));
        plain.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
        assert!(read_reply(&mut plain).await.contains("250-STARTTLS\r\n"));
        // Pipelined plaintext after STARTTLS: must never be executed.
        plain
            .get_mut()
            .write_all(b"STARTTLS\r\nEHLO evil\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_reply(&mut plain).await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        let name = rustls::pki_types::ServerName::try_from(DOMAIN.clone()).unwrap();
        let tls = connector.connect(name, plain.into_inner()).await.unwrap();
        let mut c = BufReader::new(tls);
        // The first thing said inside TLS is the reply to our own EHLO.
        c.get_mut()
            .write_all(b"MAIL FROM:<alice@x.example>\r\n")
            .await
            .unwrap();
        assert!(read_reply(&mut c).await.starts_with("503 5.5.1"));
        c.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
        let ehlo = read_reply(&mut c).await;
        assert!(ehlo.contains("250-AUTH PLAIN LOGIN\r\n") && !ehlo.contains("STARTTLS"));
        c.get_mut()
            .write_all(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n")
            .await
            .unwrap();
        assert!(read_reply(&mut c).await.starts_with("535 5.7.8"));
        c.get_mut()
            .write_all(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
            .await
            .unwrap();
        assert!(read_reply(&mut c).await.starts_with("235 2.7.0"));
        let d = &*DOMAIN;
        c.get_mut()
            .write_all(format!("MAIL FROM:<alice@{d}>\r\nRCPT TO:<bob@{d}>\r\nDATA\r\n").as_bytes())
            .await
            .unwrap();
        assert!(read_reply(&mut c).await.starts_with("250 2.1.0"));
        assert!(read_reply(&mut c).await.starts_with("250 2.1.5"));
        assert!(read_reply(&mut c).await.starts_with("354"));
        c.get_mut().write_all(b"hi\r\n.\r\nQUIT\r\n").await.unwrap();
        assert_eq!(read_reply(&mut c).await, "250 2.0.0 Ok: queued as S1\r\n");
        assert!(read_reply(&mut c).await.starts_with("221 2.0.0"));
        task.await.unwrap().unwrap();
    }

    #[test]
    fn serve_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (_client, server) = tokio::io::duplex(1024);
        let handler = TestHandler::default();
        let fut = serve(
            server,
            Session::new(config(), TestPolicy),
            &handler,
            async {},
            None,
        );
        assert_send(&fut);
        let (_client, server) = tokio::io::duplex(1024);
        let (acceptor, _) = tls_pair();
        let fut = serve_submission(
            server,
            Session::new(config(), TestPolicy),
            &handler,
            &acceptor,
            async {},
            None,
        );
        assert_send(&fut);
    }
}
