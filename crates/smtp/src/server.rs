//! The thin async driver: runs a [`Session`] over any `AsyncRead + AsyncWrite` stream.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::reply::Reply;
use crate::session::{Policy, Session, Transaction};

/// Where finished transactions go (the binary's one enqueue function).
pub trait Handler: Send + Sync {
    /// Makes the transaction durable and returns its queue id, or the reply to give
    /// (451 4.3.0 on a store error). Must not return before the message is on stable storage.
    fn enqueue(&self, transaction: Transaction) -> impl Future<Output = Result<String, Reply>> + Send;
}

/// Runs `session` over `stream` until QUIT, an error limit, a timeout, EOF or `shutdown`
/// resolving. I/O errors end the session quietly (they are returned for logging).
pub async fn serve<S, P, H>(
    stream: S,
    session: Session<P>,
    handler: &H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Policy,
    H: Handler,
{
    let _ = (stream, session, handler, shutdown);
    unimplemented!()
}
