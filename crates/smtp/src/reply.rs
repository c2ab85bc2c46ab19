//! SMTP replies with enhanced status codes, formatted with smtp-proto.

/// One SMTP reply: basic code, enhanced status code (RFC 3463), text.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        Reply { code, enhanced, text: text.into() }
    }

    /// True for 4xx.
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The wire form, `"250 2.1.0 text\r\n"`.
    pub fn to_bytes(&self) -> Vec<u8> {
        unimplemented!()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c] = self.enhanced;
        write!(f, "{} {}.{}.{} {}", self.code, a, b, c, self.text)
    }
}
