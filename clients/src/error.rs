//! [`ClientError`]: every way a call can fail, keeping what the server said verbatim.
//!
//! A server's own refusal (an HTTP status with its `{"error": "..."}` text, a gRPC status code
//! with its message) is kept apart from failures to talk to it at all (connection, timeout) and
//! from answers that do not follow the protocol, because callers treat them differently: a load
//! generator counts each kind separately, a CLI prints the server's message as it is.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The HTTP server answered with a non-success status. `message` is the `error` field of its
    /// JSON body, or the body itself when that is not the v2 error form.
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },

    /// The gRPC server answered with a non-OK status.
    #[error("gRPC {}: {message}", grpc_code_name(*.code))]
    Grpc { code: tonic::Code, message: String },

    /// The server could not be reached, or the connection failed mid-call.
    #[error("cannot reach {target}: {message}")]
    Transport { target: String, message: String },

    /// No answer within the client's timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),

    /// The server answered, but not in a form this protocol allows.
    #[error("invalid response from the server: {0}")]
    InvalidResponse(String),

    /// The call was refused before anything was sent (bad URL, unencodable request, ...).
    #[error("{0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// A short, stable label for counting errors by kind: `http_400`, `grpc_unavailable`,
    /// `transport`, `timeout`, `invalid_response`, `invalid_argument`.
    pub fn kind(&self) -> String {
        match self {
            ClientError::Http { status, .. } => format!("http_{status}"),
            ClientError::Grpc { code, .. } => format!("grpc_{}", grpc_code_name(*code)),
            ClientError::Transport { .. } => "transport".into(),
            ClientError::Timeout(_) => "timeout".into(),
            ClientError::InvalidResponse(_) => "invalid_response".into(),
            ClientError::InvalidArgument(_) => "invalid_argument".into(),
        }
    }

    /// The server's own message, for errors the server sent.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            ClientError::Http { message, .. } | ClientError::Grpc { message, .. } => Some(message),
            _ => None,
        }
    }

    pub(crate) fn transport(target: &str, err: &(dyn std::error::Error + 'static)) -> Self {
        ClientError::Transport {
            target: target.to_string(),
            message: error_chain(err),
        }
    }
}

/// `Display` of an error and its sources, `: `-separated, since hyper's and tonic's top-level
/// messages ("client error (Connect)") hide the useful part in the sources.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// snake_case name of a gRPC code (`InvalidArgument` -> `invalid_argument`).
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let http = ClientError::Http {
            status: 404,
            message: "Request for unknown model: 'x' is not found".into(),
        };
        assert_eq!(http.kind(), "http_404");
        assert_eq!(
            http.to_string(),
            "HTTP 404: Request for unknown model: 'x' is not found"
        );
        let grpc = ClientError::Grpc {
            code: tonic::Code::InvalidArgument,
            message: "bad".into(),
        };
        assert_eq!(grpc.kind(), "grpc_invalid_argument");
        assert_eq!(grpc.to_string(), "gRPC invalid_argument: bad");
        assert_eq!(grpc.server_message(), Some("bad"));
        assert_eq!(
            ClientError::Timeout(Duration::from_secs(1)).kind(),
            "timeout"
        );
    }

    #[test]
    fn chain_includes_sources_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(
            error_chain(&err),
            "client error (Connect): Connection refused"
        );
    }
}
