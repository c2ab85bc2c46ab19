//! Mail address parsing and validation: local parts safe for the file system, DNS-style
//! domains, and v3 onion addresses checked down to their SHA3 checksum.

use data_encoding::BASE32_NOPAD;
use sha3::{Digest, Sha3_256};

/// Longest local part in octets (RFC 5321 4.5.3.1.1).
const MAX_LOCAL_PART: usize = 64;
/// Longest domain in octets (RFC 1035, without the trailing root dot).
const MAX_DOMAIN: usize = 253;
/// Longest DNS label in octets.
const MAX_LABEL: usize = 63;
/// Number of base32 characters in a v3 onion address (without `.onion`).
const ONION_V3_CHARS: usize = 56;
/// The v3 onion address version byte.
const ONION_V3_VERSION: u8 = 3;

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
    /// Parses and validates an address in RFC 5321 form, `local@domain` (no angle
    /// brackets), where the local part is a dot-atom or a quoted string (`"x>y"@domain`).
    /// `utf8` allows non-ASCII local parts (SMTPUTF8). A domain ending in `.onion` must be a
    /// valid v3 onion address.
    pub fn parse(text: &str, utf8: bool) -> Result<Address, AddressError> {
        if let Some(rest) = text.strip_prefix('"') {
            let (local, after) = unquote(rest).ok_or(AddressError::Malformed)?;
            let domain = after.strip_prefix('@').ok_or(AddressError::Malformed)?;
            return Address::from_parts(&local, domain, utf8);
        }
        Address::from_unquoted(text, utf8)
    }

    /// Validates `local@domain` whose local part is already unquoted (as smtp-proto gives
    /// it): the last `@` splits.
    pub fn from_unquoted(text: &str, utf8: bool) -> Result<Address, AddressError> {
        let (local, domain) = text.rsplit_once('@').ok_or(AddressError::Malformed)?;
        Address::from_parts(local, domain, utf8)
    }

    /// Validates an unquoted local part and a domain.
    fn from_parts(local: &str, domain: &str, utf8: bool) -> Result<Address, AddressError> {
        if local.is_empty()
            || domain.is_empty()
            || local.len() > MAX_LOCAL_PART
            || domain.len() > MAX_DOMAIN
        {
            return Err(AddressError::Malformed);
        }
        check_local_part(local, utf8)?;
        let domain = check_domain(domain)?;
        Ok(Address {
            local_part: local.to_owned(),
            domain,
        })
    }

    /// True if the domain ends in `.onion`.
    pub fn is_onion(&self) -> bool {
        self.domain.ends_with(".onion")
    }

    /// The local part in RFC 5321 form: as it is when it is a dot-atom, else a quoted
    /// string (`"x>Evil:y"`), so that no header or command line we write can be misread.
    pub fn quoted_local_part(&self) -> std::borrow::Cow<'_, str> {
        if is_dot_atom(&self.local_part) {
            return std::borrow::Cow::Borrowed(&self.local_part);
        }
        let mut out = String::with_capacity(self.local_part.len() + 2);
        out.push('"');
        for c in self.local_part.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        std::borrow::Cow::Owned(out)
    }
}

/// The address in RFC 5321 form (see [`Address::quoted_local_part`]).
impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.quoted_local_part(), self.domain)
    }
}

/// True for a dot-atom local part: atext runs (letters, digits, ``!#$%&'*+-/=?^_`{|}~``,
/// and non-ASCII under SMTPUTF8) separated by single dots.
fn is_dot_atom(local: &str) -> bool {
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

/// Reads a quoted string after its opening `"`: the unescaped content and what follows the
/// closing `"`. `None` if it is not closed.
fn unquote(rest: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?.1),
            '"' => return Some((out, &rest[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

/// Refuses local parts that could escape a mailbox directory or confuse later parsing.
fn check_local_part(local: &str, utf8: bool) -> Result<(), AddressError> {
    let bad_char = |c: char| {
        c == '/'
            || c == '\\'
            || c == ' '
            || c.is_control() // NUL, < 0x20, 0x7f and the C1 controls
            || (!utf8 && !c.is_ascii())
    };
    if local.chars().any(bad_char)
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        // "." and ".." are caught by the leading-dot rule.
        return Err(AddressError::BadLocalPart);
    }
    Ok(())
}

/// Validates a host name domain and returns it lower-cased. Onion domains must be v3.
fn check_domain(domain: &str) -> Result<String, AddressError> {
    if domain.starts_with('[') {
        // Address literals: we never deliver to IP addresses.
        return Err(AddressError::BadDomain);
    }
    let domain = domain.to_ascii_lowercase();
    let label_ok = |label: &str| {
        (1..=MAX_LABEL).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !domain.split('.').all(label_ok) {
        return Err(AddressError::BadDomain);
    }
    if domain == "onion" || domain.ends_with(".onion") {
        validate_onion_v3(&domain)?;
    }
    Ok(domain)
}

/// Checks that `domain` is exactly `<56 base32 chars>.onion` (any case) encoding a v3
/// onion address: 32-byte key, 2-byte checksum = SHA3-256(".onion checksum" | key | 0x03)[..2],
/// version byte 3.
pub fn validate_onion_v3(domain: &str) -> Result<(), AddressError> {
    let lower = domain.to_ascii_lowercase();
    let label = lower.strip_suffix(".onion").ok_or(AddressError::BadOnion)?;
    if label.len() != ONION_V3_CHARS || label.contains('.') {
        return Err(AddressError::BadOnion);
    }
    let bytes = BASE32_NOPAD
        .decode(label.to_ascii_uppercase().as_bytes())
        .map_err(|_| AddressError::BadOnion)?;
    let [key @ .., c0, c1, version] = bytes.as_slice() else {
        return Err(AddressError::BadOnion);
    };
    if key.len() != 32 || *version != ONION_V3_VERSION {
        return Err(AddressError::BadOnion);
    }
    let sum = onion_checksum(key);
    if sum != [*c0, *c1] {
        return Err(AddressError::BadOnion);
    }
    Ok(())
}

/// The two checksum bytes of a v3 onion address for `key`.
fn onion_checksum(key: &[u8]) -> [u8; 2] {
    let mut hasher = Sha3_256::new();
    hasher.update(b".onion checksum");
    hasher.update(key);
    hasher.update([ONION_V3_VERSION]);
    let digest = hasher.finalize();
    [digest[0], digest[1]]
}

/// Builds the v3 onion domain (`<56 chars>.onion`, lower-case) of a 32-byte public key.
/// Useful for tests and for showing our own address.
pub fn onion_v3_from_key(key: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(35);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&onion_checksum(key));
    bytes.push(ONION_V3_VERSION);
    let mut s = BASE32_NOPAD.encode(&bytes).to_ascii_lowercase();
    s.push_str(".onion");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Tor Project's onion service.
    const TORPROJECT: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

    /// A small deterministic PRNG (xorshift64*) for keys.
    fn keys(seed: u64, n: usize) -> Vec<[u8; 32]> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                let mut k = [0u8; 32];
                for b in k.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = (x >> 24) as u8;
                }
                k
            })
            .collect()
    }

    #[test]
    fn real_onion_is_valid() {
        assert_eq!(validate_onion_v3(TORPROJECT), Ok(()));
        assert_eq!(validate_onion_v3(&TORPROJECT.to_ascii_uppercase()), Ok(()));
        let a =
            Address::parse(&format!("Alice@{}", TORPROJECT.to_ascii_uppercase()), false).unwrap();
        assert_eq!(a.local_part, "Alice");
        assert_eq!(a.domain, TORPROJECT);
        assert!(a.is_onion());
        assert_eq!(a.to_string(), format!("Alice@{TORPROJECT}"));
    }

    #[test]
    fn single_char_changes_are_refused() {
        // The checksum has 16 bits, so about 1 in 65536 changes of the key part still
        // verifies (the change "2g" -> "23" at index 1 happens to be one): count them.
        // Changes in the checksum and version characters (index 52..56) always fail.
        let label = &TORPROJECT[..56];
        let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
        let mut accepted = Vec::new();
        for i in 0..56 {
            for c in alphabet.chars() {
                if label.as_bytes()[i] == c as u8 {
                    continue;
                }
                let mut s = label.to_owned();
                s.replace_range(i..=i, &c.to_string());
                let d = format!("{s}.onion");
                if validate_onion_v3(&d).is_ok() {
                    assert!(i < 52, "{d}");
                    accepted.push(d);
                }
            }
        }
        assert!(accepted.len() <= 2, "{accepted:?}");
        for d in [
            "3gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion",
            "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wia.onion",
        ] {
            assert_eq!(validate_onion_v3(d), Err(AddressError::BadOnion), "{d}");
            assert_eq!(
                Address::parse(&format!("a@{d}"), false),
                Err(AddressError::BadOnion)
            );
        }
    }

    #[test]
    fn malformed_onions() {
        let label = &TORPROJECT[..56];
        for bad in [
            format!("{}.onion", &label[..55]),
            format!("{label}a.onion"),
            format!("x.{TORPROJECT}"),
            format!("{}1.onion", &label[..55]), // '1' is not base32
            format!("{}=.onion", &label[..55]),
            "onion".to_owned(),
            ".onion".to_owned(),
            // One letter off the real address ("wid" -> "wyd"): the checksum catches it.
            "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wyd.onion".to_owned(),
            "facebookcorewwwi.onion".to_owned(), // v2
            label.to_owned(),
        ] {
            assert_eq!(
                validate_onion_v3(&bad),
                Err(AddressError::BadOnion),
                "{bad}"
            );
        }
        assert_eq!(
            Address::parse(&format!("a@x.{TORPROJECT}"), false),
            Err(AddressError::BadOnion)
        );
        assert_eq!(
            Address::parse("a@onion", false),
            Err(AddressError::BadOnion)
        );
        assert_eq!(
            Address::parse("a@abc.onion", false),
            Err(AddressError::BadOnion)
        );
    }

    #[test]
    fn generated_onions_valid_and_version_checked() {
        for key in keys(42, 50) {
            let d = onion_v3_from_key(&key);
            assert_eq!(d.len(), 62);
            assert_eq!(validate_onion_v3(&d), Ok(()), "{d}");
            // Same key and checksum, version byte 4: refused.
            let mut bytes = key.to_vec();
            bytes.extend_from_slice(&onion_checksum(&key));
            bytes.push(4);
            let v4 = format!("{}.onion", BASE32_NOPAD.encode(&bytes).to_ascii_lowercase());
            assert_eq!(validate_onion_v3(&v4), Err(AddressError::BadOnion));
            // Wrong checksum: refused.
            let mut bytes = key.to_vec();
            let [a, b] = onion_checksum(&key);
            bytes.extend_from_slice(&[a ^ 1, b]);
            bytes.push(3);
            let bad = format!("{}.onion", BASE32_NOPAD.encode(&bytes).to_ascii_lowercase());
            assert_eq!(validate_onion_v3(&bad), Err(AddressError::BadOnion));
        }
    }

    #[test]
    fn local_part_rules() {
        let d = "example.org";
        for ok in [
            "a",
            "A.b",
            "a+tag",
            "a-b_c",
            "x!#$%&'*=?^`{|}~",
            &"l".repeat(64),
        ] {
            assert!(Address::parse(&format!("{ok}@{d}"), false).is_ok(), "{ok}");
        }
        for bad in [
            "../etc", "a/b", "a\\b", "..", ".", "a..b", ".a", "a.", "a b", "a\0b", "a\tb",
            "a\x7fb", "a\u{85}b",
        ] {
            assert_eq!(
                Address::parse(&format!("{bad}@{d}"), true),
                Err(AddressError::BadLocalPart),
                "{bad:?}"
            );
        }
        assert_eq!(
            Address::parse("jörg@example.org", false),
            Err(AddressError::BadLocalPart)
        );
        assert_eq!(
            Address::parse("jörg@example.org", true).unwrap().local_part,
            "jörg"
        );
        assert_eq!(
            Address::parse(&format!("{}@{d}", "l".repeat(65)), false),
            Err(AddressError::Malformed)
        );
    }

    #[test]
    fn quoted_local_parts_round_trip_in_rfc5321_form() {
        let d = "example.org";
        for (unquoted, wire) in [
            ("x>Evil:y", "\"x>Evil:y\""),
            ("<evil@x>", "\"<evil@x>\""),
            ("a\"b", "\"a\\\"b\""),
            ("a,b", "\"a,b\""),
            ("plain.name+tag", "plain.name+tag"),
        ] {
            let a = Address::from_unquoted(&format!("{unquoted}@{d}"), false).unwrap();
            assert_eq!(a.local_part, unquoted);
            assert_eq!(a.to_string(), format!("{wire}@{d}"));
            // What we write parses back to the same address.
            assert_eq!(Address::parse(&a.to_string(), false).unwrap(), a);
        }
        assert_eq!(
            Address::parse("\"unclosed@example.org", false),
            Err(AddressError::Malformed)
        );
        assert_eq!(
            Address::parse("\"a b\"@example.org", false),
            Err(AddressError::BadLocalPart)
        );
        assert_eq!(
            Address::parse("\"../etc\"@example.org", false),
            Err(AddressError::BadLocalPart)
        );
    }

    #[test]
    fn structure_and_domain_rules() {
        for bad in ["", "a", "@b.org", "a@", "ab.org"] {
            assert_eq!(
                Address::parse(bad, false),
                Err(AddressError::Malformed),
                "{bad}"
            );
        }
        // The last @ splits: "a@b" is the local part and is allowed.
        assert_eq!(
            Address::parse("a@b@c.org", false).unwrap().local_part,
            "a@b"
        );
        for bad in [
            "[127.0.0.1]",
            "[IPv6:::1]",
            "a..b",
            ".a",
            "a.",
            "-a.org",
            "a-.org",
            "a_b.org",
            "exämple.org",
            "a b.org",
        ] {
            assert_eq!(
                Address::parse(&format!("x@{bad}"), true),
                Err(AddressError::BadDomain),
                "{bad}"
            );
        }
        let long_label = "a".repeat(64);
        assert_eq!(
            Address::parse(&format!("x@{long_label}.org"), false),
            Err(AddressError::BadDomain)
        );
        let long_domain = vec!["a".repeat(63); 4].join("."); // 255
        assert_eq!(
            Address::parse(&format!("x@{long_domain}"), false),
            Err(AddressError::Malformed)
        );
        let a = Address::parse("Bob@Example.ORG", false).unwrap();
        assert_eq!(
            (a.local_part.as_str(), a.domain.as_str()),
            ("Bob", "example.org")
        );
        assert!(!a.is_onion());
    }

    #[test]
    fn error_texts() {
        assert_eq!(
            AddressError::BadOnion.to_string(),
            "not a valid v3 onion address"
        );
    }
}
