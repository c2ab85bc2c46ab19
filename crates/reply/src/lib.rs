//! SMTP replies with enhanced status codes, formatted with smtp-proto.
#![doc = include_str!("../README.md")]

use serde::{Deserialize, Serialize};

/// One SMTP reply: basic code, enhanced status code (RFC 3463), text.
///
/// An `enhanced` of `[0, 0, 0]` means "no enhanced status code" (used for the banner, the
/// HELO reply and 354, where RFC 2034 does not call for one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reply {
    /// The three-digit code, e.g. 250.
    pub code: u16,
    /// The enhanced status code, e.g. `[2, 1, 0]`.
    pub enhanced: [u8; 3],
    /// The human text (one line, no CR or LF).
    pub text: String,
}

impl Reply {
    /// A reply from its parts.
    pub fn new(code: u16, enhanced: [u8; 3], text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (banner, HELO, 354).
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply::new(code, [0, 0, 0], text)
    }

    /// True for 4xx.
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// True for 4xx and 5xx.
    pub fn is_error(&self) -> bool {
        self.is_temporary() || self.is_permanent()
    }

    /// The enhanced status code as text (`"5.1.1"`), or the class alone (`"5.0.0"`) when
    /// the reply has none.
    pub fn status(&self) -> String {
        match self.enhanced {
            [0, 0, 0] => format!("{}.0.0", (self.code / 100).clamp(2, 5)),
            [a, b, c] => format!("{a}.{b}.{c}"),
        }
    }

    /// The same reply with `prefix` before its text (e.g. who gave it).
    pub fn context(mut self, prefix: impl std::fmt::Display) -> Reply {
        self.text = format!("{prefix}: {}", self.text);
        self
    }

    /// The wire form, `"250 2.1.0 text\r\n"`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        self.write_to(&mut out);
        out
    }

    /// Appends the wire form to `out`. Control characters in the text (which must never
    /// reach the wire: they could forge extra reply lines) are replaced by `?`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let text: String = self
            .text
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let code = self.code.clamp(100, 999);
        if self.enhanced == [0, 0, 0] {
            out.extend_from_slice(code.to_string().as_bytes());
            out.push(b' ');
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        } else {
            let [a, b, c] = self.enhanced;
            // Writing into a Vec cannot fail.
            let _ = smtp_proto::Response::new(code, a, b, c, text).write(&mut *out);
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.enhanced == [0, 0, 0] {
            return write!(f, "{} {}", self.code, self.text);
        }
        let [a, b, c] = self.enhanced;
        write!(f, "{} {}.{}.{} {}", self.code, a, b, c, self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        assert_eq!(
            Reply::new(250, [2, 1, 0], "Ok").to_bytes(),
            b"250 2.1.0 Ok\r\n"
        );
        assert_eq!(
            Reply::new(552, [5, 3, 4], "too big").to_string(),
            "552 5.3.4 too big"
        );
        assert_eq!(Reply::plain(354, "go").to_bytes(), b"354 go\r\n");
        assert_eq!(Reply::plain(354, "go").to_string(), "354 go");
        assert_eq!(
            Reply::new(451, [4, 13, 0], "x").to_bytes(),
            b"451 4.13.0 x\r\n"
        );
    }

    #[test]
    fn no_line_injection() {
        let r = Reply::new(550, [5, 1, 1], "a\r\n250 2.0.0 forged");
        assert_eq!(r.to_bytes(), b"550 5.1.1 a??250 2.0.0 forged\r\n");
    }

    #[test]
    fn stored_as_structured_data() {
        let r = Reply::new(550, [5, 1, 1], "No such user");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"code":550,"enhanced":[5,1,1],"text":"No such user"}"#
        );
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), r);
        assert_eq!(r.status(), "5.1.1");
        assert_eq!(Reply::plain(421, "x").status(), "4.0.0");
    }

    #[test]
    fn classes() {
        assert!(Reply::new(451, [4, 3, 0], "").is_temporary());
        assert!(Reply::new(550, [5, 1, 1], "").is_permanent());
        assert!(!Reply::new(250, [2, 0, 0], "").is_error());
    }
}
