//! [`HttpClient`]: the KServe v2 REST API over HTTP/1.1 (hyper), with the binary tensor
//! extension.
//!
//! Concurrency: the client is a cheap `Clone` over one hyper connection pool; concurrent calls
//! each check out (or open) their own keep-alive connection, since HTTP/1.1 carries one request
//! at a time per connection. `TCP_NODELAY` is set because small requests would otherwise wait on
//! Nagle's algorithm for the previous segment's ACK. Only plain `http://` is spoken.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use nereid_protocol::inference::{
    ModelConfig, ModelMetadataResponse, ModelStatisticsResponse, RepositoryIndexResponse,
    ServerMetadataResponse,
};
use nereid_protocol::rest::HEADER_CONTENT_LENGTH;
use nereid_protocol::{InferRequest, InferResponse};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::error::{ClientError, Result};
use crate::json_message::from_json;
use crate::rest_body::{decode_response, encode_request};
use crate::ClientOptions;

/// Characters escaped in a path segment (model names may hold anything).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// Longest error body quoted in a [`ClientError::Http`] when it is not the v2 `{"error"}` form.
const MAX_QUOTED_BODY: usize = 512;

#[derive(Clone)]
pub struct HttpClient {
    /// `http://host:port[/prefix]`, without a trailing slash.
    base: Arc<str>,
    client: HyperClient<HttpConnector, Full<Bytes>>,
    options: Arc<ClientOptions>,
    /// `options.headers`, checked and ready to send.
    headers: Arc<http::HeaderMap>,
}

/// An inference request rendered once and sent many times (the load generator's hot path).
#[derive(Debug, Clone)]
pub struct PreparedHttpInfer {
    uri: Uri,
    body: Bytes,
    header_length: Option<HeaderValue>,
}

impl PreparedHttpInfer {
    /// Bytes sent per request.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

impl HttpClient {
    /// A client for the server at `url` (`http://host:port`, optionally with a path prefix;
    /// `host:port` alone means `http://host:port`). Nothing is connected until the first call.
    pub fn new(url: &str, options: ClientOptions) -> Result<Self> {
        let base = normalise_base(url)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let mut headers = http::HeaderMap::new();
        for (name, value) in &options.headers {
            let name = http::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                ClientError::InvalidArgument(format!("invalid header name '{name}': {e}"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|e| {
                ClientError::InvalidArgument(format!("invalid value for header '{name}': {e}"))
            })?;
            headers.append(name, value);
        }
        Ok(HttpClient {
            base: base.into(),
            client,
            options: Arc::new(options),
            headers: Arc::new(headers),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn uri(&self, path: &str) -> Result<Uri> {
        format!("{}{path}", self.base)
            .parse()
            .map_err(|e| ClientError::InvalidArgument(format!("invalid request URL: {e}")))
    }

    fn model_path(name: &str, version: &str, op: &str) -> String {
        let mut path = format!("/v2/models/{}", utf8_percent_encode(name, SEGMENT));
        if !version.is_empty() {
            path.push_str("/versions/");
            path.extend(utf8_percent_encode(version, SEGMENT));
        }
        if !op.is_empty() {
            path.push('/');
            path.push_str(op);
        }
        path
    }

    /// Sends one request and returns the status, the inference header length and the body,
    /// turning non-2xx answers into [`ClientError::Http`].
    async fn call(
        &self,
        method: Method,
        uri: Uri,
        body: Option<(Bytes, &'static str)>,
        header_length: Option<&HeaderValue>,
    ) -> Result<(u16, Option<HeaderValue>, Bytes)> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(headers) = builder.headers_mut() {
            headers.extend(
                self.headers
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone())),
            );
        }
        if let Some((_, content_type)) = &body {
            builder = builder.header(CONTENT_TYPE, *content_type);
        }
        if let Some(length) = header_length {
            builder = builder.header(HEADER_CONTENT_LENGTH, length.clone());
        }
        let body = body.map(|(b, _)| b).unwrap_or_default();
        let request = builder
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .map_err(|e| ClientError::InvalidArgument(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ClientError::transport(&self.base, &e))?;
            let status = response.status().as_u16();
            let inference_header = response.headers().get(HEADER_CONTENT_LENGTH).cloned();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::transport(&self.base, &e))?
                .to_bytes();
            Ok::<_, ClientError>((status, inference_header, body))
        };
        let (status, inference_header, body) = match self.options.timeout {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| ClientError::Timeout(limit))??,
            None => exchange.await?,
        };
        if !(200..300).contains(&status) {
            return Err(http_error(status, &body));
        }
        Ok((status, inference_header, body))
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        let uri = self.uri(path)?;
        Ok(self.call(Method::GET, uri, None, None).await?.2)
    }

    async fn post_json(&self, path: &str, body: Vec<u8>) -> Result<Bytes> {
        let uri = self.uri(path)?;
        let body = Some((Bytes::from(body), "application/json"));
        Ok(self.call(Method::POST, uri, body, None).await?.2)
    }

    /// Whether a health endpoint answers 2xx. Servers say "no" with 400 (Triton) or 503 (others),
    /// so any HTTP status is an answer; only failing to ask is an error.
    async fn probe(&self, path: &str) -> Result<bool> {
        match self.get(path).await {
            Ok(_) => Ok(true),
            Err(ClientError::Http { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    pub async fn server_live(&self) -> Result<bool> {
        self.probe("/v2/health/live").await
    }

    pub async fn server_ready(&self) -> Result<bool> {
        self.probe("/v2/health/ready").await
    }

    pub async fn model_ready(&self, name: &str, version: &str) -> Result<bool> {
        self.probe(&Self::model_path(name, version, "ready")).await
    }

    pub async fn server_metadata(&self) -> Result<ServerMetadataResponse> {
        let body = self.get("/v2").await?;
        from_json(&body, "inference.ServerMetadataResponse")
    }

    pub async fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadataResponse> {
        let body = self.get(&Self::model_path(name, version, "")).await?;
        from_json(&body, "inference.ModelMetadataResponse")
    }

    pub async fn model_config(&self, name: &str, version: &str) -> Result<ModelConfig> {
        let body = self.get(&Self::model_path(name, version, "config")).await?;
        from_json(&body, "inference.ModelConfig")
    }

    /// Statistics of one model (all its versions when `version` is empty), or of every model
    /// when `name` is empty.
    pub async fn model_statistics(
        &self,
        name: &str,
        version: &str,
    ) -> Result<ModelStatisticsResponse> {
        let path = if name.is_empty() {
            "/v2/models/stats".to_string()
        } else {
            Self::model_path(name, version, "stats")
        };
        let body = self.get(&path).await?;
        from_json(&body, "inference.ModelStatisticsResponse")
    }

    pub async fn repository_index(&self, ready_only: bool) -> Result<RepositoryIndexResponse> {
        let request = serde_json::json!({ "ready": ready_only }).to_string();
        let body = self
            .post_json("/v2/repository/index", request.into_bytes())
            .await?;
        // The REST form is a bare array; the gRPC message wraps it in `models`.
        let mut wrapped = Vec::with_capacity(body.len() + 12);
        wrapped.extend_from_slice(b"{\"models\":");
        wrapped.extend_from_slice(&body);
        wrapped.push(b'}');
        from_json(&wrapped, "inference.RepositoryIndexResponse")
    }

    /// Loads (or reloads) a model; `config` is an optional model configuration in Triton's JSON
    /// form that overrides `config.pbtxt`.
    pub async fn load_model(&self, name: &str, config: Option<&str>) -> Result<()> {
        let body = match config {
            Some(config) => serde_json::json!({ "parameters": { "config": config } }).to_string(),
            None => "{}".to_string(),
        };
        let path = format!(
            "/v2/repository/models/{}/load",
            utf8_percent_encode(name, SEGMENT)
        );
        self.post_json(&path, body.into_bytes()).await.map(drop)
    }

    pub async fn unload_model(&self, name: &str) -> Result<()> {
        let path = format!(
            "/v2/repository/models/{}/unload",
            utf8_percent_encode(name, SEGMENT)
        );
        self.post_json(&path, b"{}".to_vec()).await.map(drop)
    }

    /// Renders a request once, for [`Self::infer_prepared`].
    pub fn prepare_infer(
        &self,
        name: &str,
        version: &str,
        request: &InferRequest,
    ) -> Result<PreparedHttpInfer> {
        let encoded = encode_request(request, self.options.http_binary_inputs)?;
        Ok(PreparedHttpInfer {
            uri: self.uri(&Self::model_path(name, version, "infer"))?,
            body: encoded.body,
            header_length: encoded.header_length.map(HeaderValue::from),
        })
    }

    pub async fn infer_prepared(&self, prepared: &PreparedHttpInfer) -> Result<InferResponse> {
        let content_type = if prepared.header_length.is_some() {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let (_, header, body) = self
            .call(
                Method::POST,
                prepared.uri.clone(),
                Some((prepared.body.clone(), content_type)),
                prepared.header_length.as_ref(),
            )
            .await?;
        let header = header
            .as_ref()
            .map(|h| {
                h.to_str().map_err(|_| {
                    ClientError::InvalidResponse("non-ASCII Inference-Header-Content-Length".into())
                })
            })
            .transpose()?;
        decode_response(&body, header)
    }

    pub async fn infer(
        &self,
        name: &str,
        version: &str,
        request: &InferRequest,
    ) -> Result<InferResponse> {
        let prepared = self.prepare_infer(name, version, request)?;
        self.infer_prepared(&prepared).await
    }
}

/// `http://host:port/prefix` from what a user typed; refuses anything but plain HTTP.
fn normalise_base(url: &str) -> Result<String> {
    let url = url.trim();
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| ClientError::InvalidArgument(format!("invalid URL '{url}': {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(ClientError::InvalidArgument(format!(
                "unsupported URL scheme '{other}' in '{url}': only http:// is supported"
            )))
        }
        // "/a://b" contains "://" yet parses as a bare path.
        None => {
            return Err(ClientError::InvalidArgument(format!(
                "invalid URL '{url}': expected http://host:port"
            )))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| ClientError::InvalidArgument(format!("no host in URL '{url}'")))?;
    if uri.query().is_some() {
        return Err(ClientError::InvalidArgument(format!(
            "URL '{url}' must not have a query"
        )));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!("http://{authority}{prefix}"))
}

/// The error of a non-2xx answer, with the server's `{"error": "..."}` text when it sent one.
fn http_error(status: u16, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) if body.is_empty() => http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_string(),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut text = text.trim().to_string();
            if text.len() > MAX_QUOTED_BODY {
                let mut cut = MAX_QUOTED_BODY;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("...");
            }
            text
        }
    };
    ClientError::Http { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            normalise_base("127.0.0.1:8000").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            normalise_base("http://localhost:8000/").unwrap(),
            "http://localhost:8000"
        );
        assert_eq!(
            normalise_base("http://h:1/prefix/").unwrap(),
            "http://h:1/prefix"
        );
        assert!(normalise_base("https://h:1").is_err());
        assert!(normalise_base("http://h:1/?x=1").is_err());
        assert!(normalise_base("http:// bad").is_err());
        assert!(normalise_base("/a://b").is_err());
    }

    #[test]
    fn model_paths_are_escaped() {
        assert_eq!(
            HttpClient::model_path("my model/x", "2", "infer"),
            "/v2/models/my%20model%2Fx/versions/2/infer"
        );
        assert_eq!(HttpClient::model_path("m", "", ""), "/v2/models/m");
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            http_error(400, br#"{"error":"bad \"x\""}"#),
            ClientError::Http {
                status: 400,
                message: "bad \"x\"".into()
            }
        );
        assert_eq!(
            http_error(503, b""),
            ClientError::Http {
                status: 503,
                message: "Service Unavailable".into()
            }
        );
        let long = "é".repeat(400);
        match http_error(500, long.as_bytes()) {
            ClientError::Http { message, .. } => {
                assert!(message.ends_with("...") && message.len() <= MAX_QUOTED_BODY + 3)
            }
            other => panic!("{other:?}"),
        }
    }
}
