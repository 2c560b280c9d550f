//! The access log (`--access-log`): one line per HTTP or gRPC request, at `info` level under the
//! `nereid::access` target, with the method, path, status (the gRPC status when the response
//! headers carry it, as they do for errors) and the time to the response's headers.
//!
//! A tower layer, the same for both front ends; a disabled layer passes requests straight on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{Request, Response};

/// Wraps a front end's service; logs nothing unless `enabled`.
#[derive(Debug, Clone, Copy)]
pub struct AccessLogLayer {
    pub enabled: bool,
    /// `http` or `grpc`, in each line.
    pub protocol: &'static str,
}

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            layer: *self,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    layer: AccessLogLayer,
}

impl<S, B, R> tower::Service<Request<B>> for AccessLog<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !self.layer.enabled {
            return Box::pin(self.inner.call(request));
        }
        // The request goes into the service; keep what the line needs.
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let future = self.inner.call(request);
        let protocol = self.layer.protocol;
        let started = Instant::now();
        Box::pin(async move {
            let outcome = future.await;
            let elapsed_us = started.elapsed().as_micros() as u64;
            match &outcome {
                Ok(response) => {
                    let grpc_status = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info!(
                        target: "nereid::access",
                        protocol,
                        %method,
                        %path,
                        status = response.status().as_u16(),
                        grpc_status,
                        elapsed_us,
                        "request"
                    );
                }
                Err(_) => tracing::info!(
                    target: "nereid::access",
                    protocol,
                    %method,
                    %path,
                    elapsed_us,
                    "request failed in the transport"
                ),
            }
            outcome
        })
    }
}
