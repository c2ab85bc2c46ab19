//! The server's per-session challenge: 32 bytes from the operating system's RNG, sent as
//! standard base64 with padding (44 characters).

use std::fmt;

use data_encoding::BASE64;
use rand::rngs::OsRng;
use rand::RngCore;

use crate::AuthError;

/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 32;
/// Length of a nonce in base64 characters (with padding).
pub const NONCE_B64_LEN: usize = 44;

/// A session nonce. A server makes a fresh one for every session with
/// [`Nonce::generate`] and never reuses it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    /// 32 fresh bytes from the operating system's RNG.
    ///
    /// # Panics
    ///
    /// If the operating system cannot give random bytes (`getrandom` fails): a session must
    /// not go on with a predictable nonce.
    pub fn generate() -> Nonce {
        let mut bytes = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut bytes);
        Nonce(bytes)
    }

    /// A nonce from known bytes: what a client received, or a test vector. A server uses
    /// [`Nonce::generate`].
    pub fn from_bytes(bytes: [u8; NONCE_LEN]) -> Nonce {
        Nonce(bytes)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }

    /// Parses exactly 44 characters of standard base64 with padding, canonical (the unused
    /// low bits of the last character are zero).
    pub fn from_base64(text: &str) -> Result<Nonce, AuthError> {
        if text.len() != NONCE_B64_LEN {
            return Err(AuthError::BadNonce);
        }
        let bytes = BASE64
            .decode(text.as_bytes())
            .map_err(|_| AuthError::BadNonce)?;
        let bytes: [u8; NONCE_LEN] = bytes.try_into().map_err(|_| AuthError::BadNonce)?;
        Ok(Nonce(bytes))
    }

    /// Standard base64 with padding, 44 characters.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.0)
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_and_round_trips() {
        let a = Nonce::generate();
        let b = Nonce::generate();
        assert_ne!(a, b);
        assert_ne!(a.as_bytes(), &[0u8; 32]);
        let text = a.to_base64();
        assert_eq!(text.len(), NONCE_B64_LEN);
        assert!(text.ends_with('='));
        assert_eq!(Nonce::from_base64(&text).unwrap(), a);
    }

    #[test]
    fn known_encoding() {
        let n = Nonce::from_bytes(std::array::from_fn(|i| i as u8));
        assert_eq!(
            n.to_string(),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        );
    }

    #[test]
    fn refuses_everything_else() {
        let good = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        for bad in [
            "",
            &good[..43],                                    // no padding
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=", // non-canonical last char
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh-=", // URL-safe alphabet
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8 ",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh==", // 31 bytes, 44 chars
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=AAAA",
        ] {
            assert_eq!(Nonce::from_base64(bad), Err(AuthError::BadNonce), "{bad}");
        }
        assert!(Nonce::from_base64(good).is_ok());
    }
}
