//! TLS for the coordinator/participant channel: rustls (on ring) through tonic's own
//! TLS support.
//!
//! The coordinator serves with a certificate and its key ([`ServerTls`]); given a
//! client CA it also requires every participant to present a certificate signed by it
//! (mutual TLS). A participant trusts a CA certificate (or, for an `https://` URL
//! without one, the platform's roots), may override the name it checks the server's
//! certificate against, and may present its own certificate ([`ClientTls`]). Bearer
//! tokens still identify participants; under TLS they no longer travel in clear.
//!
//! Every PEM file is parsed when the settings are made (a certificate against its
//! key too), so a missing, malformed or mismatched file is refused with its name
//! before anything listens or connects. A handshake that fails later (an untrusted
//! server, a refused client certificate) is a [`tls_failure`]: retrying does not heal
//! it, so a participant gives up at once instead of retrying until its timeout.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, ServerTlsConfig};

use crate::error::{chain, Error, Result};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate chain and its private key, both PEM (checked to belong together).
#[derive(Clone)]
pub struct Identity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for Identity {
    /// The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// A certificate chain and its key from PEM text; `cert_source` and `key_source`
    /// name them in errors.
    pub fn from_pem(
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
        cert_source: &str,
        key_source: &str,
    ) -> Result<Self> {
        let (cert_pem, key_pem) = (cert_pem.into(), key_pem.into());
        let certs = certificates(&cert_pem, cert_source)?;
        let key = private_key(&key_pem, key_source)?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| Error::Config(format!("{key_source}: unsupported private key: {e}")))?;
        rustls::sign::CertifiedKey::new(certs, signer)
            .keys_match()
            .map_err(|e| {
                Error::Config(format!(
                    "{cert_source} and {key_source}: the certificate is not the key's ({e})"
                ))
            })?;
        Ok(Identity { cert_pem, key_pem })
    }

    /// Read a certificate chain file and its key file.
    pub fn read(cert: &Path, key: &Path) -> Result<Self> {
        Self::from_pem(
            read(cert)?,
            read(key)?,
            &cert.display().to_string(),
            &key.display().to_string(),
        )
    }

    fn to_tonic(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// CA certificates, PEM (each checked to be a usable trust anchor).
#[derive(Clone, Debug)]
pub struct CaCertificates(Vec<u8>);

impl CaCertificates {
    /// CA certificates from PEM text; `source` names it in errors.
    pub fn from_pem(pem: impl Into<Vec<u8>>, source: &str) -> Result<Self> {
        let pem = pem.into();
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(&pem, source)? {
            roots.add(cert).map_err(|e| {
                Error::Config(format!("{source}: not a usable CA certificate: {e}"))
            })?;
        }
        Ok(CaCertificates(pem))
    }

    /// Read a CA certificate file.
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_pem(read(path)?, &path.display().to_string())
    }

    fn to_tonic(&self) -> Certificate {
        Certificate::from_pem(&self.0)
    }
}

/// The coordinator's TLS: its certificate and key, and optionally the CA its
/// participants' certificates must be signed by (mutual TLS).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub identity: Identity,
    /// When set, a participant without a certificate signed by this CA is refused
    /// during the handshake.
    pub client_ca: Option<CaCertificates>,
}

impl ServerTls {
    /// Read the certificate, key and optional client CA files.
    pub fn read(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self> {
        Ok(ServerTls {
            identity: Identity::read(cert, key)?,
            client_ca: client_ca.map(CaCertificates::read).transpose()?,
        })
    }

    /// Whether participants must present a certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    pub(crate) fn to_tonic(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(self.identity.to_tonic())
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca {
            Some(ca) => config.client_ca_root(ca.to_tonic()),
            None => config,
        }
    }
}

/// A participant's TLS: the CA it trusts for the coordinator's certificate (the
/// platform's roots when `None`), the name to check that certificate against (the
/// URL's host when `None`), and its own certificate for mutual TLS.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca: Option<CaCertificates>,
    pub domain: Option<String>,
    pub identity: Option<Identity>,
}

impl ClientTls {
    fn to_tonic(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
        config = match &self.ca {
            Some(ca) => config.ca_certificate(ca.to_tonic()),
            None => config.with_native_roots(),
        };
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some(identity) = &self.identity {
            config = config.identity(identity.to_tonic());
        }
        config
    }
}

/// The endpoint of a coordinator `url`: plain for `http://`, TLS for `https://`
/// (with `tls`, or the platform's roots without it). TLS settings with an `http://`
/// URL are refused rather than silently unused.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Config(format!("coordinator URL `{url}`: {}", chain(&e))))?;
    let https = endpoint.uri().scheme_str() == Some("https");
    let config = match (https, tls) {
        (false, None) => return Ok(endpoint),
        (false, Some(_)) => {
            return Err(Error::Config(format!(
                "coordinator URL `{url}`: TLS settings (a CA or client certificate) were given, \
                 so the URL must start with https://"
            )))
        }
        (true, None) => ClientTls::default().to_tonic(),
        (true, Some(tls)) => tls.to_tonic(),
    };
    endpoint
        .tls_config(config)
        .map_err(|e| Error::Config(format!("TLS for `{url}`: {}", chain(&e))))
}

/// The TLS failure in `err`'s source chain, described, if there is one: a handshake
/// that failed (an untrusted or misnamed certificate, a client certificate refused
/// or missing, a peer that does not speak TLS).
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>());
        if let Some(tls) = e.downcast_ref::<rustls::Error>().or(inner) {
            return Some(tls.to_string());
        }
        next = e.source();
    }
    None
}

/// The error of a first call (`call`) to the coordinator at `url` that failed with
/// `status`. Under TLS 1.3 a client's handshake ends before the server checks the
/// client's certificate, so a coordinator requiring mutual TLS refuses a participant
/// without a certificate of its CA by closing the connection: the client only sees
/// the connection closed at its first call, which is said here (as is the likely
/// cause of the same over plain HTTP: a coordinator that serves TLS).
pub fn first_call_failed(url: &str, call: &'static str, status: tonic::Status) -> Error {
    use tonic::Code;
    let https = url.starts_with("https://");
    // Over plain HTTP to a TLS server the connection may also end in an HTTP/2
    // protocol error (the server's TLS alert read as a frame).
    let closed = match status.code() {
        Code::Cancelled | Code::Unavailable | Code::Unknown => true,
        Code::Internal => !https,
        _ => false,
    };
    if !closed || tls_failure(&status).is_some() {
        return Error::Status { call, status };
    }
    let why = if https {
        "under mutual TLS this is how it refuses a client without a certificate (--tls-cert, \
         --tls-key) or with one not signed by its client CA"
    } else {
        "if it serves TLS, the URL must start with https://"
    };
    Error::Connection(format!(
        "{url}: the coordinator closed the connection at {call} ({}); {why}",
        crate::error::describe(&status)
    ))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file (at least one).
fn certificates(pem: &[u8], source: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{source}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{source}: no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it"
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(pem: &[u8], source: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        Error::Config(match e {
            pem::Error::NoItemsFound => format!(
                "{source}: no PEM private key (`-----BEGIN PRIVATE KEY-----`, RSA or EC) in it"
            ),
            e => format!("{source}: not a PEM private key file: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap(), key)
    }

    #[test]
    fn pem_files_are_checked_up_front_and_named_in_errors() {
        let (cert, key) = ca();
        let other = rcgen::KeyPair::generate().unwrap();
        Identity::from_pem(cert.pem(), key.serialize_pem(), "c.pem", "k.pem").unwrap();
        CaCertificates::from_pem(cert.pem(), "ca.pem").unwrap();
        for (cert_pem, key_pem, why) in [
            (
                "".to_string(),
                key.serialize_pem(),
                "c.pem: no PEM certificate",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".into(),
                key.serialize_pem(),
                "c.pem: not a PEM certificate file",
            ),
            (cert.pem(), "junk".into(), "k.pem: no PEM private key"),
            (cert.pem(), cert.pem(), "k.pem: no PEM private key"),
            (
                cert.pem(),
                other.serialize_pem(),
                "c.pem and k.pem: the certificate is not the key's",
            ),
        ] {
            let err = Identity::from_pem(cert_pem, key_pem, "c.pem", "k.pem")
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
        }
        let err = CaCertificates::from_pem(key.serialize_pem(), "ca.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.pem: no PEM certificate"), "{err}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = CaCertificates::from_pem(garbage, "ca.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.pem: not a usable CA certificate"), "{err}");
        let err = ServerTls::read(Path::new("/nonexistent/c.pem"), Path::new("k.pem"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }

    #[test]
    fn tls_settings_need_an_https_url() {
        let tls = ClientTls::default();
        let err = endpoint("http://127.0.0.1:1", Some(&tls))
            .unwrap_err()
            .to_string();
        assert!(err.contains("must start with https://"), "{err}");
        endpoint("http://127.0.0.1:1", None).unwrap();
        let err = endpoint("not a url", None).unwrap_err().to_string();
        assert!(err.contains("coordinator URL `not a url`"), "{err}");
    }

    #[test]
    fn a_tls_failure_is_found_in_the_source_chain() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(tls_failure(&io).unwrap().contains("UnknownIssuer"));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_failure(&refused), None);
    }
}
