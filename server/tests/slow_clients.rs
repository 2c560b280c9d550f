//! Slow and idle clients cannot exhaust the server. HTTP: connections beyond the limit wait until
//! idle ones are closed by the header timeout, a header trickled byte by byte is cut off, and a
//! body that does not arrive in time is refused. gRPC: the same for connections that never send
//! HTTP/2's preface, connections that stop answering pings or trickle a frame, and a unary
//! request message that stops half-way. The server serves normally throughout.

mod common;

use std::time::{Duration, Instant};

use common::{Repo, TestServer};
use nereid_protocol::inference::ServerReadyRequest;
use nereid_server::connections::{GrpcLimits, HttpLimits};
use nereid_server::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes): what it sent.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_cannot_exhaust_the_server() {
    let repo = Repo::new();
    let config = ServeConfig {
        http_limits: HttpLimits {
            max_connections: 16,
            header_timeout: Duration::from_secs(1),
        },
        http_body_timeout: Duration::from_secs(1),
        ..ServeConfig::for_tests(repo.path())
    };
    let server = TestServer::start_with(config, Some(repo)).await;

    // Sixteen idle connections take every slot; a seventeenth client still gets its answer once
    // the header timeout has closed them.
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(TcpStream::connect(server.http).await.expect("connect"));
    }
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(10), server.get("/v2/health/ready"))
        .await
        .expect("answered once the idle connections were closed");
    assert_eq!(reply.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the limit did not hold"
    );
    for mut stream in idle {
        assert!(
            until_closed(&mut stream, Duration::from_secs(5))
                .await
                .is_some(),
            "an idle connection stayed open"
        );
    }

    // A header trickled a byte every 200 ms is cut off after the header timeout.
    let mut slow = TcpStream::connect(server.http).await.expect("connect");
    let started = Instant::now();
    let header = b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: x\r\n";
    let mut cut = false;
    for byte in header {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    if !cut {
        assert!(
            until_closed(&mut slow, Duration::from_secs(5))
                .await
                .is_some(),
            "a trickled header kept its connection"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));

    // A body that stops arriving is refused with a JSON error after the body timeout.
    let mut stalled = TcpStream::connect(server.http).await.expect("connect");
    stalled
        .write_all(
            b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\": [",
        )
        .await
        .expect("write");
    let answer = until_closed(&mut stalled, Duration::from_secs(10))
        .await
        .expect("an answer to the stalled body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("timed out reading the request body"),
        "{text}"
    );

    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

/// HTTP/2's client connection preface followed by an empty SETTINGS frame.
const HTTP2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_grpc_clients_cannot_exhaust_the_server() {
    let repo = Repo::new();
    let config = ServeConfig {
        grpc_limits: GrpcLimits {
            max_connections: 16,
            handshake_timeout: Duration::from_secs(1),
            keepalive_time: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
        },
        ..ServeConfig::for_tests(repo.path())
    };
    let server = TestServer::start_with(config, Some(repo)).await;

    // Sixteen connections that never open HTTP/2 take every slot; a seventeenth client is served
    // once the handshake timeout has closed them.
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(TcpStream::connect(server.grpc).await.expect("connect"));
    }
    let started = Instant::now();
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        let mut client = server.grpc_client().await;
        client.server_ready(ServerReadyRequest {}).await
    })
    .await
    .expect("served once the idle connections were closed")
    .expect("ServerReady");
    assert!(ready.into_inner().ready);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the limit did not hold"
    );
    for mut stream in idle {
        assert!(
            until_closed(&mut stream, Duration::from_secs(5))
                .await
                .is_some(),
            "a connection without a handshake stayed open"
        );
    }

    // A peer that opens HTTP/2 and then never answers a ping is closed after the keep-alive time
    // and timeout.
    let mut silent = TcpStream::connect(server.grpc).await.expect("connect");
    silent
        .write_all(HTTP2_PREFACE_AND_SETTINGS)
        .await
        .expect("write");
    let started = Instant::now();
    let sent = until_closed(&mut silent, Duration::from_secs(10))
        .await
        .expect("a silent peer was closed");
    assert!(started.elapsed() >= Duration::from_millis(900), "{sent:?}");
    // The server's SETTINGS (type 4) came first, and a PING (type 6) was sent before closing.
    assert_eq!(sent.get(3), Some(&4), "{sent:?}");
    assert!(frame_types(&sent).contains(&6), "no ping in {sent:?}");

    // A HEADERS frame trickled a byte every 200 ms holds back the ping's acknowledgement, so the
    // connection is closed the same way.
    let mut slow = TcpStream::connect(server.grpc).await.expect("connect");
    slow.write_all(HTTP2_PREFACE_AND_SETTINGS)
        .await
        .expect("write");
    let started = Instant::now();
    let frame_header = [0u8, 0, 100, 1, 4, 0, 0, 0, 1];
    let mut cut = false;
    for byte in frame_header.iter().cycle().take(40) {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !cut {
        assert!(
            until_closed(&mut slow, Duration::from_secs(1))
                .await
                .is_some(),
            "a trickled frame kept its connection"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(9));

    // A unary request whose message stops arriving is answered DEADLINE_EXCEEDED.
    let tcp = TcpStream::connect(server.grpc).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = axum::http::Request::post(format!(
        "http://{}/inference.GRPCInferenceService/ModelInfer",
        server.grpc
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("send");
    // A message prefix announcing 100 bytes, then only 2 of them.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 100, 10, 3]), false)
        .expect("send data");
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered")
        .expect("response");
    let (parts, mut received) = response.into_parts();
    let mut status = parts.headers.get("grpc-status").cloned();
    let mut message = parts.headers.get("grpc-message").cloned();
    if status.is_none() {
        while let Some(data) = received.data().await {
            data.expect("response data");
        }
        let trailers = received.trailers().await.expect("trailers").expect("some");
        status = trailers.get("grpc-status").cloned();
        message = trailers.get("grpc-message").cloned();
    }
    assert_eq!(
        status.as_ref().map(|s| s.as_bytes()),
        Some(&b"4"[..]),
        "{message:?}"
    );
    let message = message.expect("grpc-message");
    let message = String::from_utf8_lossy(message.as_bytes());
    assert!(message.contains("request"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(500));

    server.assert_serving().await;
    let mut client = server.grpc_client().await;
    assert!(
        client
            .server_ready(ServerReadyRequest {})
            .await
            .expect("ServerReady")
            .into_inner()
            .ready
    );
    server.shutdown().await.expect("clean shutdown");
}

/// The types of the HTTP/2 frames in `bytes` (the server's side of a connection).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let length = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + length;
    }
    types
}
