//! The thin async driver: runs a [`Session`] over any `AsyncRead + AsyncWrite` stream.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::reply::Reply;
use crate::session::{Policy, Session, Step, Transaction};

/// Size of the read buffer: one read never adds more than this to the session's input.
const READ_BUFFER: usize = 8 * 1024;

/// Where finished transactions go (the binary's one enqueue function).
pub trait Handler: Send + Sync {
    /// Makes the transaction durable and returns its queue id, or the reply to give
    /// (451 4.3.0 on a store error). Must not return before the message is on stable storage.
    fn enqueue(
        &self,
        transaction: Transaction,
    ) -> impl Future<Output = Result<String, Reply>> + Send;
}

/// Runs `session` over `stream` until QUIT, an error limit, a timeout, EOF or `shutdown`
/// resolving. I/O errors end the session quietly (they are returned for logging).
pub async fn serve<S, P, H>(
    mut stream: S,
    mut session: Session<P>,
    handler: &H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Policy,
    H: Handler,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutdown_seen = false;
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        match session.step() {
            Step::NeedInput => {
                write_output(&mut stream, &mut session).await?;
                let idle = session.timeout();
                tokio::select! {
                    biased;
                    () = &mut shutdown, if !shutdown_seen => {
                        shutdown_seen = true;
                        session.shutting_down();
                    }
                    read = tokio::time::timeout(idle, stream.read(&mut buf)) => match read {
                        Err(_elapsed) => session.timed_out(),
                        Ok(Ok(0)) => {
                            tracing::debug!("client closed the connection");
                            return Ok(());
                        }
                        Ok(Ok(n)) => session.receive(buf.get(..n).unwrap_or_default()),
                        Ok(Err(error)) => return Err(error),
                    },
                }
            }
            Step::Enqueue(transaction) => {
                // Never raced against shutdown: an enqueue always runs to completion.
                let outcome = handler.enqueue(transaction).await;
                session.enqueued(outcome);
            }
            Step::Close => {
                write_output(&mut stream, &mut session).await?;
                // The peer may already be gone; nothing more to say either way.
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// Writes the pending output, bounded by the session's idle timeout (a client that never
/// reads cannot hold us forever).
async fn write_output<S, P>(stream: &mut S, session: &mut Session<P>) -> std::io::Result<()>
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
    match tokio::time::timeout(session.timeout(), write).await {
        Ok(result) => result,
        Err(_elapsed) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
    use tokio::sync::{oneshot, Notify};

    use super::*;
    use crate::session::SessionConfig;
    use crate::test_support::{config, TestPolicy, DOMAIN};

    /// Records transactions; optionally waits for a go-ahead before answering.
    #[derive(Default)]
    struct TestHandler {
        got: Mutex<Vec<Transaction>>,
        started: Notify,
        gate: Option<Arc<Notify>>,
    }

    impl Handler for TestHandler {
        async fn enqueue(&self, transaction: Transaction) -> Result<String, Reply> {
            self.started.notify_one();
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            let mut got = self.got.lock().unwrap();
            got.push(transaction);
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
            serve(server, session, &*handler, shutdown).await
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
            vec![Transaction {
                helo: "client.example".into(),
                sender: "carol@example.org".into(),
                recipients: vec![format!("alice@{}", *DOMAIN)],
                data: b"Subject: test\r\n\r\n.dot\r\n".to_vec(),
            }]
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
        );
        assert_send(&fut);
    }
}
