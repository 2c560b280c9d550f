//! TLS for the front ends: a server certificate and key, and optionally a CA whose certificates
//! clients must present (mutual TLS). gRPC takes Triton's flags (`--grpc-use-ssl`,
//! `--grpc-server-cert`, `--grpc-server-key`, `--grpc-root-cert`, `--grpc-use-ssl-mutual`);
//! HTTP takes the same names with `http` (Triton's HTTP front end has no TLS of its own). Both
//! use rustls with the aws-lc-rs provider; certificates and keys are PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One front end's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    if path.as_os_str().is_empty() {
        return Err(format!("{what} is required with TLS"));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// The rustls server configuration of the HTTP front end.
pub fn http_config(files: &TlsFiles, flag: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs =
        CertificateDer::pem_slice_iter(&read(&files.cert, &format!("--{flag}-server-cert"))?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--{flag}-server-cert: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key, &format!("--{flag}-server-key"))?)
        .map_err(|e| format!("--{flag}-server-key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(ca, &format!("--{flag}-root-cert"))?) {
                roots
                    .add(cert.map_err(|e| format!("--{flag}-root-cert: {e}"))?)
                    .map_err(|e| format!("--{flag}-root-cert: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("--{flag}-root-cert: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--{flag}-server-cert/--{flag}-server-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// tonic's TLS configuration of the gRPC front end.
pub fn grpc_config(files: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig, String> {
    let identity = tonic::transport::Identity::from_pem(
        read(&files.cert, "--grpc-server-cert")?,
        read(&files.key, "--grpc-server-key")?,
    );
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(
            ca,
            "--grpc-root-cert",
        )?));
    }
    Ok(config)
}
