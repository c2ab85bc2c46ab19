//! v3 onion addresses as ed25519 public keys: parsing down to the checksum and the curve
//! point, formatting, and the [`ClientOnion`] that only a verified signature produces.

use std::fmt;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::VerifyingKey;
use sha3::{Digest, Sha3_256};

use crate::AuthError;

/// Base32 characters before `.onion` in a v3 address.
const LABEL_CHARS: usize = 56;
/// The v3 version byte, the last byte of the decoded label.
const VERSION: u8 = 3;

/// A valid v3 onion address: `<56 base32 chars>.onion` whose 32-byte ed25519 public key is
/// a canonical encoding of a curve point of large order (a key that can sign).
///
/// `Display` gives the address in lower case. Equality is equality of the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Onion {
    /// The public key, as found in the address (checked as described above).
    key: [u8; 32],
}

impl Onion {
    /// Parses `<56 chars>.onion` (either case; the signed message holds the key, not the
    /// text). Checks the length, base32, the version byte, the checksum and the key.
    pub fn parse(address: &str) -> Result<Onion, AuthError> {
        if address.len() != LABEL_CHARS + ".onion".len()
            || !address.as_bytes()[LABEL_CHARS..].eq_ignore_ascii_case(b".onion")
        {
            return Err(AuthError::MalformedAddress);
        }
        let label = address
            .get(..LABEL_CHARS)
            .ok_or(AuthError::MalformedAddress)?;
        let bytes = BASE32_NOPAD
            .decode(label.to_ascii_uppercase().as_bytes())
            .map_err(|_| AuthError::MalformedAddress)?;
        let [key @ .., c0, c1, version] = bytes.as_slice() else {
            return Err(AuthError::MalformedAddress);
        };
        let key: [u8; 32] = key.try_into().map_err(|_| AuthError::MalformedAddress)?;
        if *version != VERSION {
            return Err(AuthError::BadVersion);
        }
        if checksum(&key) != [*c0, *c1] {
            return Err(AuthError::BadChecksum);
        }
        Onion::from_public_key(&key)
    }

    /// The onion address of a 32-byte ed25519 public key. Refused with
    /// [`AuthError::InvalidKey`] unless the bytes are the canonical encoding of a curve point
    /// of large order: `verify_strict` would refuse every signature by any other key, and a
    /// non-canonical encoding would give one key two addresses.
    pub fn from_public_key(key: &[u8; 32]) -> Result<Onion, AuthError> {
        let verifying = VerifyingKey::from_bytes(key).map_err(|_| AuthError::InvalidKey)?;
        if verifying.is_weak() || verifying.to_edwards().compress().to_bytes() != *key {
            return Err(AuthError::InvalidKey);
        }
        Ok(Onion { key: *key })
    }

    /// The ed25519 public key (the first 32 bytes of the decoded address).
    pub fn public_key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The key for signature checks (decoded again: a small cost that keeps `Onion` at 32
    /// bytes).
    pub(crate) fn verifying_key(&self) -> Result<VerifyingKey, AuthError> {
        VerifyingKey::from_bytes(&self.key).map_err(|_| AuthError::InvalidKey)
    }
}

impl fmt::Display for Onion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = [0u8; 35];
        bytes[..32].copy_from_slice(&self.key);
        bytes[32..34].copy_from_slice(&checksum(&self.key));
        bytes[34] = VERSION;
        write!(
            f,
            "{}.onion",
            BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
        )
    }
}

impl fmt::Debug for Onion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Onion({self})")
    }
}

impl std::str::FromStr for Onion {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Onion, AuthError> {
        Onion::parse(s)
    }
}

/// The onion a client proved it holds the key of: only a successful [`crate::verify`] makes
/// one, so holding a `ClientOnion` means the signature was checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientOnion(pub(crate) Onion);

impl ClientOnion {
    /// The authenticated onion.
    pub fn onion(&self) -> &Onion {
        &self.0
    }
}

impl fmt::Display for ClientOnion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The two checksum bytes: SHA3-256(".onion checksum" || key || 0x03)[..2].
fn checksum(key: &[u8; 32]) -> [u8; 2] {
    let mut hasher = Sha3_256::new();
    hasher.update(b".onion checksum");
    hasher.update(key);
    hasher.update([VERSION]);
    let digest = hasher.finalize();
    [digest[0], digest[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Tor Project's onion service.
    const TORPROJECT: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

    /// The address text of any 32 bytes, with a correct checksum and version `version`.
    fn encode(key: &[u8; 32], version: u8) -> String {
        let mut bytes = key.to_vec();
        bytes.extend_from_slice(&checksum(key));
        bytes.push(version);
        format!("{}.onion", BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }

    #[test]
    fn real_address_round_trips_in_lower_case() {
        let o = Onion::parse(TORPROJECT).unwrap();
        assert_eq!(o.to_string(), TORPROJECT);
        let upper = Onion::parse(&TORPROJECT.to_ascii_uppercase()).unwrap();
        assert_eq!(upper, o);
        assert_eq!(upper.to_string(), TORPROJECT);
        assert_eq!(Onion::from_public_key(o.public_key()).unwrap(), o);
        assert_eq!(format!("{o:?}"), format!("Onion({TORPROJECT})"));
    }

    #[test]
    fn malformed_addresses() {
        let label = &TORPROJECT[..56];
        for bad in [
            String::new(),
            ".onion".to_owned(),
            label.to_owned(),
            format!("{}.onion", &label[..55]),
            format!("{label}a.onion"),
            format!("x.{TORPROJECT}"),
            format!("{TORPROJECT}."),
            format!("{label}.onioN2"),
            format!("{label}_onion"),
            format!("{}1.onion", &label[..55]), // '1' is not base32
            format!("{}=.onion", &label[..55]),
            format!("{}é.onion", &label[..54]), // not base32
            format!("{}éonion", &label[..55]),  // byte 56 inside a character: no panic
            "facebookcorewwwi.onion".to_owned(),
        ] {
            assert_eq!(
                Onion::parse(&bad),
                Err(AuthError::MalformedAddress),
                "{bad}"
            );
        }
    }

    #[test]
    fn checksum_and_version_are_checked() {
        // One letter off the real address ("wid" -> "wyd") breaks the checksum.
        let typo = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wyd.onion";
        assert_eq!(Onion::parse(typo), Err(AuthError::BadChecksum));
        let key = *Onion::parse(TORPROJECT).unwrap().public_key();
        assert_eq!(Onion::parse(&encode(&key, 4)), Err(AuthError::BadVersion));
        assert_eq!(encode(&key, 3), TORPROJECT);
    }

    #[test]
    fn weak_and_non_canonical_keys_are_refused() {
        // The identity point (y = 1) and a point of order 4 (y = 0) pass every address
        // check; a signature under them would verify for almost any message.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let zero = [0u8; 32];
        // y = p - 1 = -1: the point of order 2.
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        for key in [identity, zero, minus_one] {
            assert_eq!(Onion::from_public_key(&key), Err(AuthError::InvalidKey));
            assert_eq!(Onion::parse(&encode(&key, 3)), Err(AuthError::InvalidKey));
        }
        // The identity again, with the sign bit of x set: a non-canonical encoding.
        let mut signed_identity = identity;
        signed_identity[31] |= 0x80;
        assert_eq!(
            Onion::from_public_key(&signed_identity),
            Err(AuthError::InvalidKey)
        );
        // y = p + d for small d: a non-canonical encoding of y = d. Some of these are points
        // of large order, which `verify_strict` itself would accept.
        let mut large_order_non_canonical = 0;
        for d in 0u8..19 {
            let mut key = [0xffu8; 32];
            key[0] = 0xed + d; // p = 2^255 - 19 ends in 0xed (little endian)
            key[31] = 0x7f;
            if let Ok(vk) = VerifyingKey::from_bytes(&key) {
                if !vk.is_weak() {
                    large_order_non_canonical += 1;
                }
                assert_eq!(Onion::from_public_key(&key), Err(AuthError::InvalidKey));
            }
        }
        assert!(large_order_non_canonical > 0);
        // Not on the curve at all (y = 2 has no x).
        let mut two = [0u8; 32];
        two[0] = 2;
        assert!(VerifyingKey::from_bytes(&two).is_err());
        assert_eq!(Onion::from_public_key(&two), Err(AuthError::InvalidKey));
    }
}
