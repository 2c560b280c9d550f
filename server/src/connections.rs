//! The front ends' connections: slow or idle clients cannot exhaust the server.
//!
//! HTTP runs on an accept loop of our own (rather than `axum::serve`):
//! - At most `max_connections` connections are open at once; beyond that, new connections wait
//!   in the kernel's accept queue until one closes (nothing is accepted and then starved).
//! - A client must send a request's whole header within `header_timeout` of the server waiting
//!   for it, idle keep-alive time included; otherwise the connection is closed (hyper's header
//!   read timeout). Bodies are bounded in time by `HttpState::body_timeout` in `http`.
//! - Small responses go out at once (`TCP_NODELAY`: no Nagle delay on the tail).
//! - When `stop` completes, the listener closes (new connections are refused), each connection
//!   finishes its request in flight and closes, and `serve` returns once all have.
//!
//! gRPC (HTTP/2, served by tonic) gets the same protections in HTTP/2's terms:
//! - the same kind of connection limit, applied to the stream of accepted connections;
//! - the client's connection preface and first frame header must arrive within
//!   `handshake_timeout`;
//! - after that the server pings a connection that has sent nothing for `keepalive_time` and
//!   closes it if the acknowledgement does not come within `keepalive_timeout`. A client that
//!   trickles a frame byte by byte cannot acknowledge (its acknowledgement queues behind the
//!   unfinished frame), so it is closed the same way;
//! - a unary call's request message must arrive within `body_timeout` of its headers
//!   (DEADLINE_EXCEEDED otherwise); streaming calls are exempt, their messages come when they come.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Connection limits of the HTTP front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// Open HTTP connections at most, unless `--http-max-connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Time to send a request header, unless `--http-header-timeout-secs` says otherwise.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `stop` completes and every connection has finished.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl Future<Output = ()>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&open).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(err) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%err, "failed to accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(%err, "failed to set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let Some(acceptor) = tls.clone() else {
            let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(%err, "HTTP connection ended with an error");
                }
                drop(permit);
            });
            continue;
        };
        // TLS: the handshake is bounded by the header timeout, then the connection is served
        // like a plain one.
        let (watcher, http, timeout) = (graceful.watcher(), http.clone(), limits.header_timeout);
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let connection =
                        watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                    if let Err(err) = connection.await {
                        tracing::debug!(%err, "HTTPS connection ended with an error");
                    }
                }
                Ok(Err(err)) => tracing::debug!(%err, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Connection limits of the gRPC front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    pub max_connections: usize,
    /// Time to send HTTP/2's connection preface and the first frame header.
    pub handshake_timeout: Duration,
    /// Quiet time after which the server pings a connection.
    pub keepalive_time: Duration,
    /// Time to acknowledge a ping before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Time to send a unary call's request message after its headers.
    pub body_timeout: Duration,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_GRPC_HANDSHAKE_TIMEOUT,
            keepalive_time: DEFAULT_GRPC_KEEPALIVE_TIME,
            keepalive_timeout: DEFAULT_GRPC_KEEPALIVE_TIMEOUT,
            body_timeout: DEFAULT_GRPC_BODY_TIMEOUT,
        }
    }
}

/// Time to open an HTTP/2 connection, unless `--grpc-handshake-timeout-secs` says otherwise.
pub const DEFAULT_GRPC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Quiet time before a ping, unless `--grpc-keepalive-time` says otherwise. Triton's default is
/// two hours, which lets a dead or stalled peer hold its connection that long.
pub const DEFAULT_GRPC_KEEPALIVE_TIME: Duration = Duration::from_secs(30);
/// Time to acknowledge a ping, unless `--grpc-keepalive-timeout` says otherwise (Triton's).
pub const DEFAULT_GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Time to send a unary request message, unless `--grpc-body-timeout-secs` says otherwise.
pub const DEFAULT_GRPC_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// HTTP/2's client preface (24 bytes) and the header of the SETTINGS frame that follows it.
const HTTP2_HANDSHAKE_BYTES: usize = 24 + 9;

/// The gRPC listener's connections, at most `limits.max_connections` open at once: the next
/// connection is accepted only when an open one has closed.
pub fn grpc_incoming(
    listener: TcpListener,
    limits: GrpcLimits,
) -> impl futures_util::Stream<Item = io::Result<GrpcConnection>> {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    futures_util::stream::unfold((listener, open), move |(listener, open)| async move {
        let permit = Arc::clone(&open).acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::warn!(%err, "failed to set TCP_NODELAY");
                    }
                    let connection = GrpcConnection {
                        tcp,
                        handshake: Some(Handshake {
                            bytes_left: HTTP2_HANDSHAKE_BYTES,
                            deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                        }),
                        _permit: permit,
                    };
                    return Some((Ok(connection), (listener, open)));
                }
                Err(err) => {
                    tracing::warn!(%err, "failed to accept a gRPC connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

struct Handshake {
    bytes_left: usize,
    deadline: Pin<Box<Sleep>>,
}

/// An accepted gRPC connection: holds its place under the connection limit until dropped, and
/// fails its reads once the handshake is overdue.
pub struct GrpcConnection {
    tcp: TcpStream,
    handshake: Option<Handshake>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for GrpcConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some(handshake) = &mut this.handshake {
                    let read = buf.filled().len() - before;
                    handshake.bytes_left = handshake.bytes_left.saturating_sub(read);
                    if handshake.bytes_left == 0 {
                        this.handshake = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let overdue = this
                    .handshake
                    .as_mut()
                    .is_some_and(|handshake| handshake.deadline.as_mut().poll(cx).is_ready());
                if overdue {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the HTTP/2 handshake did not arrive in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for GrpcConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for GrpcConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

/// Bounds the time a unary call's request message may take to arrive (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct UnaryBodyDeadlineLayer {
    pub limit: Duration,
}

impl<S> tower::Layer<S> for UnaryBodyDeadlineLayer {
    type Service = UnaryBodyDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UnaryBodyDeadline {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UnaryBodyDeadline<S> {
    inner: S,
    limit: Duration,
}

/// The gRPC methods whose request is a stream of messages.
const STREAMING_METHODS: &[&str] = &["/inference.GRPCInferenceService/ModelStreamInfer"];

impl<S> tower::Service<axum::http::Request<tonic::body::Body>> for UnaryBodyDeadline<S>
where
    S: tower::Service<axum::http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<tonic::body::Body>) -> Self::Future {
        if STREAMING_METHODS.contains(&request.uri().path()) {
            return self.inner.call(request);
        }
        let limit = self.limit;
        self.inner.call(request.map(|body| {
            tonic::body::Body::new(DeadlineBody {
                inner: body,
                limit,
                deadline: Box::pin(tokio::time::sleep(limit)),
            })
        }))
    }
}

/// A request body that fails with DEADLINE_EXCEEDED when it has not ended by its deadline.
struct DeadlineBody {
    inner: tonic::body::Body,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                    "timed out reading the request message: it did not arrive within {} s",
                    this.limit.as_secs()
                )))))
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
