//! The submission socket `<data_dir>/submit.sock`: while the daemon runs, `smtorp sendmail`
//! hands messages over it. The kernel says who is on the other end (`SO_PEERCRED`); the
//! message is queued durably before the answer, so `sendmail` exits 0 exactly when the
//! message is safe. At most [`MAX_CLIENTS`] submissions run at once; each must keep sending
//! ([`IDLE`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use super::{read_request, submit, Answer};
use crate::intake::Intake;
use crate::policy::{Directory, Submitter};

/// Submissions handled at once; more wait.
pub(crate) const MAX_CLIENTS: usize = 32;
/// How long a client may stay silent while sending.
pub(crate) const IDLE: Duration = Duration::from_secs(60);

/// Binds the socket (replacing a stale one), mode 0666: every local user may submit; who
/// they are is checked per connection.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// A reader that gives up after [`IDLE`] without data.
struct Idle<R> {
    inner: R,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Idle<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = &mut *self;
        match std::pin::Pin::new(&mut me.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(r) => {
                me.sleep.as_mut().reset(tokio::time::Instant::now() + IDLE);
                std::task::Poll::Ready(r)
            }
            std::task::Poll::Pending => match me.sleep.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped sending",
                ))),
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
        }
    }
}

use std::future::Future;

/// Serves the socket until shutdown.
pub(crate) async fn serve(
    path: PathBuf,
    intake: Arc<Intake>,
    directory: Arc<Directory>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot open the submission socket; sendmail uses the maildrop");
            return;
        }
    };
    info!(path = %path.display(), "submission socket ready");
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (intake, directory) = (intake.clone(), directory.clone());
                tasks.spawn(async move {
                    one(stream, &intake, &directory).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = crate::listen::stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
    // Submissions under way finish (each is bounded by IDLE and the queue's limits).
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// One submission.
async fn one(stream: UnixStream, intake: &Arc<Intake>, directory: &Directory) {
    let uid = match getsockopt(&stream, PeerCredentials) {
        Ok(cred) => cred.uid(),
        Err(e) => {
            warn!(error = %e, "cannot tell who is on the submission socket");
            return;
        }
    };
    let submitter = Submitter::from_uid(uid, &directory.settings().config.local.trusted_submitters);
    let (reader, mut writer) = stream.into_split();
    let mut reader = Idle {
        inner: reader,
        sleep: Box::pin(tokio::time::sleep(IDLE)),
    };
    let answer = match read_request(&mut reader, "").await {
        Err(why) => Answer::Refused(format!("554 5.6.0 {why}")),
        Ok((request, head)) => {
            match submit(intake, directory, &submitter, &request, head, &mut reader).await {
                Ok(Some(id)) => Answer::Queued(id.to_string()),
                Ok(None) => Answer::Queued("(queued before)".into()),
                Err(e) => Answer::from_error(&e),
            }
        }
    };
    debug!(submitter = %submitter.label(), ?answer, "local submission answered");
    let mut line = serde_json::to_vec(&answer).unwrap_or_default();
    line.push(b'\n');
    let _ = writer.write_all(&line).await;
    let _ = writer.shutdown().await;
}
