//! Explicit FTPS: one rustls server config for the whole listener whose certificate can be
//! swapped while sessions run (SIGHUP), so a renewed certificate needs no restart and a
//! broken renewal keeps the working one.

use crate::config::FtpTlsConfig;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the FTPS certificate or key cannot be used; each message names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or parsed.
    #[error("cannot read the FTPS certificate {} (ftp.tls.cert): {source}", path.display())]
    ReadCertificate {
        /// The file named by `ftp.tls.cert`.
        path: PathBuf,
        /// Why reading it failed.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {} (ftp.tls.cert): it must hold PEM \"BEGIN CERTIFICATE\" blocks, the server's first", path.display())]
    NoCertificate {
        /// The file named by `ftp.tls.cert`.
        path: PathBuf,
    },
    /// The key file cannot be read or parsed.
    #[error("cannot read the FTPS private key {} (ftp.tls.key): {source}. It must hold one PEM private key (PKCS#8, PKCS#1 or SEC1).", path.display())]
    ReadKey {
        /// The file named by `ftp.tls.key`.
        path: PathBuf,
        /// Why reading it failed.
        source: rustls::pki_types::pem::Error,
    },
    /// The key does not fit the certificate, or rustls refuses them.
    #[error("cannot use the FTPS certificate {} with the key {} (ftp.tls.cert / ftp.tls.key): {source}", cert.display(), key.display())]
    Mismatch {
        /// The file named by `ftp.tls.cert`.
        cert: PathBuf,
        /// The file named by `ftp.tls.key`.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// rustls refuses the protocol versions (a build without TLS 1.2/1.3 support).
    #[error("cannot set up TLS: {0}")]
    Setup(#[source] rustls::Error),
}

/// The certificate presented to new TLS handshakes.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl Certificates {
    /// Loads `[ftp.tls]`'s certificate chain and key; the message names the file to fix.
    pub fn load(cfg: &FtpTlsConfig) -> Result<Arc<Certificates>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = certified_key(&cfg.cert, &cfg.key, &provider)?;
        Ok(Arc::new(Certificates {
            current: ArcSwap::from_pointee(key),
            provider,
        }))
    }

    /// Loads `cfg`'s files again and uses them for new handshakes; on error the certificate
    /// in use stays.
    pub fn reload(&self, cfg: &FtpTlsConfig) -> Result<(), TlsError> {
        let key = certified_key(&cfg.cert, &cfg.key, &self.provider)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// A TLS 1.2 + 1.3 server config presenting the current certificate (no client
    /// certificates; session resumption through rustls' in-memory cache, which data
    /// connections of clients like FileZilla rely on).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.key_log = Arc::new(rustls::NoKeyLog {});
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ReadCertificate {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_path_buf(),
        source,
    })?;
    CertifiedKey::from_der(chain, private_key, provider).map_err(|source| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}
