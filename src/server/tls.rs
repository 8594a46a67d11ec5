//! DICOM TLS (PS3.15 B.9, the BCP 195 profiles): the rustls server configuration built from
//! `[server.tls]`.
//!
//! TLS is off while no certificate is configured. With a certificate, the DICOM port speaks TLS
//! only (TLS 1.2 and 1.3, rustls' safe defaults with the `ring` provider, chosen explicitly so no
//! process-wide default is needed). With `client_ca`, every peer must present a certificate that
//! CA signed (mutual TLS, as BCP 195 expects between DICOM nodes); without it, peers need none.
//! Every problem with the files is one line naming the key and the path: the configuration check
//! reports it (`noduled check-config`, and `noduled serve` before the port opens).

use crate::config::TlsConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;

/// The rustls configuration for `[server.tls]`: `Ok(None)` when TLS is off, or a one-line error
/// naming the key and the file.
pub fn server_config(tls: &TlsConfig) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let set = |p: &Path| !p.as_os_str().is_empty();
    if !tls.enabled() {
        if set(&tls.private_key) || set(&tls.client_ca) {
            return Err(
                "server.tls.private_key and server.tls.client_ca need server.tls.certificate"
                    .into(),
            );
        }
        return Ok(None);
    }
    if !set(&tls.private_key) {
        return Err("server.tls.private_key must be set with server.tls.certificate".into());
    }
    let chain = certificates("server.tls.certificate", &tls.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&tls.private_key)
        .map_err(|e| pem_problem("server.tls.private_key", &tls.private_key, "private key", e))?;
    // rustls 0.23.48 deprecates the ring provider for lacking post-quantum key exchange
    // (X25519MLKEM768); the DICOM peers in use (DCMTK on OpenSSL 3.0) do not offer it either, and
    // aws-lc-rs, the provider that has it, would add a C/CMake build to every build of noduled.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| one_line(&format!("server.tls: {e}")))?;
    let builder = if set(&tls.client_ca) {
        let mut roots = RootCertStore::empty();
        for cert in certificates("server.tls.client_ca", &tls.client_ca)? {
            roots.add(cert).map_err(|e| {
                one_line(&format!(
                    "server.tls.client_ca {}: not a usable CA certificate: {e}",
                    tls.client_ca.display()
                ))
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| {
                one_line(&format!(
                    "server.tls.client_ca {}: {e}",
                    tls.client_ca.display()
                ))
            })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not belong to the certificate".to_string()
            }
            other => other.to_string(),
        };
        one_line(&format!(
            "server.tls.certificate {} / private_key {}: {why}",
            tls.certificate.display(),
            tls.private_key.display()
        ))
    })?;
    Ok(Some(Arc::new(config)))
}

/// Every certificate of a PEM file; at least one.
fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_problem(key, path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_problem(
            key,
            path,
            "certificate",
            pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

fn pem_problem(key: &str, path: &Path, what: &str, error: pem::Error) -> String {
    let why = match error {
        pem::Error::Io(e) => format!("cannot read: {e}"),
        pem::Error::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not a PEM {what}: {other}"),
    };
    one_line(&format!("{key} {}: {why}", path.display()))
}

fn one_line(message: &str) -> String {
    super::one_line(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tls(certificate: &str, private_key: &str, client_ca: &str) -> TlsConfig {
        TlsConfig {
            certificate: PathBuf::from(certificate),
            private_key: PathBuf::from(private_key),
            client_ca: PathBuf::from(client_ca),
        }
    }

    #[test]
    fn off_without_a_certificate() {
        assert!(server_config(&TlsConfig::default()).unwrap().is_none());
        let err = server_config(&tls("", "key.pem", "")).unwrap_err();
        assert!(err.contains("need server.tls.certificate"), "{err}");
        let err = server_config(&tls("cert.pem", "", "")).unwrap_err();
        assert!(err.contains("server.tls.private_key must be set"), "{err}");
    }

    #[test]
    fn missing_and_bad_files_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.pem");
        let err = server_config(&tls(missing.to_str().unwrap(), "k.pem", "")).unwrap_err();
        assert!(err.starts_with("server.tls.certificate "), "{err}");
        assert!(err.contains("cannot read"), "{err}");
        assert!(!err.contains('\n'));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let err = server_config(&tls(junk.to_str().unwrap(), "k.pem", "")).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
