//! Test certificates made at test time with rcgen (no private key is committed): a
//! CA, a server certificate for `localhost` and 127.0.0.1 signed by it, and client
//! certificates signed by it. Shared by the deploy tests and the CLI tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A certificate and its key, PEM.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// Write `<stem>.crt` and `<stem>.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }
}

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, cn: &str) -> Pem {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1 (and `extra` names).
    pub fn server(&self, extra: &[&str]) -> Pem {
        let mut names = vec!["localhost", "127.0.0.1"];
        names.extend_from_slice(extra);
        self.sign(&names, ExtendedKeyUsagePurpose::ServerAuth, "coordinator")
    }

    /// A client certificate named `cn`.
    pub fn client(&self, cn: &str) -> Pem {
        self.sign(&[], ExtendedKeyUsagePurpose::ClientAuth, cn)
    }
}
