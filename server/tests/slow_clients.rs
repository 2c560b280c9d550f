//! Slow and idle HTTP clients cannot exhaust the server: connections beyond the limit wait until
//! idle ones are closed by the header timeout, a header trickled byte by byte is cut off, and a
//! body that does not arrive in time is refused; the server serves normally throughout.

mod common;

use std::time::{Duration, Instant};

use common::{Repo, TestServer};
use nereid_server::connections::HttpLimits;
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
