//! Privacy hygiene of submitted mail: the one function both submission paths (`smtorp
//! sendmail` and the submission port) run on a message before it is queued, as configured
//! in `[privacy]` (docs/privacy.md, "Submitted mail"):
//!
//! 1. remove the header fields named in `strip_headers` (by default `User-Agent`,
//!    `X-Mailer`, `X-Originating-IP` and every `Received` the client added);
//! 2. rewrite a `Date` given in a local time zone to the same instant in UTC (`+0000`)
//!    (`rewrite_date_to_utc`);
//! 3. add what is missing: `From` (the envelope sender), `Date` in UTC (`add_date`) and
//!    `Message-ID <random@our domain>` (`add_message_id`).
//!
//! Mail arriving from other onion servers is never changed (only our Received is added).

use crate::config::PrivacyConfig;
use crate::intake::headers;

/// Applies the whole hygiene to a submitted message (CRLF line endings): strip, rewrite the
/// date, complete the header. `sender` is the envelope sender (empty for `<>`), `domain` our
/// primary domain (for Message-ID).
pub(crate) fn clean_submitted(
    message: &[u8],
    sender: &str,
    domain: &str,
    privacy: &PrivacyConfig,
) -> Vec<u8> {
    let names: Vec<String> = privacy
        .strip_headers
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let names: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    let mut message = if names.is_empty() {
        message.to_vec()
    } else {
        headers::without_fields(message, &names)
    };
    if privacy.rewrite_date_to_utc {
        message = date_to_utc(&message);
    }
    complete_header(&message, sender, domain, privacy)
}

/// Rewrites every `Date` field whose zone is not UTC to the same instant in UTC. A date that
/// cannot be parsed is left as it is.
pub(crate) fn date_to_utc(message: &[u8]) -> Vec<u8> {
    let (header, body) = headers::split_header(message);
    let fields = headers::fields(header);
    if !fields.iter().any(|(name, _)| name == "date") {
        return message.to_vec();
    }
    let mut out = Vec::with_capacity(message.len());
    let mut covered = 0;
    for (name, raw) in &fields {
        covered += raw.len();
        match (name == "date").then(|| utc_date(raw)).flatten() {
            Some(date) => out.extend_from_slice(format!("Date: {date}\r\n").as_bytes()),
            None => out.extend_from_slice(raw),
        }
    }
    out.extend_from_slice(&header[covered.min(header.len())..]);
    out.extend_from_slice(body);
    out
}

/// The UTC form of a raw `Date:` field, if it is in another zone and parses.
fn utc_date(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let value = text.split_once(':')?.1;
    let value = value.replace(['\r', '\n'], " ");
    let date = mail_parser::DateTime::parse_rfc822(value.trim())?;
    if date.tz_hour == 0 && date.tz_minute == 0 {
        return None;
    }
    let unix = u64::try_from(date.to_timestamp()).ok()?;
    Some(headers::rfc5322_date(unix))
}

/// Adds what submitted mail lacks: From, Date (UTC), Message-ID; as configured in
/// `[privacy]`.
pub(crate) fn complete_header(
    message: &[u8],
    sender: &str,
    domain: &str,
    privacy: &PrivacyConfig,
) -> Vec<u8> {
    let (header, _) = headers::split_header(message);
    let mut added = String::new();
    if !headers::has_field(header, "from") && !sender.is_empty() {
        added.push_str(&format!("From: <{sender}>\r\n"));
    }
    if privacy.add_date && !headers::has_field(header, "date") {
        added.push_str(&format!(
            "Date: {}\r\n",
            headers::rfc5322_date(headers::unix_now())
        ));
    }
    if privacy.add_message_id && !headers::has_field(header, "message-id") {
        added.push_str(&format!("Message-ID: {}\r\n", headers::message_id(domain)));
    }
    let mut out = Vec::with_capacity(added.len() + message.len() + 2);
    out.extend_from_slice(added.as_bytes());
    if !added.is_empty() && !message.starts_with(b"\r\n") && !starts_with_field(message) {
        // No header at all: the whole input is body, so end our header first.
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(message);
    out
}

/// True if the first line is a header field (`name:` with printable name characters).
fn starts_with_field(message: &[u8]) -> bool {
    headers::is_field_line(message)
}

/// [`clean_submitted`] for a header section alone (its fields, without the blank line):
/// returns the cleaned fields, without a blank line.
pub(crate) fn clean_header(
    fields: &[u8],
    sender: &str,
    domain: &str,
    privacy: &PrivacyConfig,
) -> Vec<u8> {
    let mut section = Vec::with_capacity(fields.len() + 2);
    section.extend_from_slice(fields);
    section.extend_from_slice(b"\r\n");
    let mut cleaned = clean_submitted(&section, sender, domain, privacy);
    if cleaned.ends_with(b"\r\n") {
        cleaned.truncate(cleaned.len() - 2);
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(m: &str) -> String {
        String::from_utf8(clean_submitted(
            m.as_bytes(),
            "a@b.onion",
            "b.onion",
            &PrivacyConfig::default(),
        ))
        .unwrap()
    }

    #[test]
    fn strips_client_fields_and_received() {
        let out = clean(
            "Received: from laptop (192.168.1.5)\r\n\tby x; Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a@b.onion\r\n\
             User-Agent: Mozilla/5.0 Thunderbird/128\r\nx-mailer: mutt\r\nX-Originating-IP: [10.1.2.3]\r\n\
             Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@b.onion>\r\nSubject: hi\r\n\r\n\
             User-Agent: in the body stays\r\n",
        );
        assert_eq!(
            out,
            "From: a@b.onion\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@b.onion>\r\nSubject: hi\r\n\r\n\
             User-Agent: in the body stays\r\n"
        );
    }

    #[test]
    fn local_dates_become_utc() {
        let out = clean(
            "Date: Tue, 2 Jan 2024 01:30:00 +0200\r\nMessage-ID: <1@b>\r\nFrom: x\r\n\r\nb\r\n",
        );
        assert!(
            out.starts_with("Date: Mon, 1 Jan 2024 23:30:00 +0000\r\n"),
            "{out}"
        );
        let out = clean(
            "Date: Mon, 1 Jan 2024 20:00:00 -0530\r\nMessage-ID: <1@b>\r\nFrom: x\r\n\r\nb\r\n",
        );
        assert!(
            out.starts_with("Date: Tue, 2 Jan 2024 01:30:00 +0000\r\n"),
            "{out}"
        );
        // UTC and unparsable dates are kept as they are.
        let kept =
            "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@b>\r\nFrom: x\r\n\r\nb\r\n";
        assert_eq!(clean(kept), kept);
        let odd = "Date: sometime\r\nMessage-ID: <1@b>\r\nFrom: x\r\n\r\nb\r\n";
        assert_eq!(clean(odd), odd);
    }

    #[test]
    fn can_be_turned_off() {
        let p = PrivacyConfig {
            add_date: false,
            add_message_id: false,
            rewrite_date_to_utc: false,
            strip_headers: Vec::new(),
        };
        let m = "From: x\r\nUser-Agent: u\r\nDate: Tue, 2 Jan 2024 01:30:00 +0200\r\n\r\nb\r\n";
        assert_eq!(
            clean_submitted(m.as_bytes(), "a@b.onion", "b.onion", &p),
            m.as_bytes()
        );
    }

    #[test]
    fn header_completion() {
        let p = PrivacyConfig::default();
        let out = complete_header(b"Subject: x\r\n\r\nbody\r\n", "a@b.onion", "b.onion", &p);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("From: <a@b.onion>\r\nDate: "), "{text}");
        assert!(text.contains(" +0000\r\nMessage-ID: <"), "{text}");
        assert!(
            text.ends_with("@b.onion>\r\nSubject: x\r\n\r\nbody\r\n"),
            "{text}"
        );
        let bare = complete_header(b"just text\r\n", "a@b.onion", "b.onion", &p);
        assert!(bare.ends_with(b">\r\n\r\njust text\r\n"));
        let kept = complete_header(
            b"From: x@b.onion\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@b>\r\n\r\nb\r\n",
            "a@b.onion",
            "b.onion",
            &p,
        );
        assert!(
            kept.starts_with(b"From: x@b.onion\r\nDate: Mon"),
            "fields present are kept as they are"
        );
    }
}
