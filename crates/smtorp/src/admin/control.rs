//! The daemon's control socket (`<data_dir>/control.sock`, mode 0600): sled lets one process
//! open the queue, so while the daemon runs, the queue commands and `smtorp status` ask it
//! over this socket.
//!
//! Protocol: the client sends one JSON line, an [`admin::Request`](crate::admin::Request)
//! such as `{"command": "queue-list"}`; the daemon answers with one JSON line
//! (`{"ok": ...}` or `{"error": "..."}`) and closes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::admin::{Admin, Answer, Request};

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Response {
    /// It worked.
    Ok(Answer),
    /// What went wrong.
    Error(String),
}

/// Serves the control socket until shutdown.
pub(crate) async fn serve(
    path: PathBuf,
    admin: Arc<Admin>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("cannot create control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    info!(path = %path.display(), "control socket ready");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let admin = admin.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &admin).await {
                            warn!(error = %e, "control request failed");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "control socket accept failed"),
            },
            _ = crate::listen::stopped(&mut shutdown) => break,
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn answer(stream: UnixStream, admin: &Admin) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .take(64 * 1024)
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => match admin.execute(request).await {
            Ok(answer) => Response::Ok(answer),
            Err(e) => Response::Error(e),
        },
        Err(e) => Response::Error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await?;
    Ok(())
}

/// Asks a running daemon; `Ok(None)` if no daemon answers on `path`.
pub(crate) fn ask(path: &Path, request: &Request) -> anyhow::Result<Option<Answer>> {
    use std::io::{BufRead, Write};
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut out = serde_json::to_vec(request)?;
    out.push(b'\n');
    stream.write_all(&out)?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    match serde_json::from_str::<Response>(&line)? {
        Response::Ok(answer) => Ok(Some(answer)),
        Response::Error(e) => anyhow::bail!("{e}"),
    }
}
