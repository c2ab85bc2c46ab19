//! Readiness of the network: fetching the microdescriptor consensus from an authority's
//! DirPort with a raw HTTP/1.0 GET (no HTTP client, no DNS) and counting its relays.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::TornetError;

/// The path of the current microdescriptor consensus on a DirPort.
pub const CONSENSUS_PATH: &str = "/tor/status-vote/current/consensus-microdesc";

/// What a consensus says about the relays, as counted by [`summarize`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsensusSummary {
    /// Number of `r ` lines: relays listed.
    pub relays: usize,
    /// Relays whose `s ` line has the `HSDir` flag.
    pub hsdirs: usize,
    /// Relays whose `s ` line has the `Guard` flag.
    pub guards: usize,
}

impl ConsensusSummary {
    /// True when the consensus lists `n` relays, all of them HSDirs.
    pub fn is_ready(&self, n: usize) -> bool {
        self.relays >= n && self.hsdirs >= n
    }
}

impl fmt::Display for ConsensusSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} relays, {} HSDir, {} Guard",
            self.relays, self.hsdirs, self.guards
        )
    }
}

/// Counts the relays of a consensus document (any flavor): `r ` lines, and the flags of the
/// `s ` line that follows each.
pub fn summarize(consensus: &str) -> ConsensusSummary {
    let mut s = ConsensusSummary::default();
    for line in consensus.lines() {
        if line.starts_with("r ") {
            s.relays += 1;
        } else if let Some(flags) = line.strip_prefix("s ") {
            let flags: Vec<&str> = flags.split_ascii_whitespace().collect();
            if flags.contains(&"HSDir") {
                s.hsdirs += 1;
            }
            if flags.contains(&"Guard") {
                s.guards += 1;
            }
        }
    }
    s
}

/// Splits a raw HTTP/1.0 response into status code and body.
pub(crate) fn parse_http_response(raw: &[u8]) -> Option<(u16, &[u8])> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let status_line = head.lines().next()?;
    let code = status_line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some((code, &raw[head_end + 4..]))
}

/// GETs `path` from `127.0.0.1:port` with HTTP/1.0 and returns the body of a 200 answer.
pub async fn http_get_local(
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<String, TornetError> {
    let fetch = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        let (code, body) =
            parse_http_response(&raw).ok_or_else(|| "malformed HTTP response".to_owned())?;
        if code != 200 {
            return Err(format!("HTTP status {code}"));
        }
        Ok(String::from_utf8_lossy(body).into_owned())
    };
    match tokio::time::timeout(timeout, fetch).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(message)) => Err(TornetError::Fetch { port, message }),
        Err(_) => Err(TornetError::Fetch {
            port,
            message: format!("no answer within {timeout:?}"),
        }),
    }
}

/// Fetches the current microdescriptor consensus from the DirPort `port` and summarizes it.
pub async fn fetch_summary(port: u16) -> Result<ConsensusSummary, TornetError> {
    let body = http_get_local(port, CONSENSUS_PATH, Duration::from_secs(5)).await?;
    Ok(summarize(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "network-status-version 3 microdesc
vote-status consensus
valid-after 2026-11-26 22:21:40
r auth0 ABCDEFGHIJKLMNOPQRSTUVWXYZa 2026-11-26 22:21:13 127.0.0.1 7000 7001
m sha256=abc
s Authority Fast Guard HSDir Running Stable V2Dir Valid
w Bandwidth=0 Unmeasured=1
r relay0 BBCDEFGHIJKLMNOPQRSTUVWXYZa 2026-11-26 22:21:13 127.0.0.1 7100 7101
m sha256=def
s Fast Guard HSDir Running Stable V2Dir Valid
r relay1 CBCDEFGHIJKLMNOPQRSTUVWXYZa 2026-11-26 22:21:13 127.0.0.1 7110 7111
m sha256=ghi
s Fast Running Valid
directory-footer
";

    #[test]
    fn counts_relays_and_flags() {
        let s = summarize(SAMPLE);
        assert_eq!(
            s,
            ConsensusSummary {
                relays: 3,
                hsdirs: 2,
                guards: 2
            }
        );
        assert!(!s.is_ready(3));
        assert!(s.is_ready(2));
        assert_eq!(summarize(""), ConsensusSummary::default());
        // "HSDirV3"-like or substring matches do not count.
        assert_eq!(summarize("r x\ns Fast NotHSDir\n").hsdirs, 0);
    }

    #[test]
    fn parses_http_responses() {
        let (code, body) =
            parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nr a\n")
                .unwrap();
        assert_eq!((code, body), (200, &b"r a\n"[..]));
        let (code, _) = parse_http_response(b"HTTP/1.0 404 Not found\r\n\r\n").unwrap();
        assert_eq!(code, 404);
        assert!(parse_http_response(b"garbage").is_none());
    }

    #[tokio::test]
    async fn fetches_from_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = SAMPLE;
            s.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{body}").as_bytes())
                .await
                .unwrap();
            req
        });
        let s = fetch_summary(port).await.unwrap();
        assert_eq!(s.relays, 3);
        let req = server.await.unwrap();
        assert!(
            req.starts_with(&format!("GET {CONSENSUS_PATH} HTTP/1.0\r\n")),
            "{req}"
        );
    }
}
