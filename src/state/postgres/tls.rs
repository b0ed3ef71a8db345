//! TLS to PostgreSQL over rustls (aws-lc-rs, as the rest of the bridge), for tokio-postgres.
//!
//! `sslmode` in `[state] url` decides whether TLS is used: `disable` never, `prefer` (the
//! default) when the server offers it, `require` always. What is checked follows libpq where
//! tokio-postgres lets it: with `prefer` nothing (a server, or anyone on the path, that answers
//! "no TLS" gets plain text anyway, so a checked certificate would prove nothing); with
//! `require` what `state.tls_verify` says — `full` (the default: chain and host name, libpq's
//! `verify-full`), `ca` (chain only, `verify-ca`) or `none` (libpq's `require`) — against
//! `state.tls_ca_file` or else the system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured).
//!
//! Our own `MakeTlsConnect` rather than the tokio-postgres-rustls crate: that crate's 0.14
//! parses certificates with x509-cert 0.2, which would add second versions of der, spki and
//! const-oid; the few lines here use tokio-rustls and x509-parser, both already in the tree.

use crate::config::{StateTls, TlsVerify};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use sha2::Digest;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// Why TLS to the database cannot be set up; each message names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file cannot be read or parsed.
    #[error("cannot read the CA certificates {} (state.tls_ca_file): {source}", path.display())]
    ReadCa {
        /// The file named by `state.tls_ca_file`.
        path: PathBuf,
        /// Why reading it failed.
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no certificate.
    #[error("no certificate in {} (state.tls_ca_file): it must hold PEM \"BEGIN CERTIFICATE\" blocks", path.display())]
    NoCa {
        /// The file named by `state.tls_ca_file`.
        path: PathBuf,
    },
    /// A certificate in the CA file cannot be a trust anchor.
    #[error("a certificate in {} (state.tls_ca_file) cannot be trusted as a CA: {source}", path.display())]
    BadCa {
        /// The file named by `state.tls_ca_file`.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// No CA file is configured and the system has no trusted roots.
    #[error(
        "no trusted CA certificates found on this system{detail}: install the ca-certificates \
         package, or set state.tls_ca_file to the PEM file of the CA that signed the database \
         server's certificate"
    )]
    NoSystemRoots {
        /// What went wrong while looking (empty when nothing did).
        detail: String,
    },
    /// rustls refuses the roots or the protocol versions.
    #[error("cannot set up TLS to the state database: {0}")]
    Setup(String),
}

/// Makes a TLS connector for each new connection of the pool; cheap to clone.
#[derive(Clone)]
pub(super) struct MakeRustls {
    config: Arc<ClientConfig>,
    /// What the certificate was checked against, for errors.
    checked: Arc<Checked>,
}

/// How the server's certificate is checked, as errors tell the operator.
#[derive(Debug)]
struct Checked {
    verify: TlsVerify,
    ca_file: Option<PathBuf>,
}

/// The connector for `sslmode` `mode` with `tls`'s checks (which only `require` uses).
pub(super) fn connector(mode: SslMode, tls: &StateTls) -> Result<MakeRustls, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verify = if mode == SslMode::Require {
        tls.verify
    } else {
        TlsVerify::None
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        TlsVerify::None => Arc::new(Unchecked(provider.signature_verification_algorithms)),
        TlsVerify::Full | TlsVerify::Ca => {
            let roots = Arc::new(roots(tls.ca_file.as_ref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsSetupError::Setup(e.to_string()))?;
            if verify == TlsVerify::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // As libpq 17: PostgreSQL 17 insists on it for `sslnegotiation=direct`; older servers
    // ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustls {
        config: Arc::new(config),
        checked: Arc::new(Checked {
            verify,
            ca_file: tls.ca_file.clone(),
        }),
    })
}

/// The roots in `ca_file`, or the system's when none is given.
fn roots(ca_file: Option<&PathBuf>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let Some(path) = ca_file else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let detail = found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(TlsSetupError::NoSystemRoots { detail });
        }
        return Ok(roots);
    };
    let read = |source| TlsSetupError::ReadCa {
        path: path.clone(),
        source,
    };
    for cert in CertificateDer::pem_file_iter(path).map_err(read)? {
        roots
            .add(cert.map_err(read)?)
            .map_err(|source| TlsSetupError::BadCa {
                path: path.clone(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCa { path: path.clone() });
    }
    Ok(roots)
}

/// `state.tls_verify = "ca"`: the chain must lead to a trusted root; the name is not looked
/// at (webpki checks the name last, so a name error means the chain was good).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`, or `require` with `state.tls_verify = "none"`: any certificate (the handshake's
/// own signatures are still checked, so the session is with whoever holds the key).
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = HandshakeError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, HandshakeError> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|_| HandshakeError::Name(domain.to_string()))?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
            checked: self.checked.clone(),
        })
    }
}

/// One TLS handshake with the server named in the URL.
pub(super) struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    checked: Arc<Checked>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            match self.connector.connect(self.name, stream).await {
                Ok(stream) => Ok(RustlsStream(stream)),
                Err(e) => Err(HandshakeError::of(e, &self.checked)),
            }
        })
    }
}

/// Why a TLS handshake with the database failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The server's certificate failed the checks `state.tls_verify` asks for.
    #[error("certificate verification failed (state.tls_verify = \"{mode}\"): {reason}; {hint}")]
    Certificate {
        /// `state.tls_verify`.
        mode: &'static str,
        /// rustls' reason.
        reason: rustls::Error,
        /// What to change.
        hint: String,
    },
    /// The host in the URL is neither a DNS name nor an IP address.
    #[error("{0:?} is not a host name TLS can check; name the server by DNS name or IP address")]
    Name(String),
    /// Anything else (the connection broke, no common protocol version or cipher).
    #[error("TLS handshake failed: {0}")]
    Other(io::Error),
}

impl HandshakeError {
    /// `e` from tokio-rustls, explained for `checked`.
    fn of(e: io::Error, checked: &Checked) -> HandshakeError {
        let reason = match e.get_ref().and_then(|inner| inner.downcast_ref()) {
            Some(rustls::Error::InvalidCertificate(reason)) => reason.clone(),
            _ => return HandshakeError::Other(e),
        };
        let roots = match &checked.ca_file {
            Some(path) => format!("the CA certificates in {}", path.display()),
            None => "the system's trusted roots".to_string(),
        };
        let hint = match reason {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server's certificate is not signed by {roots}: set state.tls_ca_file to the \
                 PEM file of the CA that signed it (for Amazon RDS, its global-bundle.pem)"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the certificate does not name the host in state.url: connect by a name it holds, \
                 or set state.tls_verify = \"ca\" to check the chain only"
                    .to_string()
            }
            _ => format!("checked against {roots}"),
        };
        HandshakeError::Certificate {
            mode: match checked.verify {
                TlsVerify::Full => "full",
                TlsVerify::Ca => "ca",
                TlsVerify::None => "none",
            },
            reason: rustls::Error::InvalidCertificate(reason),
            hint,
        }
    }
}

/// A TLS session with the database.
pub(super) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    /// `tls-server-end-point` (RFC 5929), so SCRAM can bind the password exchange to this
    /// session (`SCRAM-SHA-256-PLUS`) and a man in the middle cannot relay it.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| end_point_hash(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// The certificate's hash with its signature's hash function (SHA-256 for MD5 and SHA-1),
/// or `None` for algorithms RFC 5929 gives no hash for (Ed25519, RSA-PSS).
fn end_point_hash(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_parser::oid_registry::{
        OID_PKCS1_MD5WITHRSAENC, OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let algorithm = &parsed.signature_algorithm.algorithm;
    let der = cert.as_ref();
    if [
        OID_PKCS1_MD5WITHRSAENC,
        OID_PKCS1_SHA1WITHRSA,
        OID_PKCS1_SHA256WITHRSA,
        OID_SIG_ECDSA_WITH_SHA256,
    ]
    .contains(algorithm)
    {
        Some(sha2::Sha256::digest(der).to_vec())
    } else if [OID_PKCS1_SHA384WITHRSA, OID_SIG_ECDSA_WITH_SHA384].contains(algorithm) {
        Some(sha2::Sha384::digest(der).to_vec())
    } else if [OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA512].contains(algorithm) {
        Some(sha2::Sha512::digest(der).to_vec())
    } else {
        None
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An error shown with its causes (tokio-postgres says only "error performing TLS handshake"
/// and keeps the reason as a source, which one-line logs and start-up errors would drop).
#[derive(Debug)]
pub(super) struct WithCauses<E>(pub E);

impl<E: std::error::Error> std::fmt::Display for WithCauses<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            // deadpool repeats its source in its own message.
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&shown)
    }
}

impl<E: std::error::Error> std::error::Error for WithCauses<E> {}
