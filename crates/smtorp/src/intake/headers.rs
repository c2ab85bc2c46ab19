//! The header fields smtorp writes (Received, Date, Message-ID, Return-Path, Delivered-To)
//! and small helpers to inspect the header section of a raw message.
//!
//! Privacy rule: what we add carries no IP address, no host name, no software name and no
//! local time zone: dates are always UTC (`+0000`).

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An RFC 5322 date in UTC, e.g. `Thu, 26 Nov 2026 22:14:48 +0000` (mail-parser's).
pub(crate) fn rfc5322_date(unix: u64) -> String {
    mail_parser::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(i64::MAX)).to_rfc822()
}

/// The client's EHLO name if it is a plain domain name (letters, digits, hyphens, dots),
/// else nothing: an address literal such as `[10.0.0.1]` or a bare IPv4 address is an IP
/// address, which our headers never carry.
fn helo_name(text: &str) -> Option<&str> {
    let name = text.split_whitespace().next()?;
    let plain = name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let numeric = name.chars().all(|c| c.is_ascii_digit() || c == '.');
    (plain && !numeric).then_some(name)
}

/// How a message reached us, for the `with` clause of Received.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via {
    /// SMTP from the onion side (or an `[smtp] listen` listener).
    Smtp,
    /// `smtorp sendmail` (maildrop pickup).
    Local,
}

/// Our Received header (CRLF-terminated, folded): `from <helo>` only for SMTP, never an
/// IP address or host name of ours, the date in UTC.
pub(crate) fn received(
    helo: Option<&str>,
    by: &str,
    via: Via,
    queue_id: &str,
    unix: u64,
) -> String {
    let from = match helo.and_then(helo_name) {
        Some(helo) => format!("from {helo} "),
        None => String::new(),
    };
    let with = match via {
        Via::Smtp => "with ESMTP ",
        Via::Local => "",
    };
    format!(
        "Received: {from}by {by} {with}id {queue_id};\r\n\t{}\r\n",
        rfc5322_date(unix)
    )
}

/// A fresh Message-ID value, `<32 hex digits@domain>`.
pub(crate) fn message_id(domain: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("<{}@{domain}>", data_encoding::HEXLOWER.encode(&bytes))
}

/// The header section of a raw message (up to and including the blank line), and the rest.
/// A message without a blank line is all header.
pub(crate) fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    let mut pos = 0;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(message.len());
        let line = &message[pos..end];
        if line == b"\r\n" || line == b"\n" {
            return (&message[..end], &message[end..]);
        }
        pos = end;
    }
    (message, &[])
}

/// Where the header section of a message ends (see [`header_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderEnd {
    /// Bytes of header fields (without the blank line).
    pub(crate) fields: usize,
    /// Where the body starts (after the blank line, if there was one).
    pub(crate) body: usize,
    /// True if a blank line separated header and body.
    pub(crate) blank_line: bool,
}

/// Finds the end of the header section at the start of `text`: the first blank line, or
/// the first line that is neither a header field nor a continuation (a message without a
/// header, or a malformed one: its body starts there). `None` while no complete line
/// decides it yet; with `complete` (all of the message is here) everything is header.
pub(crate) fn header_end(text: &[u8], complete: bool) -> Option<HeaderEnd> {
    let mut pos = 0;
    while let Some(i) = text[pos..].iter().position(|&b| b == b'\n') {
        let line = &text[pos..=pos + i];
        if line == b"\r\n" || line == b"\n" {
            return Some(HeaderEnd {
                fields: pos,
                body: pos + line.len(),
                blank_line: true,
            });
        }
        let continuation = pos > 0 && matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation && !is_field_line(line) {
            return Some(HeaderEnd {
                fields: pos,
                body: pos,
                blank_line: false,
            });
        }
        pos += i + 1;
    }
    complete.then_some(HeaderEnd {
        fields: text.len(),
        body: text.len(),
        blank_line: false,
    })
}

/// True if `line` starts a header field: a name of printable characters, then `:`.
pub(crate) fn is_field_line(line: &[u8]) -> bool {
    let name_len = line
        .iter()
        .position(|&b| !(33..=126).contains(&b) || b == b':')
        .unwrap_or(line.len());
    name_len > 0 && line.get(name_len) == Some(&b':')
}

/// The header fields of a header section as (name, raw field including continuation
/// lines and line ends), in order.
pub(crate) fn fields(header: &[u8]) -> Vec<(String, &[u8])> {
    let mut out: Vec<(String, &[u8])> = Vec::new();
    let mut start: Option<(String, usize)> = None;
    let mut pos = 0;
    while pos < header.len() {
        let end = header[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(header.len());
        let line = &header[pos..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            if let Some((name, s)) = start.take() {
                out.push((name, &header[s..pos]));
            }
            if line != b"\r\n" && line != b"\n" {
                let name = line
                    .iter()
                    .position(|&b| b == b':')
                    .map(|i| {
                        String::from_utf8_lossy(&line[..i])
                            .trim()
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default();
                start = Some((name, pos));
            }
        }
        pos = end;
    }
    if let Some((name, s)) = start {
        out.push((name, &header[s..]));
    }
    out
}

/// True if the header section has a field of this (lower-case) name.
pub(crate) fn has_field(header: &[u8], name: &str) -> bool {
    fields(header).iter().any(|(n, _)| n == name)
}

/// The message with every header field whose (lower-case) name is in `names` removed.
pub(crate) fn without_fields(message: &[u8], names: &[&str]) -> Vec<u8> {
    let (header, body) = split_header(message);
    let mut out = Vec::with_capacity(message.len());
    let kept = fields(header);
    let mut covered = 0;
    for (name, raw) in &kept {
        covered += raw.len();
        if !names.contains(&name.as_str()) {
            out.extend_from_slice(raw);
        }
    }
    out.extend_from_slice(&header[covered.min(header.len())..]);
    out.extend_from_slice(body);
    out
}

/// The header fields without any `Authentication-Results` field that speaks for us: one
/// whose authentication service (the text before its first `;`) names one of `ours` (lower
/// case). RFC 8601 5: a receiver removes such fields before adding its own, so that no peer
/// or local user can plant a "pass" in our name.
pub(crate) fn without_our_auth_results<'a>(
    header: &'a [u8],
    ours: &[String],
) -> std::borrow::Cow<'a, [u8]> {
    let claims_ours = |raw: &[u8]| {
        let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
        let value = text.split_once(':').map(|(_, v)| v).unwrap_or_default();
        let service = value.split(';').next().unwrap_or_default();
        ours.iter().any(|d| service.contains(d.as_str()))
    };
    let all = fields(header);
    if !all
        .iter()
        .any(|(name, raw)| name == "authentication-results" && claims_ours(raw))
    {
        return std::borrow::Cow::Borrowed(header);
    }
    let mut out = Vec::with_capacity(header.len());
    let mut covered = 0;
    for (name, raw) in &all {
        covered += raw.len();
        if !(name == "authentication-results" && claims_ours(raw)) {
            out.extend_from_slice(raw);
        }
    }
    out.extend_from_slice(&header[covered.min(header.len())..]);
    std::borrow::Cow::Owned(out)
}

/// Converts every line end to CRLF (bare LF becomes CRLF, a lone CR becomes CRLF) — for
/// messages from local programs, which write LF. (One of three line-ending converters, each
/// at its own edge: this one for local input, held whole by `sendmail`; the outbound DATA
/// encoder in smtorp-delivery, which also dot-stuffs and works piece by piece; the Maildir
/// writer, which goes the other way, CRLF to LF.)
pub(crate) fn to_crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 40);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.ends_with(b"\r\n") && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_authentication_results_are_removed() {
        let ours = vec!["b.onion".to_owned(), "mail.test".to_owned()];
        let header =
            b"Authentication-Results: B.onion; x-onion-auth=pass smtp.mailfrom=a.onion\r\n\
Subject: x\r\nAuthentication-Results:\r\n (c) mail.test;\r\n x-onion-auth=pass\r\n\
Authentication-Results: other.example; spf=pass\r\nauthentication-results : b.onion\r\n";
        let kept = without_our_auth_results(header, &ours);
        assert_eq!(
            String::from_utf8_lossy(&kept),
            "Subject: x\r\nAuthentication-Results: other.example; spf=pass\r\n"
        );
        let clean = b"Subject: y\r\n";
        assert!(matches!(
            without_our_auth_results(clean, &ours),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_731_288),
            "Thu, 26 Nov 2026 22:14:48 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        // Every date we write parses back to the same instant.
        for t in [0u64, 951_782_400, 1_795_731_288, 4_102_444_800] {
            let parsed = mail_parser::DateTime::parse_rfc822(&rfc5322_date(t)).unwrap();
            assert_eq!(parsed.to_timestamp(), t as i64);
        }
    }

    #[test]
    fn received_has_no_ip_or_software() {
        let r = received(
            Some("client.example"),
            "a.onion",
            Via::Smtp,
            "00000000000000AB",
            0,
        );
        assert_eq!(
            r,
            "Received: from client.example by a.onion with ESMTP id 00000000000000AB;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        for literal in ["[10.0.0.1]", "10.0.0.1", "[IPv6:::1]", "a(b)", "x;y"] {
            let r = received(Some(literal), "a.onion", Via::Smtp, "1", 0);
            assert!(
                r.starts_with("Received: by a.onion with ESMTP id 1;"),
                "{literal}: {r}"
            );
        }
        let r = received(None, "a.onion", Via::Local, "1", 0);
        assert!(r.starts_with("Received: by a.onion id 1;"));
    }

    #[test]
    fn header_fields_and_removal() {
        let m = b"From: a\r\nBcc: x,\r\n y\r\nTo: b\r\n\r\nBcc: body\r\n";
        let (h, b) = split_header(m);
        assert_eq!(b, b"Bcc: body\r\n");
        assert!(has_field(h, "bcc"));
        assert!(!has_field(h, "date"));
        assert_eq!(
            without_fields(m, &["bcc"]),
            b"From: a\r\nTo: b\r\n\r\nBcc: body\r\n"
        );
    }

    #[test]
    fn where_the_header_ends() {
        let end = |t: &[u8]| header_end(t, false);
        assert_eq!(
            end(b"A: 1\r\n b\r\n\r\nbody"),
            Some(HeaderEnd {
                fields: 10,
                body: 12,
                blank_line: true
            })
        );
        // Not decided until a whole line says so.
        assert_eq!(end(b"A: 1\r\nB: 2"), None);
        assert_eq!(end(b"A: 1\r\n"), None);
        // No header at all, or a line that is no field: the body starts there.
        assert_eq!(
            end(b"hello\r\n"),
            Some(HeaderEnd {
                fields: 0,
                body: 0,
                blank_line: false
            })
        );
        assert_eq!(
            end(b"A: 1\r\nnot a field\r\n"),
            Some(HeaderEnd {
                fields: 6,
                body: 6,
                blank_line: false
            })
        );
        assert_eq!(
            end(b"\r\nbody\r\n"),
            Some(HeaderEnd {
                fields: 0,
                body: 2,
                blank_line: true
            })
        );
        // All of the message is here: all of it is header.
        assert_eq!(
            header_end(b"A: 1\r\n", true),
            Some(HeaderEnd {
                fields: 6,
                body: 6,
                blank_line: false
            })
        );
    }

    #[test]
    fn crlf_conversion() {
        assert_eq!(to_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(to_crlf(b""), b"");
    }

    #[test]
    fn message_ids_are_random() {
        let a = message_id("x.onion");
        assert!(a.starts_with('<') && a.ends_with("@x.onion>"));
        assert_ne!(a, message_id("x.onion"));
    }
}
