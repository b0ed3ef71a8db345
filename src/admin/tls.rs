//! `[admin.tls]`: the admin listener over HTTPS (HTTP/1.1), with the certificate and key
//! read once at start.

use crate::config::AdminTlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;

/// Why the admin certificate or key cannot be used; each message names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum AdminTlsError {
    /// The certificate file cannot be read or holds no certificate.
    #[error("cannot read the admin certificate {} (admin.tls.cert): {reason}. It must hold PEM \"BEGIN CERTIFICATE\" blocks, the server's first.", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file cannot be read.
    #[error("cannot read the admin private key {} (admin.tls.key): {reason}. It must hold one PEM private key (PKCS#8, PKCS#1 or SEC1).", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refuses the pair.
    #[error("cannot use the admin certificate with its key (admin.tls.cert / admin.tls.key): {0}")]
    Mismatch(rustls::Error),
}

/// The acceptor for `cfg`'s certificate and key.
pub fn acceptor(cfg: &AdminTlsConfig) -> Result<tokio_rustls::TlsAcceptor, AdminTlsError> {
    let certificate = |reason: String| AdminTlsError::Certificate {
        path: cfg.cert.clone(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| certificate(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(certificate("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| AdminTlsError::Key {
        path: cfg.key.clone(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(AdminTlsError::Mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(AdminTlsError::Mismatch)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
