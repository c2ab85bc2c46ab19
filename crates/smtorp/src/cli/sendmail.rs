//! `smtorp sendmail`: the sendmail-compatible command local programs (mutt, cron, scripts)
//! submit with. It checks the recipients at once, applies the privacy hygiene of submitted
//! mail (crate::intake::privacy: strips client fields, Date in UTC, From, Message-ID) and writes the
//! message into the maildrop; it works whether or not the daemon
//! runs and needs no socket.
//!
//! Supported: recipients as arguments, `-t` (recipients from To/Cc/Bcc; Bcc is removed),
//! `-i`/`-oi` (a lone `.` does not end the message), `-f`/`-r sender` (`-f '<>'` for the
//! null sender). Other classic options (`-oem`, `-odi`, `-F`, `-v`, `-B`, `-N`, ...) are
//! accepted and ignored, as Postfix does.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::time::Duration;

use smtorp_smtp::Address;

use crate::intake::headers;
use crate::local::{self, maildrop, Answer, Request};
use crate::policy::{self, Directory, Side};

/// sysexits.h codes sendmail callers understand.
pub(crate) mod exit {
    /// Command line usage error.
    pub(crate) const USAGE: i32 = 64;
    /// The message or an address is malformed.
    pub(crate) const DATAERR: i32 = 65;
    /// An addressee is unknown or not deliverable by us.
    pub(crate) const NOUSER: i32 = 67;
    /// Cannot write to the maildrop.
    pub(crate) const CANTCREAT: i32 = 73;
    /// Try again later (the daemon said so: a full disk, an unavailable queue).
    pub(crate) const TEMPFAIL: i32 = 75;
    /// Not allowed (this user may not submit, or not with this sender).
    pub(crate) const NOPERM: i32 = 77;
}

/// A failure with the exit code sendmail callers expect.
#[derive(Debug)]
pub(crate) struct SendmailError {
    /// The sysexits code.
    pub(crate) code: i32,
    /// What to print.
    pub(crate) message: String,
}

fn fail(code: i32, message: impl Into<String>) -> SendmailError {
    SendmailError {
        code,
        message: message.into(),
    }
}

/// Parsed sendmail options.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// `-f`/`-r`: the envelope sender (`Some("")` for `<>`).
    pub(crate) from: Option<String>,
    /// `-t`: take recipients from the header.
    pub(crate) recipients_from_header: bool,
    /// `-i`/`-oi`: a line with a single dot does not end the input.
    pub(crate) ignore_dots: bool,
    /// Recipients given as arguments.
    pub(crate) recipients: Vec<String>,
}

/// Parses sendmail's command line (without the program name).
pub(crate) fn parse_args(args: &[String]) -> Result<Options, SendmailError> {
    let mut options = Options::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            options.recipients.extend(iter.by_ref().cloned());
            break;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            options.recipients.push(arg.clone());
            continue;
        };
        match flags.as_bytes()[0] {
            b'f' | b'r' => {
                let value = if flags.len() > 1 {
                    flags[1..].to_owned()
                } else {
                    iter.next()
                        .cloned()
                        .ok_or_else(|| fail(exit::USAGE, "-f needs a sender"))?
                };
                let value = value.trim();
                let value = value
                    .strip_prefix('<')
                    .and_then(|v| v.strip_suffix('>'))
                    .unwrap_or(value);
                options.from = Some(value.to_owned());
            }
            b'F' | b'B' | b'N' | b'V' | b'R' | b'X' | b'h' | b'L' | b'p' | b'q' => {
                // Options with a value we ignore (full name, body type, DSN, ...).
                if flags.len() == 1 {
                    iter.next();
                }
            }
            b'o' => {
                if flags == "oi" {
                    options.ignore_dots = true;
                }
                // -oem, -odi, -oQ... : accepted and ignored.
            }
            b'b' => match flags {
                "bm" => {}
                _ => {
                    return Err(fail(
                        exit::USAGE,
                        format!("-{flags} is not supported (only -bm)"),
                    ))
                }
            },
            _ => {
                for flag in flags.chars() {
                    match flag {
                        't' => options.recipients_from_header = true,
                        'i' => options.ignore_dots = true,
                        'v' | 'm' | 'n' | 'U' | 'G' => {}
                        other => {
                            return Err(fail(exit::USAGE, format!("unknown option -{other}")));
                        }
                    }
                }
            }
        }
    }
    Ok(options)
}

/// Reads the message from `input`: up to EOF, or up to a line with a single `.` unless
/// `ignore_dots`.
pub(crate) fn read_message(mut input: impl BufRead, ignore_dots: bool) -> std::io::Result<Vec<u8>> {
    let mut message = Vec::new();
    if ignore_dots {
        input.read_to_end(&mut message)?;
        return Ok(message);
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line == b".\n" || line == b".\r\n" || line == b"." {
            break;
        }
        message.extend_from_slice(&line);
    }
    Ok(message)
}

/// Addresses in the To, Cc and Bcc fields of a message.
fn header_recipients(message: &[u8]) -> Vec<String> {
    let Some(parsed) = mail_parser::MessageParser::default().parse_headers(message) else {
        return Vec::new();
    };
    [parsed.to(), parsed.cc(), parsed.bcc()]
        .into_iter()
        .flatten()
        .flat_map(|list| list.iter().filter_map(|a| a.address().map(str::to_owned)))
        .collect()
}

/// Checks one recipient; unqualified names get our primary domain.
fn check_recipient(directory: &Directory, rcpt: &str) -> Result<String, SendmailError> {
    let rcpt = rcpt.trim();
    let rcpt = rcpt
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(rcpt);
    let full = if rcpt.contains('@') {
        rcpt.to_owned()
    } else {
        format!("{rcpt}@{}", directory.primary_domain())
    };
    let address =
        Address::parse(&full, true).map_err(|e| fail(exit::DATAERR, format!("{full}: {e}")))?;
    policy::check(&directory.classify(&address), Side::Submission)
        .map_err(|reply| fail(exit::NOUSER, format!("{full}: {}", reply.text)))?;
    Ok(address.to_string())
}

/// How the daemon answered, as the caller's exit status.
fn exit_of(answer: Answer) -> Result<String, SendmailError> {
    match answer {
        Answer::Queued(id) => Ok(id),
        Answer::Deferred(text) => Err(fail(exit::TEMPFAIL, text)),
        Answer::Refused(text) if text.starts_with("553") => Err(fail(exit::NOPERM, text)),
        Answer::Refused(text) if text.starts_with("550") => Err(fail(exit::NOUSER, text)),
        Answer::Refused(text) => Err(fail(exit::DATAERR, text)),
    }
}

/// Hands the message to the daemon over `socket`. `Ok(None)`: no daemon listens (or the
/// answer was lost): the caller writes the maildrop file instead, with the same token.
fn via_socket(
    socket: &Path,
    request: &Request,
    message: &[u8],
) -> Result<Option<String>, SendmailError> {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return Ok(None);
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
    // A write error may mean the daemon refused early: read its answer all the same.
    let _ = stream
        .write_all(&local::request_lines(request))
        .and_then(|()| stream.write_all(message))
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write));
    let mut line = Vec::new();
    let _ = std::io::BufReader::new(&mut stream)
        .take(64 * 1024)
        .read_until(b'\n', &mut line);
    match serde_json::from_slice::<Answer>(&line) {
        Ok(answer) => exit_of(answer).map(Some),
        // No answer: the daemon went away. The maildrop file carries the same token, so
        // the message is queued once whatever happened.
        Err(_) => Ok(None),
    }
}

/// The whole command: parse, read stdin, check, hand over (socket, else maildrop). Returns
/// the queue id, or the path of the maildrop file.
pub(crate) fn run(
    args: &[String],
    directory: &Directory,
    submit_socket: &Path,
    maildrop_dir: &Path,
    stdin: impl BufRead,
) -> Result<String, SendmailError> {
    let options = parse_args(args)?;
    let raw = read_message(stdin, options.ignore_dots)
        .map_err(|e| fail(exit::DATAERR, format!("cannot read the message: {e}")))?;
    let mut message = headers::to_crlf(&raw);
    let mut wanted = options.recipients.clone();
    if options.recipients_from_header {
        let (header, _) = headers::split_header(&message);
        wanted.extend(header_recipients(header));
        message = headers::without_fields(&message, &["bcc"]);
    }
    if wanted.is_empty() {
        return Err(fail(
            exit::USAGE,
            "no recipients given (use arguments or -t)",
        ));
    }
    let mut recipients: Vec<String> = Vec::new();
    for rcpt in wanted
        .iter()
        .flat_map(|r| r.split(','))
        .filter(|r| !r.trim().is_empty())
    {
        let checked = check_recipient(directory, rcpt)?;
        if !recipients.contains(&checked) {
            recipients.push(checked);
        }
    }
    let sender = match options.from {
        Some(from) if from.is_empty() => Some(String::new()),
        Some(from) if from.contains('@') => Some(from),
        Some(from) => Some(format!("{from}@{}", directory.primary_domain())),
        None => None,
    };
    if let Some(sender) = sender.as_deref().filter(|s| !s.is_empty()) {
        Address::parse(sender, true)
            .map_err(|e| fail(exit::DATAERR, format!("sender {sender}: {e}")))?;
    }
    let request = Request {
        sender,
        recipients,
        token: local::new_token(),
    };
    if let Some(id) = via_socket(submit_socket, &request, &message)? {
        return Ok(id);
    }
    maildrop::write(maildrop_dir, &request, &message)
        .map(|path| path.display().to_string())
        .map_err(|e| {
            fail(
                exit::CANTCREAT,
                format!(
                    "cannot write to the maildrop {}: {e}",
                    maildrop_dir.display()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classic_command_lines() {
        let o = parse_args(&args(&["-oi", "-t"])).unwrap();
        assert!(o.ignore_dots && o.recipients_from_header);
        let o = parse_args(&args(&[
            "-oem",
            "-oi",
            "-f",
            "a@b.onion",
            "--",
            "x@y.onion",
        ]))
        .unwrap();
        assert_eq!(o.from.as_deref(), Some("a@b.onion"));
        assert_eq!(o.recipients, vec!["x@y.onion"]);
        let o = parse_args(&args(&["-fa@b.onion", "-F", "Alice", "-ti", "bob"])).unwrap();
        assert_eq!(o.from.as_deref(), Some("a@b.onion"));
        assert_eq!(o.recipients, vec!["bob"]);
        assert!(o.ignore_dots);
        let o = parse_args(&args(&["-f", "<>", "bob"])).unwrap();
        assert_eq!(o.from.as_deref(), Some(""));
        assert_eq!(parse_args(&args(&["-bp"])).unwrap_err().code, exit::USAGE);
        assert_eq!(parse_args(&args(&["-Z"])).unwrap_err().code, exit::USAGE);
    }

    #[test]
    fn dot_ends_input_unless_i() {
        let input = b"Subject: x\n\nbody\n.\nafter\n";
        assert_eq!(
            read_message(&input[..], false).unwrap(),
            b"Subject: x\n\nbody\n"
        );
        assert_eq!(read_message(&input[..], true).unwrap(), input.to_vec());
    }

    #[test]
    fn recipients_from_header() {
        let m = b"To: Alice <alice@a.onion>, bob@b.onion\r\nCc: c@c.onion\r\nBcc: d@d.onion\r\n\r\nhi\r\n";
        let r = header_recipients(headers::split_header(m).0);
        assert_eq!(
            r,
            vec!["alice@a.onion", "bob@b.onion", "c@c.onion", "d@d.onion"]
        );
    }
}
