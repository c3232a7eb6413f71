//! The roots a TLS client trusts: the web's, or a PEM CA file an operator
//! names (the PostgreSQL store's `store.ca-file`, the OpenTelemetry
//! collector's `OTEL_EXPORTER_OTLP_CERTIFICATE`).

use std::path::Path;

/// The certificates of `ca_file` (named `what` in errors), or the web
/// roots when there is none. A file that cannot be read, is not PEM, or
/// holds no certificate is an error.
pub(crate) fn roots(ca_file: Option<&Path>, what: &str) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{what} {} is not PEM: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("{what} {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{what} {} holds no certificate", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}
