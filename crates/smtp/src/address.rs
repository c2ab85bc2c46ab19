//! Mail address parsing and validation: local parts safe for the file system, DNS-style
//! domains, and v3 onion addresses checked down to their SHA3 checksum.

/// Why an address was refused. `Display` is a short human text for an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not of the form local@domain, empty parts, too long, etc.
    #[error("malformed address")]
    Malformed,
    /// The local part has characters or sequences that are not allowed (`/`, `\`, NUL,
    /// control characters, `..`, a leading or trailing dot, non-ASCII without SMTPUTF8).
    #[error("local part not allowed")]
    BadLocalPart,
    /// The domain is not a valid host name (address literals such as `[1.2.3.4]` included).
    #[error("malformed domain")]
    BadDomain,
    /// The domain ends in `.onion` but is not a valid v3 onion address.
    #[error("not a valid v3 onion address")]
    BadOnion,
}

/// A validated address. `domain` is lower-case; `local_part` keeps its case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// The part before the last `@`.
    pub local_part: String,
    /// The part after the last `@`, lower-cased.
    pub domain: String,
}

impl Address {
    /// Parses and validates `local@domain` (no angle brackets). `utf8` allows non-ASCII local
    /// parts (SMTPUTF8). A domain ending in `.onion` must be a valid v3 onion address.
    pub fn parse(text: &str, utf8: bool) -> Result<Address, AddressError> {
        let _ = (text, utf8);
        unimplemented!()
    }

    /// True if the domain ends in `.onion`.
    pub fn is_onion(&self) -> bool {
        self.domain.ends_with(".onion")
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// Checks that `domain` is exactly `<56 base32 chars>.onion` (any case) encoding a v3
/// onion address: 32-byte key, 2-byte checksum = SHA3-256(".onion checksum" | key | 0x03)[..2],
/// version byte 3.
pub fn validate_onion_v3(domain: &str) -> Result<(), AddressError> {
    let _ = domain;
    unimplemented!()
}
