//! TLS material of the submission port (STARTTLS): the certificate and key from
//! `[submission] tls_cert` / `tls_key`, or a self-signed pair that `smtorp init` makes in
//! `<data_dir>/tls/` (cert.pem 0644, key.pem 0600), and its SHA-256 fingerprint, which users
//! pin in their mail client.
//!
//! The self-signed certificate names only our primary domain (the onion address, else the
//! first local domain, else `localhost`): never the machine's host name or an IP address. Its
//! validity is rcgen's fixed 1975..4096 range, so it does not even tell when it was made.
//! The onion side has no TLS: Tor already authenticates and encrypts it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::say;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::Settings;

/// The certificate and key files in force: the configured ones, else those of
/// `<data_dir>/tls/`.
pub(crate) fn paths(settings: &Settings) -> (PathBuf, PathBuf) {
    let sub = &settings.config.submission;
    let dir = settings.config.data_dir.join("tls");
    let cert = if sub.tls_cert.is_empty() {
        dir.join("cert.pem")
    } else {
        PathBuf::from(&sub.tls_cert)
    };
    let key = if sub.tls_key.is_empty() {
        dir.join("key.pem")
    } else {
        PathBuf::from(&sub.tls_key)
    };
    (cert, key)
}

/// True when smtorp makes its own certificate (no `tls_cert` configured).
fn self_signed(settings: &Settings) -> bool {
    settings.config.submission.tls_cert.is_empty()
}

/// Makes the self-signed pair for `domain` if no certificate is configured and none was made
/// yet. Returns the certificate's path when it made one.
pub(crate) fn ensure(settings: &Settings, domain: &str) -> anyhow::Result<Option<PathBuf>> {
    if !self_signed(settings) {
        return Ok(None);
    }
    if !settings.config.submission.tls_key.is_empty() {
        bail!("submission.tls_key is set but submission.tls_cert is not: set both or neither");
    }
    let (cert_path, key_path) = paths(settings);
    if cert_path.exists() && key_path.exists() {
        return Ok(None);
    }
    let (cert_pem, key_pem) = generate(domain)?;
    let dir = cert_path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, cert_pem.as_bytes(), 0o644)?;
    Ok(Some(cert_path))
}

/// A self-signed certificate (PEM) and its ECDSA P-256 key (PEM) for `domain` only.
pub(crate) fn generate(domain: &str) -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])
        .with_context(|| format!("cannot make a certificate for {domain}"))?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, domain);
    params.distinguished_name = name;
    let key = rcgen::KeyPair::generate().context("cannot generate a TLS key")?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign the certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a new file with `mode` (replacing an old one), atomically and durably.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    crate::config::layout::write_atomically(path, bytes, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The SHA-256 fingerprint of the first certificate in a PEM text, as `AB:CD:...`.
pub(crate) fn fingerprint_pem(pem: &[u8]) -> anyhow::Result<String> {
    let cert = CertificateDer::pem_slice_iter(pem)
        .next()
        .context("no certificate in the PEM text")?
        .context("malformed PEM certificate")?;
    let digest = Sha256::digest(cert.as_ref());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// The fingerprint of the certificate in force.
pub(crate) fn fingerprint(settings: &Settings) -> anyhow::Result<String> {
    let (cert, _) = paths(settings);
    let pem = fs::read(&cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?;
    fingerprint_pem(&pem).with_context(|| format!("in {}", cert.display()))
}

/// The STARTTLS acceptor (rustls with the ring provider, TLS 1.2 and 1.3, no client
/// certificates).
pub(crate) fn acceptor(settings: &Settings) -> anyhow::Result<TlsAcceptor> {
    let (cert_path, key_path) = paths(settings);
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read the certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("malformed certificate {}", cert_path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read the private key {}", key_path.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| {
        format!(
            "{} and {} do not make a usable pair",
            cert_path.display(),
            key_path.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Our primary domain as the daemon will see it (the onion address once it has keys).
fn primary_domain(settings: &Arc<Settings>) -> String {
    let onion = crate::config::layout::onion_address(settings);
    crate::policy::Directory::new(settings.clone(), onion.as_deref())
        .primary_domain()
        .to_owned()
}

/// `smtorp init`: makes the self-signed certificate when the submission port is on and no
/// certificate is configured, and prints its fingerprint to pin in mail clients.
pub(crate) fn init(settings: &Settings) -> anyhow::Result<()> {
    if settings.config.submission.listen.is_empty() {
        return Ok(());
    }
    let settings = Arc::new(settings.clone());
    if let Some(path) = ensure(&settings, &primary_domain(&settings))? {
        say!(
            "created {} (self-signed, for the submission port)",
            path.display()
        );
    }
    say!(
        "submission certificate SHA-256 fingerprint: {}",
        fingerprint(&settings)?
    );
    Ok(())
}

/// `smtorp check-config`: the submission settings and the certificate's fingerprint.
pub(crate) fn describe(settings: &Settings) {
    say!(
        "submission listen = {:?}",
        settings.config.submission.listen
    );
    if settings.config.submission.listen.is_empty() {
        return;
    }
    match fingerprint(settings) {
        Ok(fp) => say!("submission certificate SHA-256 fingerprint: {fp}"),
        Err(e) => say!("submission certificate: {e:#} (run `smtorp init`)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_names_only_our_domain() {
        let (cert, key) = generate("example.onion").unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        let fp = fingerprint_pem(cert.as_bytes()).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let der = der.as_ref();
        let contains = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"example.onion"));
        // Names are whole DER strings with their tag and length (here the SAN dNSName):
        // the form the host name check below looks for.
        assert!(contains(&[&[0x82, 13][..], b"example.onion"].concat()));
        assert!(!contains(b"rcgen"));
        if let Ok(host) = fs::read_to_string("/etc/hostname") {
            let host = host.trim();
            if !host.is_empty() && host != "localhost" && host.len() < 128 {
                // As a name the host name would be a whole DER string: UTF8String,
                // PrintableString, IA5String, or a SAN dNSName, each with its length. A
                // bare substring search is no test for a short name: a two-letter host
                // name ("vm") turns up by chance in the random key and signature bytes
                // about once in 150 runs.
                for tag in [0x0c, 0x13, 0x16, 0x82] {
                    let mut name = vec![tag, host.len() as u8];
                    name.extend_from_slice(host.as_bytes());
                    assert!(!contains(&name), "host name in the certificate");
                }
                if host.len() >= 8 {
                    assert!(!contains(host.as_bytes()), "host name in the certificate");
                }
            }
        }
    }
}
