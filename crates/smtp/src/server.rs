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
    fn enqueue(&self, transaction: Transaction) -> impl Future<Output = Result<String, Reply>> + Send;
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
        Err(_elapsed) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")),
    }
}
