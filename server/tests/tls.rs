//! TLS and mutual TLS on both front ends, with certificates made in the test (rcgen): a client
//! with a certificate from the trusted CA is served over HTTPS and gRPC over TLS; a client with
//! no certificate, or one from another CA, is refused in the handshake; a plain-text client gets
//! nothing; the server serves on.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Repo, TestServer};
use nereid_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nereid_protocol::inference::ServerReadyRequest;
use nereid_server::tls::TlsFiles;
use nereid_server::ServeConfig;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let client = leaf(vec!["client".into()]);
    // A client certificate from a CA the server does not trust.
    let other_key = KeyPair::generate().expect("key");
    let stranger_key = KeyPair::generate().expect("key");
    let mut other_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = Issuer::new(other_params, other_key);
    let stranger = CertificateParams::new(vec!["client".to_string()])
        .expect("params")
        .signed_by(&stranger_key, &other)
        .expect("signed");
    Pki {
        ca: ca_cert.pem(),
        server,
        client,
        stranger: (stranger.pem(), stranger_key.serialize_pem()),
    }
}

/// One HTTPS GET of /v2/health/ready with `identity` (certificate, key): the status line, or the
/// handshake's error.
async fn https_ready(
    address: std::net::SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("CA pem")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client auth"),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_string())
}

async fn grpc_ready(
    address: std::net::SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<bool, String> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    let channel = tonic::transport::Channel::from_shared(format!("https://{address}"))
        .expect("uri")
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    GrpcInferenceServiceClient::new(channel)
        .server_ready(ServerReadyRequest {})
        .await
        .map(|r| r.into_inner().ready)
        .map_err(|e| e.to_string())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_the_trusted_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = TlsFiles {
        cert: write(dir.path(), "server.pem", &pki.server.0),
        key: write(dir.path(), "server.key", &pki.server.1),
        client_ca: Some(write(dir.path(), "ca.pem", &pki.ca)),
    };
    let repo = Repo::new();
    let config = ServeConfig {
        http_tls: Some(files.clone()),
        grpc_tls: Some(files),
        ..ServeConfig::for_tests(repo.path())
    };
    let server = TestServer::start_with(config, Some(repo)).await;

    assert_eq!(
        https_ready(server.http, &pki.ca, Some(&pki.client)).await,
        Ok("HTTP/1.1 200 OK".to_string())
    );
    assert_eq!(
        grpc_ready(server.grpc, &pki.ca, Some(&pki.client)).await,
        Ok(true)
    );

    for (what, identity) in [
        ("no certificate", None),
        ("another CA's", Some(&pki.stranger)),
    ] {
        assert!(
            https_ready(server.http, &pki.ca, identity).await.is_err(),
            "HTTPS with {what}"
        );
        assert!(
            grpc_ready(server.grpc, &pki.ca, identity).await.is_err(),
            "gRPC with {what}"
        );
    }
    // Plain text gets no HTTP answer.
    let mut plain = TcpStream::connect(server.http).await.expect("connect");
    plain
        .write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        plain.read_to_end(&mut reply),
    )
    .await;
    assert!(!reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");

    assert_eq!(
        https_ready(server.http, &pki.ca, Some(&pki.client)).await,
        Ok("HTTP/1.1 200 OK".to_string()),
        "still serving"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_client_certificates_and_missing_files() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = TlsFiles {
        cert: write(dir.path(), "server.pem", &pki.server.0),
        key: write(dir.path(), "server.key", &pki.server.1),
        client_ca: None,
    };
    let repo = Repo::new();
    let config = ServeConfig {
        http_tls: Some(files.clone()),
        grpc_tls: Some(files),
        ..ServeConfig::for_tests(repo.path())
    };
    let server = TestServer::start_with(config, Some(repo)).await;
    assert_eq!(
        https_ready(server.http, &pki.ca, None).await,
        Ok("HTTP/1.1 200 OK".to_string())
    );
    assert_eq!(grpc_ready(server.grpc, &pki.ca, None).await, Ok(true));
    drop(server);

    let repo = Repo::new();
    let config = ServeConfig {
        grpc_tls: Some(TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("server.key"),
            client_ca: None,
        }),
        ..ServeConfig::for_tests(repo.path())
    };
    let err = nereid_server::start(config, std::future::pending())
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
}
