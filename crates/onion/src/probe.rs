//! The self-probe: a connection to our own onion address through the Tor network, on a
//! circuit of its own, that reads the SMTP greeting and says QUIT. It is the real test of
//! reachability (descriptor published, introduction points up, rendezvous built); arti's
//! reported service state lags it by minutes on a young network.

use std::time::{Duration, Instant};

use arti_client::{IsolationToken, StreamPrefs};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::transport::OnionTransport;

/// The longest greeting line we read, and the most lines.
const MAX_LINE: usize = 1024;
const MAX_LINES: usize = 20;

/// What a successful probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// From the start of the connection to the end of the greeting.
    pub elapsed: Duration,
    /// The greeting's reply code: 220, or 421 when every session is busy (reachable all the
    /// same).
    pub code: u16,
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Tor is not ready (bootstrap or rebuild in progress), with arti's bootstrap status.
    #[error("Tor is not ready: {0}")]
    NoClient(String),
    /// The connection failed.
    #[error("connection failed: {0}")]
    Connect(String),
    /// Connected, but no proper SMTP greeting came.
    #[error("no SMTP greeting: {0}")]
    Greeting(String),
    /// Nothing within the time limit.
    #[error("timed out after {} s", .0.as_secs())]
    TimedOut(Duration),
}

impl OnionTransport {
    /// Connects to `address`:25 (our own) on a fresh isolation token, so that the probe
    /// shares no circuit and no cached descriptor with anything else; reads the greeting and
    /// says QUIT, all within `limit`.
    pub async fn probe(&self, address: &str, limit: Duration) -> Result<Probed, ProbeError> {
        let (status, ready) = self.bootstrap_status();
        let Some(client) = self.client() else {
            return Err(ProbeError::NoClient(status));
        };
        if !ready {
            return Err(ProbeError::NoClient(status));
        }
        let started = Instant::now();
        let attempt = async {
            let mut prefs = StreamPrefs::new();
            prefs.set_isolation(IsolationToken::new());
            let stream = client
                .connect_with_prefs((address, 25), &prefs)
                .await
                .map_err(|e| ProbeError::Connect(e.to_string()))?;
            greet_and_quit(stream).await.map_err(ProbeError::Greeting)
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(code)) => Ok(Probed {
                elapsed: started.elapsed(),
                code,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProbeError::TimedOut(limit)),
        }
    }
}

/// Reads an SMTP greeting (one or more lines, the last one `NNN text`), sends QUIT and reads
/// its answer if one comes. Returns the greeting's code; only 220 and 421 count.
pub(crate) async fn greet_and_quit<S>(mut stream: S) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = read_reply(&mut stream).await?;
    if code != 220 && code != 421 {
        return Err(format!("greeting with code {code}"));
    }
    // Reachability is proven; QUIT is politeness, and its answer is not awaited for long.
    if stream.write_all(b"QUIT\r\n").await.is_ok() && stream.flush().await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), read_reply(&mut stream)).await;
    }
    let _ = stream.shutdown().await;
    Ok(code)
}

/// One SMTP reply: its code.
async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S) -> Result<u16, String> {
    for _ in 0..MAX_LINES {
        let line = read_line(stream).await?;
        let code = line
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an SMTP reply: {:?}", truncate(&line)))?;
        match line.as_bytes().get(3) {
            Some(b'-') => continue,
            None | Some(b' ') => return Ok(code),
            Some(_) => return Err(format!("not an SMTP reply: {:?}", truncate(&line))),
        }
    }
    Err(format!("more than {MAX_LINES} lines"))
}

/// One line without its CRLF, read a byte at a time (the stream is read no further).
async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, String> {
    let mut line = Vec::new();
    loop {
        let byte = stream
            .read_u8()
            .await
            .map_err(|e| format!("closed after {} bytes: {e}", line.len()))?;
        if byte == b'\n' {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() >= MAX_LINE {
            return Err(format!("a line longer than {MAX_LINE} bytes"));
        }
        line.push(byte);
    }
}

fn truncate(line: &str) -> String {
    line.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{duplex, AsyncBufReadExt, BufReader};

    /// A server that writes `greeting`, then answers QUIT with 221 and records what it got.
    async fn serve(greeting: &'static [u8]) -> (Result<u16, String>, String) {
        let (client, server) = duplex(4096);
        let server = tokio::spawn(async move {
            let (read, mut write) = tokio::io::split(server);
            write.write_all(greeting).await.unwrap();
            let mut got = String::new();
            let _ = BufReader::new(read).read_line(&mut got).await;
            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            got
        });
        let result = greet_and_quit(client).await;
        (result, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_greeting_is_read_and_quit_is_said() {
        let (r, got) = serve(b"220 x.onion ESMTP\r\n").await;
        assert_eq!(r, Ok(220));
        assert_eq!(got, "QUIT\r\n");
        let (r, _) = serve(b"220-x.onion ESMTP\r\n220-more\r\n220 last\r\n").await;
        assert_eq!(r, Ok(220));
        // Busy is reachable too.
        let (r, _) = serve(b"421 4.3.2 busy\r\n").await;
        assert_eq!(r, Ok(421));
    }

    /// A server that writes `greeting` and closes.
    async fn greet_only(greeting: Vec<u8>) -> Result<u16, String> {
        let (client, mut server) = duplex(8192);
        tokio::spawn(async move {
            let _ = server.write_all(&greeting).await;
        });
        greet_and_quit(client).await
    }

    #[tokio::test]
    async fn anything_else_is_a_failure() {
        assert!(greet_only(b"554 go away\r\n".to_vec()).await.is_err());
        assert!(greet_only(b"HTTP/1.1 400 Bad\r\n".to_vec()).await.is_err());
        assert!(greet_only(Vec::new()).await.unwrap_err().contains("closed"));
        assert!(greet_only(vec![b'2'; 5000])
            .await
            .unwrap_err()
            .contains("longer"));
    }
}
