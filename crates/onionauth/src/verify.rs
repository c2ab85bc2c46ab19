//! The server side of one attempt: parse `XONIONAUTH <onion> <signature>`, refuse
//! reflection, check the signature against each of our onions with `verify_strict`. Also the
//! EHLO keyword line, in both directions.

use curve25519_dalek::Scalar;
use data_encoding::BASE64;
use ed25519_dalek::Signature;

use crate::signer::{signed_message, SIGNATURE_B64_LEN, SIGNATURE_LEN};
use crate::{ClientOnion, Nonce, Onion, KEYWORD};

/// Why an XONIONAUTH attempt failed. `Display` is the reply text of docs/sender-auth.md
/// section 6 (`InvalidKey` and `BadSignature` share one text on purpose); the intended
/// reply code is on each variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not exactly two arguments separated by one space. Reply `501 5.5.4`.
    #[error("Syntax: XONIONAUTH <onion address> <signature>")]
    Syntax,
    /// The address is not `<56 base32 characters>.onion`. Reply `501 5.5.4`.
    #[error("Not a v3 onion address")]
    MalformedAddress,
    /// The address decodes, but its version byte is not 3. Reply `501 5.5.4`.
    #[error("Onion address version is not 3")]
    BadVersion,
    /// The address's checksum does not match its key. Reply `501 5.5.4`.
    #[error("Onion address checksum mismatch")]
    BadChecksum,
    /// The address's key is not a canonical point of large order: no signature under it is
    /// ever accepted. Reply `535 5.7.8`.
    #[error("Authentication credentials invalid")]
    InvalidKey,
    /// The signature is not standard, canonical, padded base64. Reply `501 5.5.4`.
    #[error("Signature is not base64")]
    BadBase64,
    /// The signature does not decode to 64 bytes. Reply `501 5.5.4`.
    #[error("Signature is not 64 bytes")]
    BadSignatureLength,
    /// The signature does not verify for any of our onions with this session's nonce (wrong
    /// key, another server's onion, another nonce, a non-canonical signature). Reply
    /// `535 5.7.8`.
    #[error("Authentication credentials invalid")]
    BadSignature,
    /// The client claims one of the server's own onions. Reply `535 5.7.8`.
    #[error("That onion address is this server's own")]
    Reflection,
    /// A second attempt in the same session (after a pass or a failure). Reply `503 5.5.1`.
    #[error("Only one XONIONAUTH per session")]
    AlreadyAttempted,
    /// An attempt after the session's first MAIL command. Reply `503 5.5.1`.
    #[error("XONIONAUTH must come before MAIL")]
    AfterMail,
    /// An attempt in a session whose EHLO reply carried no nonce (HELO, or no EHLO yet).
    /// Reply `503 5.5.1`.
    #[error("Send EHLO first")]
    NotAdvertised,
    /// (Client side) the server's EHLO keyword has no valid nonce: do not authenticate.
    #[error("XONIONAUTH nonce is not 32 bytes of base64")]
    BadNonce,
}

impl AuthError {
    /// True for the errors of a syntactically valid, in-sequence attempt whose claim did not
    /// hold, i.e. where a session records the result `fail` rather than just refusing the
    /// command: every error except [`AuthError::AlreadyAttempted`],
    /// [`AuthError::AfterMail`], [`AuthError::NotAdvertised`] and [`AuthError::BadNonce`].
    pub fn counts_as_attempt(&self) -> bool {
        !matches!(
            self,
            AuthError::AlreadyAttempted
                | AuthError::AfterMail
                | AuthError::NotAdvertised
                | AuthError::BadNonce
        )
    }
}

/// Splits the command's argument (the text after `XONIONAUTH `) into the claimed onion and
/// the signature: exactly two tokens separated by one space, nothing else.
pub fn parse_command_argument(argument: &str) -> Result<(&str, &str), AuthError> {
    let (onion, signature) = argument.split_once(' ').ok_or(AuthError::Syntax)?;
    if onion.is_empty() || signature.is_empty() || signature.contains([' ', '\t']) {
        return Err(AuthError::Syntax);
    }
    Ok((onion, signature))
}

/// Checks one attempt: `claimed_client` (the address text), `signature_b64` and the
/// session's `nonce`, against every onion in `own_onions` (the server's own: an imported key
/// beside arti's, for example). Passes if the signature verifies with `verify_strict` for
/// any one of them.
///
/// The checks run in this order, and the first failure is returned: the address (length,
/// base32, version, checksum, key), reflection, base64, length, signature.
pub fn verify(
    own_onions: &[Onion],
    claimed_client: &str,
    signature_b64: &str,
    nonce: &Nonce,
) -> Result<ClientOnion, AuthError> {
    let client = Onion::parse(claimed_client)?;
    if own_onions.contains(&client) {
        return Err(AuthError::Reflection);
    }
    let signature = decode_signature(signature_b64)?;
    let key = client.verifying_key()?;
    for server in own_onions {
        let message = signed_message(server, &client, nonce);
        if key.verify_strict(&message, &signature).is_ok() {
            return Ok(ClientOnion(client));
        }
    }
    Err(AuthError::BadSignature)
}

/// Decodes the signature: canonical padded base64 of 64 bytes, with `s` below the group
/// order (checked here too, so that no dalek feature can make signatures malleable).
fn decode_signature(text: &str) -> Result<Signature, AuthError> {
    // Bound the work before decoding: 64 bytes are 88 characters; anything longer is wrong.
    if text.len() > 4 * SIGNATURE_B64_LEN {
        return Err(AuthError::BadSignatureLength);
    }
    let bytes = BASE64
        .decode(text.as_bytes())
        .map_err(|_| AuthError::BadBase64)?;
    let bytes: [u8; SIGNATURE_LEN] = bytes
        .try_into()
        .map_err(|_| AuthError::BadSignatureLength)?;
    let mut s = [0u8; 32];
    s.copy_from_slice(&bytes[32..]);
    if Option::<Scalar>::from(Scalar::from_canonical_bytes(s)).is_none() {
        return Err(AuthError::BadSignature);
    }
    Ok(Signature::from_bytes(&bytes))
}

/// The EHLO keyword line a server advertises: `XONIONAUTH <nonce base64>` (the text after
/// `250-`).
pub fn ehlo_keyword(nonce: &Nonce) -> String {
    format!("{KEYWORD} {nonce}")
}

/// Reads one EHLO keyword line (the text after `250-` or `250 `). `Ok(None)` if it is
/// another extension; `Err(BadNonce)` if it is XONIONAUTH without exactly one valid nonce
/// (the client then does not authenticate).
pub fn parse_ehlo_keyword(line: &str) -> Result<Option<Nonce>, AuthError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
    if !keyword.eq_ignore_ascii_case(KEYWORD) {
        return Ok(None);
    }
    Nonce::from_base64(rest).map(Some)
}

/// Finds the nonce in a whole EHLO reply as received (`250-name\r\n250-XONIONAUTH ...\r\n250
/// SIZE ...\r\n`); the first line is the greeting, not an extension. Useful when the SMTP
/// client library drops extensions it does not know.
pub fn find_ehlo_nonce(reply: &str) -> Result<Option<Nonce>, AuthError> {
    for line in reply.lines().skip(1) {
        let Some(text) = line.strip_prefix("250-").or(line.strip_prefix("250 ")) else {
            continue;
        };
        if let Some(nonce) = parse_ehlo_keyword(text)? {
            return Ok(Some(nonce));
        }
    }
    Ok(None)
}
