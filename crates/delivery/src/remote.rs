//! The remote deliverer: SMTP client sessions (with `mail-send`) to other onion domains,
//! over whatever stream the [`Connector`] opens (an arti onion stream, or TCP for a static
//! route), with a result per recipient.
//!
//! Every round trip over Tor crosses several relays, so the client pipelines MAIL, RCPT and
//! DATA when the peer offers PIPELINING (RFC 2920), and keeps an idle session to a
//! destination for [`IDLE_TTL`] to reuse it (RSET between messages) instead of building a
//! new circuit and session for the next message.
//!
//! When the peer offers XONIONAUTH and the connection authenticates the peer (always over
//! Tor; over a static route as the connector says), the session authenticates as the
//! sender's onion before its first MAIL ([`ClientAuth`]); sessions are cached per
//! (destination, signing onion).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_send::SmtpClient;
use smtp_proto::{EhloResponse, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::client_auth::{command_for, ClientAuth};
use crate::sink::{Content, Job, Outcome, Reply, Sink, SinkFuture};
use crate::Route;

/// A bidirectional byte stream to a peer MTA.
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerStream for T {}

/// A boxed [`PeerStream`].
pub type BoxedStream = Box<dyn PeerStream>;

/// Why no stream could be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// True if a later attempt may succeed.
    pub temporary: bool,
    /// What happened (goes into the queue's last error and bounces).
    pub message: String,
}

/// The future a [`Connector`] returns.
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BoxedStream, ConnectError>> + Send + 'a>>;

/// Opens streams to the SMTP service of an onion domain (implemented by the binary: static
/// routes over TCP, else arti). Never resolves names, never reaches a clearnet host.
pub trait Connector: Send + Sync + 'static {
    /// A stream to the SMTP server of `domain` (a lower-case `<name>.onion`).
    fn connect<'a>(&'a self, domain: &'a str) -> ConnectFuture<'a>;

    /// True if a stream to `domain` reaches only the real server of `domain`, so that our
    /// XONIONAUTH signature cannot be used by anyone else (docs/sender-auth.md 10): true
    /// for onion streams; a static route decides by its `route_auth` rule.
    fn authenticates_server(&self, domain: &str) -> bool {
        let _ = domain;
        true
    }
}

/// The longest EHLO reply we read.
const MAX_EHLO_REPLY: usize = 64 * 1024;

/// How long an idle session to a destination is kept for the next message.
pub const IDLE_TTL: Duration = Duration::from_secs(60);

/// How long a cached session may take to answer the RSET that checks it is still alive
/// before we give up on it and open a new one (a round trip over Tor takes about a second).
const REUSE_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// An open session, ready for MAIL FROM.
struct Session {
    client: SmtpClient<BoxedStream>,
    ehlo: EhloResponse<String>,
    idle_since: Instant,
}

/// Remote SMTP delivery with connection caching.
pub struct RemoteDelivery {
    connector: Arc<dyn Connector>,
    helo: String,
    timeout: Duration,
    /// Idle sessions by (destination, signing onion or empty).
    idle: Mutex<HashMap<(String, String), Vec<Session>>>,
    connections: std::sync::atomic::AtomicU64,
    auth: Option<Arc<ClientAuth>>,
}

/// The outcome of a peer's reply at `stage`, with its text kept for the sender.
fn outcome_of(domain: &str, stage: &str, reply: &Response<String>) -> Outcome {
    let enhanced = if reply.esc[0] > 0 {
        reply.esc
    } else {
        [(reply.code / 100) as u8, 0, 0]
    };
    let text = crate::sink::one_line(format!("{domain} answered {stage}: {}", reply.message));
    Outcome::from_reply(Reply::new(reply.code, enhanced, text))
}

/// A mail-send error as an outcome: a peer's reply as such; I/O errors, timeouts and
/// unparseable replies are temporary (4.4.2, bad connection).
fn failed(domain: &str, stage: &str, error: &mail_send::Error) -> Outcome {
    match error {
        mail_send::Error::UnexpectedReply(reply) => outcome_of(domain, stage, reply),
        other => Outcome::temporary([4, 4, 2], format!("{domain}: {stage} failed: {other}")),
    }
}

/// The DATA encoding of a message, piece by piece: every line ending made CRLF (no bare CR
/// or LF ever goes out, even from a damaged spool file), a line starting with `.` gets
/// another (dot-stuffing), and the end-of-data mark. A message that ends with CRLF is
/// followed by `.` CRLF only, so that no empty line is added at the end (mail-send's own
/// writer always adds one).
#[derive(Debug)]
struct DataEncoder {
    /// The next byte starts a line.
    at_line_start: bool,
    /// The last byte was a CR whose line ending is not decided yet.
    pending_cr: bool,
}

impl DataEncoder {
    fn new() -> DataEncoder {
        DataEncoder {
            at_line_start: true,
            pending_cr: false,
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.at_line_start = true;
    }

    /// Encodes one piece of the message into `out`.
    fn encode(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        out.reserve(piece.len() + piece.len() / 64 + 4);
        for &b in piece {
            if self.pending_cr {
                self.pending_cr = false;
                self.end_line(out);
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => self.end_line(out),
                _ => {
                    if self.at_line_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    self.at_line_start = false;
                }
            }
        }
    }

    /// Ends the message: the last line ending, then `.` CRLF.
    fn finish(mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            self.pending_cr = false;
            self.end_line(out);
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Writes the message from `content` as DATA text, piece by piece, each write bounded by
/// `timeout`.
async fn write_data(
    stream: &mut BoxedStream,
    content: &mut (dyn AsyncRead + Send + Unpin),
    timeout: Duration,
) -> std::io::Result<()> {
    let mut encoder = DataEncoder::new();
    let mut piece = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(70 * 1024);
    loop {
        let n = content.read(&mut piece).await?;
        out.clear();
        if n == 0 {
            let encoder = std::mem::replace(&mut encoder, DataEncoder::new());
            encoder.finish(&mut out);
        } else {
            encoder.encode(&piece[..n], &mut out);
        }
        tokio::time::timeout(timeout, stream.write_all(&out))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))??;
        if n == 0 {
            break;
        }
    }
    stream.flush().await
}

impl RemoteDelivery {
    /// Delivers with `connector`, greeting peers as `helo` (our onion address), with
    /// `timeout` for each command.
    pub fn new(connector: Arc<dyn Connector>, helo: String, timeout: Duration) -> RemoteDelivery {
        RemoteDelivery {
            connector,
            helo,
            timeout,
            idle: Mutex::new(HashMap::new()),
            connections: std::sync::atomic::AtomicU64::new(0),
            auth: None,
        }
    }

    /// Authenticates with these keys (XONIONAUTH) wherever the peer offers it.
    pub fn with_auth(mut self, auth: Option<Arc<ClientAuth>>) -> RemoteDelivery {
        self.auth = auth;
        self
    }

    /// How many connections were opened so far (for tests and `status`).
    pub fn connections_opened(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An idle session under `key` that still answers RSET, if any.
    async fn reuse(&self, key: &(String, String)) -> Option<Session> {
        let domain = key.0.as_str();
        loop {
            let candidate = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.get_mut(key).and_then(Vec::pop)
            }?;
            if candidate.idle_since.elapsed() >= IDLE_TTL {
                continue; // dropped: the peer sees the stream close
            }
            let mut session = candidate;
            match tokio::time::timeout(REUSE_PROBE_TIMEOUT, session.client.rset()).await {
                Ok(Ok(())) => return Some(session),
                Ok(Err(e)) => {
                    debug!(domain, error = %e, "cached session is gone; opening a new one")
                }
                // A peer that restarted may leave its old circuit open at the relays for a
                // while: nothing would ever answer on it.
                Err(_) => debug!(domain, "cached session does not answer; opening a new one"),
            }
        }
    }

    /// A fresh session: connect, greeting, EHLO, and XONIONAUTH with `signer` when the
    /// peer offers it and the connection authenticates the peer.
    async fn open(
        &self,
        domain: &str,
        signer: Option<&smtorp_onionauth::Signer>,
    ) -> Result<Session, Outcome> {
        let stream = match self.connector.connect(domain).await {
            Ok(s) => s,
            // X.4.1: no answer from host; the scheduler holds the destination's mail.
            Err(e) if e.temporary => return Err(Outcome::temporary([4, 4, 1], e.message)),
            Err(e) => return Err(Outcome::permanent([5, 1, 2], e.message)),
        };
        self.connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut client = SmtpClient {
            stream,
            timeout: self.timeout,
        };
        let greeting = match tokio::time::timeout(self.timeout, client.read()).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(failed(domain, "the connection", &e)),
            Err(_) => {
                return Err(Outcome::temporary(
                    [4, 4, 1],
                    format!("{domain}: no greeting in time"),
                ))
            }
        };
        if greeting.code != 220 {
            return Err(outcome_of(domain, "the connection", &greeting));
        }
        let (ehlo, raw) =
            match tokio::time::timeout(self.timeout, ehlo(&mut client, &self.helo)).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => return Err(failed(domain, "EHLO", &e)),
                Err(_) => return Err(failed(domain, "EHLO", &mail_send::Error::Timeout)),
            };
        let command = signer
            .filter(|_| self.connector.authenticates_server(domain))
            .and_then(|signer| command_for(signer, domain, &raw));
        if let Some(command) = command {
            let reply = match client.cmd(command.as_bytes()).await {
                Ok(reply) => reply,
                Err(e) => return Err(failed(domain, "XONIONAUTH", &e)),
            };
            if reply.code != 235 {
                // Our key, their verdict: never a reason to bounce, and worth a look.
                tracing::warn!(domain, code = reply.code, reply = %reply.message, "XONIONAUTH refused");
                let text = format!(
                    "{domain} answered XONIONAUTH: {} {}",
                    reply.code, reply.message
                );
                return Err(Outcome::temporary([4, 7, 0], text));
            }
            debug!(domain, "authenticated with XONIONAUTH");
        }
        Ok(Session {
            client,
            ehlo,
            idle_since: Instant::now(),
        })
    }

    /// Says QUIT to idle sessions older than [`IDLE_TTL`] and drops them.
    pub async fn sweep(&self) {
        let expired: Vec<Session> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            for sessions in idle.values_mut() {
                let (old, keep): (Vec<Session>, Vec<Session>) = sessions
                    .drain(..)
                    .partition(|s| s.idle_since.elapsed() >= IDLE_TTL);
                *sessions = keep;
                out.extend(old);
            }
            idle.retain(|_, v| !v.is_empty());
            out
        };
        for session in expired {
            let _ = session.client.quit().await;
        }
    }

    /// One transaction to `domain`: MAIL FROM `sender`, one RCPT per recipient, DATA `body`,
    /// on a cached session when one is idle, else on a new one.
    pub async fn deliver(
        &self,
        domain: &str,
        sender: &str,
        recipients: &[String],
        content: &Content,
    ) -> Vec<Outcome> {
        let all = |o: Outcome| vec![o; recipients.len()];
        let signer = self.auth.as_ref().and_then(|a| a.signer_for(sender));
        let key = (
            domain.to_owned(),
            signer.map(|s| s.onion().to_string()).unwrap_or_default(),
        );
        let mut session = match self.reuse(&key).await {
            Some(s) => s,
            None => match self.open(domain, signer).await {
                Ok(s) => s,
                Err(o) => return all(o),
            },
        };
        let outcomes = match self
            .transaction(&mut session, domain, sender, recipients, content)
            .await
        {
            Ok(outcomes) => outcomes,
            Err(o) => return all(o), // the session is broken: dropped, not cached
        };
        session.idle_since = Instant::now();
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .push(session);
        outcomes
    }

    /// Sends the message after a 354, streamed from its spool file, and reads the final
    /// reply (10 minutes at most, RFC 5321 4.5.3.2.6). `Err` when the session broke.
    async fn send_body(
        &self,
        client: &mut SmtpClient<BoxedStream>,
        domain: &str,
        content: &Content,
    ) -> Result<Outcome, Outcome> {
        let mut file = content.open_async().await.map_err(|e| {
            Outcome::temporary([4, 3, 0], format!("cannot read the queued message: {e}"))
        })?;
        if let Err(e) = write_data(&mut client.stream, &mut file, self.timeout).await {
            return Err(Outcome::temporary(
                [4, 4, 2],
                format!("{domain}: DATA failed: {e}"),
            ));
        }
        let finished = tokio::time::timeout(self.timeout * 2, client.read()).await;
        match finished {
            Ok(Ok(reply)) => Ok(outcome_of(domain, "DATA", &reply)),
            Ok(Err(e)) => Err(failed(domain, "DATA", &e)),
            Err(_) => Err(Outcome::temporary(
                [4, 4, 2],
                format!("{domain}: no reply to the end of DATA in time"),
            )),
        }
    }

    /// MAIL, RCPT..., DATA on an open session; pipelined when the peer offers it. `Err` when
    /// the session itself failed (every recipient gets that outcome).
    async fn transaction(
        &self,
        session: &mut Session,
        domain: &str,
        sender: &str,
        recipients: &[String],
        content: &Content,
    ) -> Result<Vec<Outcome>, Outcome> {
        let ehlo = &session.ehlo;
        let client = &mut session.client;
        let mut mail = format!("MAIL FROM:<{sender}>");
        // We do not know whether the text is 7-bit without reading it all first: say
        // 8BITMIME whenever the peer offers it (RFC 6152 allows it for 7-bit text too).
        if ehlo.has_capability(smtp_proto::EXT_8BIT_MIME) {
            mail.push_str(" BODY=8BITMIME");
        }
        let utf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        if utf8 && ehlo.has_capability(smtp_proto::EXT_SMTP_UTF8) {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let rcpts: Vec<String> = recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>\r\n"))
            .collect();

        if ehlo.has_capability(smtp_proto::EXT_PIPELINING) {
            // One round trip for the whole envelope (RFC 2920).
            // One write for the whole envelope, then one reply per command.
            let mut batch = mail.into_bytes();
            for rcpt in &rcpts {
                batch.extend_from_slice(rcpt.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            let expected = rcpts.len() + 2;
            let replies = tokio::time::timeout(self.timeout, async {
                client.stream.write_all(&batch).await?;
                client.stream.flush().await?;
                client.read_many(expected).await
            })
            .await
            .map_err(|_| {
                Outcome::temporary(
                    [4, 4, 2],
                    format!("{domain}: no reply to the envelope in time"),
                )
            })?
            .map_err(|e| failed(domain, "the envelope", &e))?;
            let (mail_reply, rest) = replies
                .split_first()
                .ok_or_else(|| Outcome::temporary([4, 4, 2], format!("{domain}: no reply")))?;
            let (data_reply, rcpt_replies) = rest
                .split_last()
                .ok_or_else(|| Outcome::temporary([4, 4, 2], format!("{domain}: no reply")))?;
            if mail_reply.code / 100 != 2 {
                if data_reply.code == 354 {
                    let _ = client.stream.write_all(b".\r\n").await;
                    let _ = client.read().await;
                }
                return Err(outcome_of(domain, "MAIL FROM", mail_reply));
            }
            let mut outcomes: Vec<Outcome> = rcpt_replies
                .iter()
                .map(|r| outcome_of(domain, "RCPT TO", r))
                .collect();
            let accepted = outcomes.contains(&Outcome::Delivered);
            if data_reply.code != 354 {
                if accepted {
                    let o = outcome_of(domain, "DATA", data_reply);
                    for x in outcomes.iter_mut().filter(|x| **x == Outcome::Delivered) {
                        *x = o.clone();
                    }
                }
                return Ok(outcomes);
            }
            if !accepted {
                // 354 with no recipient: end an empty message; nothing is delivered.
                let _ = client.stream.write_all(b".\r\n").await;
                let _ = client.read().await;
                return Ok(outcomes);
            }
            let data = self.send_body(client, domain, content).await?;
            for x in outcomes.iter_mut().filter(|x| **x == Outcome::Delivered) {
                *x = data.clone();
            }
            return Ok(outcomes);
        }

        // Without PIPELINING: one command at a time.
        match client.cmd(mail.as_bytes()).await {
            Ok(reply) if reply.code / 100 == 2 => {}
            Ok(reply) => return Err(outcome_of(domain, "MAIL FROM", &reply)),
            Err(e) => return Err(failed(domain, "MAIL FROM", &e)),
        }
        let mut outcomes = Vec::with_capacity(recipients.len());
        for rcpt in &rcpts {
            match client.cmd(rcpt.as_bytes()).await {
                Ok(reply) => outcomes.push(outcome_of(domain, "RCPT TO", &reply)),
                Err(e) => return Err(failed(domain, "RCPT TO", &e)),
            }
        }
        if outcomes.contains(&Outcome::Delivered) {
            match client.cmd(b"DATA\r\n").await {
                Ok(reply) if reply.code == 354 => {}
                Ok(reply) => {
                    let o = outcome_of(domain, "DATA", &reply);
                    for x in outcomes.iter_mut().filter(|x| **x == Outcome::Delivered) {
                        *x = o.clone();
                    }
                    return Ok(outcomes);
                }
                Err(e) => return Err(failed(domain, "DATA", &e)),
            }
            let data = self.send_body(client, domain, content).await?;
            for o in outcomes.iter_mut().filter(|o| **o == Outcome::Delivered) {
                *o = data.clone();
            }
        } else {
            // Nobody accepted: leave the session clean for the next message.
            let _ = client.rset().await;
        }
        Ok(outcomes)
    }
}

/// EHLO, keeping the raw reply: mail-send's parser drops extensions it does not know, such
/// as XONIONAUTH. A reply other than 250 is an `UnexpectedReply`.
async fn ehlo(
    client: &mut SmtpClient<BoxedStream>,
    helo: &str,
) -> mail_send::Result<(EhloResponse<String>, String)> {
    client
        .stream
        .write_all(format!("EHLO {helo}\r\n").as_bytes())
        .await?;
    client.stream.flush().await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = client.stream.read(&mut buf).await?;
        if n == 0 || raw.len() + n > MAX_EHLO_REPLY {
            return Err(mail_send::Error::UnparseableReply);
        }
        raw.extend_from_slice(&buf[..n]);
        if reply_complete(&raw) {
            break;
        }
    }
    if raw.starts_with(b"250") {
        let ehlo =
            EhloResponse::parse(&mut raw.iter()).map_err(|_| mail_send::Error::UnparseableReply)?;
        Ok((ehlo, String::from_utf8_lossy(&raw).into_owned()))
    } else {
        let reply = smtp_proto::response::parser::ResponseReceiver::default()
            .parse(&mut raw.iter())
            .map_err(|_| mail_send::Error::UnparseableReply)?;
        Err(mail_send::Error::UnexpectedReply(reply))
    }
}

/// True when `raw` ends with the last line of a reply (`NNN ` or `NNN` then CRLF).
fn reply_complete(raw: &[u8]) -> bool {
    if !raw.ends_with(b"\n") {
        return false;
    }
    let body = &raw[..raw.len() - 1];
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = &raw[start..];
    line.len() >= 4
        && line[..3].iter().all(u8::is_ascii_digit)
        && matches!(line[3], b' ' | b'\r' | b'\n')
}

impl Sink for RemoteDelivery {
    fn deliver<'a>(&'a self, job: Job<'a>) -> SinkFuture<'a> {
        Box::pin(async move {
            let Route::Remote { domain } = job.route else {
                return vec![
                    Outcome::permanent([5, 3, 5], "not a remote route");
                    job.recipients.len()
                ];
            };
            let rcpts: Vec<String> = job
                .recipients
                .iter()
                .map(|&i| job.envelope.recipients[i].address.clone())
                .collect();
            RemoteDelivery::deliver(self, domain, &job.envelope.sender, &rcpts, job.content).await
        })
    }

    fn upkeep(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.sweep())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn written(body: &[u8]) -> Vec<u8> {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut stream: BoxedStream = Box::new(a);
        let mut content: &[u8] = body;
        write_data(&mut stream, &mut content, Duration::from_secs(5))
            .await
            .unwrap();
        drop(stream);
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut out)
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn data_is_dot_stuffed_and_ends_without_an_extra_line() {
        assert_eq!(
            written(b"a\r\n.b\r\n..c\r\n.\r\n").await,
            b"a\r\n..b\r\n...c\r\n..\r\n.\r\n"
        );
        assert_eq!(written(b".x").await, b"..x\r\n.\r\n");
        assert_eq!(written(b"").await, b".\r\n");
    }

    #[test]
    fn line_endings_are_made_crlf_across_pieces() {
        let encode = |pieces: &[&[u8]]| {
            let mut e = DataEncoder::new();
            let mut out = Vec::new();
            for p in pieces {
                e.encode(p, &mut out);
            }
            e.finish(&mut out);
            out
        };
        assert_eq!(encode(&[b"a\r\nb\r\n"]), b"a\r\nb\r\n.\r\n");
        assert_eq!(encode(&[b"a\nb\rc\r\n"]), b"a\r\nb\r\nc\r\n.\r\n");
        // CR LF split between pieces, and a dot at the start of the next piece.
        assert_eq!(encode(&[b"a\r", b"\n.b\r"]), b"a\r\n..b\r\n.\r\n");
        let big: Vec<u8> = b".line\r\n".repeat(50_000);
        let pieces: Vec<&[u8]> = big.chunks(4093).collect();
        let out = encode(&pieces);
        assert_eq!(out.len(), big.len() + 50_000 + 3);
    }
}
