//! TLS on a listener from `--tls-cert` / `--tls-key`, for deployments that terminate TLS
//! at the server rather than at a proxy in front of it. rustls on ring, like the rest of
//! the workspace; the handshakes run under the listener's policy ([`crate::listener`]).

use std::path::Path;
use std::sync::Arc;

/// The settings of `--tls-cert` / `--tls-key`: both files, or neither (`None`:
/// plaintext). `alpn` is the one protocol the listener speaks (`h2` for gRPC,
/// `http/1.1` for HTTP). Read and checked now, so a bad file stops start-up instead of
/// the first connection; every failure names the file and what is wrong with it.
pub fn load(
    cert: Option<&Path>,
    key: Option<&Path>,
    alpn: &[u8],
) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => server_config(cert, key, alpn).map(Some),
        (Some(_), None) => Err("--tls-cert needs --tls-key (ENCLAVE_TLS_KEY)".into()),
        (None, Some(_)) => Err("--tls-key needs --tls-cert (ENCLAVE_TLS_CERT)".into()),
    }
}

/// PEM files, the certificate file with the chain after the leaf.
fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading the TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the TLS certificate {} holds no certificate",
            cert.display()
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the TLS key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| {
            format!(
                "the TLS certificate {} or key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}
