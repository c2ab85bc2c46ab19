//! The message a client signs, and [`Signer`]: an onion identity key held as the 64-byte
//! expanded ed25519 secret that both arti and C tor store.

use std::fmt;

use curve25519_dalek::Scalar;
use data_encoding::BASE64;
use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::{Nonce, Onion, KEYWORD};

/// The fixed prefix of every signed message: 18 ASCII bytes.
pub const CONTEXT: &[u8; 18] = b"SMTP XONIONAUTH v1";
/// The role of the signer; the only role of version 1.
pub const ROLE_CLIENT: &[u8; 6] = b"client";
/// Length of the signed message: 18 + 1 + 6 + 1 + 32 + 32 + 32.
pub const MESSAGE_LEN: usize = 122;
/// Length of a signature in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a signature in base64 characters (with padding).
pub const SIGNATURE_B64_LEN: usize = 88;

/// The header of C tor's `hs_ed25519_secret_key` file, before the 64-byte secret.
const CTOR_HEADER: &[u8; 32] = b"== ed25519v1-secret: type0 ==\0\0\0";

/// The exact bytes a client signs:
/// `"SMTP XONIONAUTH v1" 0x00 "client" 0x00 S C nonce`, where S is the public key of the
/// server's onion the client connected to and C the client's own.
pub fn signed_message(server: &Onion, client: &Onion, nonce: &Nonce) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    let parts: [&[u8]; 7] = [
        CONTEXT,
        &[0],
        ROLE_CLIENT,
        &[0],
        server.public_key(),
        client.public_key(),
        nonce.as_bytes(),
    ];
    let mut at = 0;
    for part in parts {
        m[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    debug_assert_eq!(at, MESSAGE_LEN);
    m
}

/// Why a key could not be loaded. The texts never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 96 bytes starting with `== ed25519v1-secret: type0 ==`.
    #[error("not a C tor hs_ed25519_secret_key (expected 96 bytes starting with \"== ed25519v1-secret: type0 ==\")")]
    NotCtorKey,
    /// The secret scalar is zero modulo the group order: it has no usable public key.
    #[error("the ed25519 secret scalar is zero")]
    ZeroScalar,
}

/// An onion identity key that signs XONIONAUTH messages. Built from the 64-byte expanded
/// secret (scalar || hash prefix); it derives its own public key, so a mismatched public
/// key (which would leak the secret) cannot be given to it. `Debug` shows only the onion
/// address; the secret is zeroized when dropped.
pub struct Signer {
    /// The secret (zeroized on drop by ed25519-dalek).
    secret: ExpandedSecretKey,
    /// The public key derived from `secret`.
    public: VerifyingKey,
    /// Our onion address, from `public`.
    onion: Onion,
}

impl Signer {
    /// From a 64-byte expanded secret: the scalar (little endian) then the 32-byte hash
    /// prefix. The scalar is used as stored, reduced modulo the group order and *not*
    /// clamped again: C tor stores it clamped, arti's `ExpandedKeypair::to_secret_key_bytes`
    /// already reduced, and both give the same key this way (clamping a reduced scalar would
    /// not).
    pub fn from_expanded_secret(secret: &[u8; 64]) -> Result<Signer, KeyError> {
        let mut scalar_bytes = Zeroizing::new([0u8; 32]);
        scalar_bytes.copy_from_slice(&secret[..32]);
        let mut hash_prefix = Zeroizing::new([0u8; 32]);
        hash_prefix.copy_from_slice(&secret[32..]);
        let secret = ExpandedSecretKey {
            scalar: Scalar::from_bytes_mod_order(*scalar_bytes),
            hash_prefix: *hash_prefix,
        };
        if secret.scalar == Scalar::ZERO {
            return Err(KeyError::ZeroScalar);
        }
        let public = VerifyingKey::from(&secret);
        // scalar * B for a non-zero scalar below the group order is a point of large order,
        // canonically encoded: this cannot fail.
        let onion = Onion::from_public_key(public.as_bytes()).map_err(|_| KeyError::ZeroScalar)?;
        Ok(Signer {
            secret,
            public,
            onion,
        })
    }

    /// From the bytes of C tor's `hs_ed25519_secret_key` (in a `HiddenServiceDir`): the
    /// 32-byte header `== ed25519v1-secret: type0 ==` padded with NULs, then the expanded
    /// secret.
    pub fn from_ctor_secret_key_file(bytes: &[u8]) -> Result<Signer, KeyError> {
        if bytes.len() != 96 || &bytes[..32] != CTOR_HEADER {
            return Err(KeyError::NotCtorKey);
        }
        let mut secret = Zeroizing::new([0u8; 64]);
        secret.copy_from_slice(&bytes[32..]);
        Signer::from_expanded_secret(&secret)
    }

    /// From a 32-byte RFC 8032 seed: the expanded secret is SHA-512(seed) with the scalar
    /// clamped, which is what C tor writes to `hs_ed25519_secret_key`.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Signer, KeyError> {
        Signer::from_expanded_secret(&expand_seed(seed))
    }

    /// Our onion address.
    pub fn onion(&self) -> &Onion {
        &self.onion
    }

    /// Our public key.
    pub fn public_key(&self) -> &[u8; 32] {
        self.public.as_bytes()
    }

    /// The signature over [`signed_message`]`(server, self.onion(), nonce)`. `server` must
    /// be the onion this client connected to (the destination it chose), never a name the
    /// peer told it.
    pub fn sign(&self, server: &Onion, nonce: &Nonce) -> [u8; SIGNATURE_LEN] {
        let message = signed_message(server, &self.onion, nonce);
        raw_sign::<Sha512>(&self.secret, &message, &self.public).to_bytes()
    }

    /// The whole command line, without CRLF: `XONIONAUTH <our onion> <signature base64>`.
    pub fn command(&self, server: &Onion, nonce: &Nonce) -> String {
        format!(
            "{KEYWORD} {} {}",
            self.onion,
            BASE64.encode(&self.sign(server, nonce))
        )
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("onion", &self.onion)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// SHA-512 of the seed with the scalar half clamped (RFC 8032 5.1.5), as C tor stores it.
fn expand_seed(seed: &[u8; 32]) -> Zeroizing<[u8; 64]> {
    let mut expanded = Zeroizing::new([0u8; 64]);
    expanded.copy_from_slice(&Sha512::digest(seed));
    expanded[0] &= 248;
    expanded[31] &= 127;
    expanded[31] |= 64;
    expanded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap()
    }

    #[test]
    fn rfc8032_seed_gives_its_public_key_and_signature() {
        // RFC 8032 7.1, TEST 1 (the empty message).
        let seed: [u8; 32] =
            hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .try_into()
                .unwrap();
        let signer = Signer::from_seed(&seed).unwrap();
        assert_eq!(
            signer.public_key().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig = raw_sign::<Sha512>(&signer.secret, b"", &signer.public);
        assert_eq!(
            sig.to_bytes().to_vec(),
            hex(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                 5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            )
        );
    }

    #[test]
    fn clamped_and_reduced_scalars_are_the_same_key() {
        let expanded = expand_seed(&[7u8; 32]);
        let a = Signer::from_expanded_secret(&expanded).unwrap();
        let mut reduced = *expanded;
        reduced[..32].copy_from_slice(a.secret.scalar.as_bytes());
        assert_ne!(
            reduced[..32],
            expanded[..32],
            "clamped scalars exceed the order"
        );
        let b = Signer::from_expanded_secret(&reduced).unwrap();
        assert_eq!(a.onion(), b.onion());
        let server = Signer::from_seed(&[8u8; 32]).unwrap();
        let nonce = Nonce::from_bytes([9u8; 32]);
        assert_eq!(
            a.sign(server.onion(), &nonce),
            b.sign(server.onion(), &nonce)
        );
        // ed25519-dalek's ExpandedSecretKey::from_bytes clamps again: a different key.
        let reclamped = ExpandedSecretKey::from_bytes(&reduced);
        assert_ne!(VerifyingKey::from(&reclamped), b.public);
    }

    #[test]
    fn ctor_file_and_bad_keys() {
        let expanded = expand_seed(&[1u8; 32]);
        let mut file = CTOR_HEADER.to_vec();
        file.extend_from_slice(&*expanded);
        let s = Signer::from_ctor_secret_key_file(&file).unwrap();
        assert_eq!(s.onion(), Signer::from_seed(&[1u8; 32]).unwrap().onion());
        assert_eq!(
            Signer::from_ctor_secret_key_file(&file[..95]).unwrap_err(),
            KeyError::NotCtorKey
        );
        let mut wrong = file.clone();
        wrong[3] = b'X';
        assert_eq!(
            Signer::from_ctor_secret_key_file(&wrong).unwrap_err(),
            KeyError::NotCtorKey
        );
        let mut zero = [0u8; 64];
        zero[40] = 1;
        assert_eq!(
            Signer::from_expanded_secret(&zero).unwrap_err(),
            KeyError::ZeroScalar
        );
        // The group order itself reduces to zero.
        let mut order = [0u8; 64];
        order[..32].copy_from_slice(&hex(
            "edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010",
        ));
        assert_eq!(
            Signer::from_expanded_secret(&order).unwrap_err(),
            KeyError::ZeroScalar
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let expanded = expand_seed(&[2u8; 32]);
        let s = Signer::from_expanded_secret(&expanded).unwrap();
        let text = format!("{s:?}");
        assert!(text.contains(&s.onion().to_string()), "{text}");
        assert!(text.contains("<redacted>"));
        let secret_hex = data_encoding::HEXLOWER.encode(&expanded[..]);
        for window in [&secret_hex[..16], &secret_hex[64..80]] {
            assert!(!text.to_lowercase().contains(window));
        }
        assert!(!text.contains("scalar"));
    }

    #[test]
    fn message_layout() {
        let server = Signer::from_seed(&[3u8; 32]).unwrap();
        let client = Signer::from_seed(&[4u8; 32]).unwrap();
        let nonce = Nonce::from_bytes([5u8; 32]);
        let m = signed_message(server.onion(), client.onion(), &nonce);
        assert_eq!(&m[..20], b"SMTP XONIONAUTH v1\0c");
        assert_eq!(m[0], 0x53);
        assert_eq!(&m[18..26], b"\0client\0");
        assert_eq!(&m[26..58], server.public_key());
        assert_eq!(&m[58..90], client.public_key());
        assert_eq!(&m[90..], &[5u8; 32]);
    }
}
