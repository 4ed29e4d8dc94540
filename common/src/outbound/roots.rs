//! Certificate authorities the operator adds to the public roots (`worker.extra_ca_file`).

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::error_chain;

/// Certificate authorities trusted besides the public roots, for the destinations the
/// operator configures (providers and tools) — never for tenants' webhook URLs.
#[derive(Clone, Default)]
pub struct ExtraRoots(Arc<[Root]>);

/// One certificate as reqwest's clients take it and as the provider lanes' TLS does.
struct Root {
    certificate: reqwest::Certificate,
    der: CertificateDer<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtraRootsError {
    #[error("not a PEM bundle of certificates: {0}")]
    Pem(String),
    #[error("no certificate in the file")]
    Empty,
    #[error("a certificate the TLS client refuses: {0}")]
    Refused(String),
}

impl std::fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExtraRoots({} certificates)", self.0.len())
    }
}

impl ExtraRoots {
    /// The certificates of a PEM bundle (read once, as DER), each checked by building a
    /// client that trusts it.
    pub fn from_pem(pem: &[u8]) -> Result<Self, ExtraRootsError> {
        let ders = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ExtraRootsError::Pem(e.to_string()))?;
        if ders.is_empty() {
            return Err(ExtraRootsError::Empty);
        }
        let roots = ders
            .into_iter()
            .map(|der| {
                let certificate = reqwest::Certificate::from_der(&der)
                    .map_err(|e| ExtraRootsError::Pem(error_chain(&e)))?;
                Ok(Root { certificate, der })
            })
            .collect::<Result<_, ExtraRootsError>>()?;
        let roots = Self(roots);
        roots
            .trusted_by(reqwest::Client::builder())
            .build()
            .map_err(|e| ExtraRootsError::Refused(error_chain(&e)))?;
        Ok(roots)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn trusted_by(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        self.0.iter().fold(builder, |builder, root| {
            builder.add_root_certificate(root.certificate.clone())
        })
    }

    /// The certificates as DER, for a TLS configuration of our own.
    pub(super) fn ders(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.0.iter().map(|root| &root.der)
    }
}
