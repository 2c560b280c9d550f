//! The one protocol-neutral error type. Every layer reports failures as an [`Error`] with a
//! Triton error [`Code`]; the HTTP and gRPC front ends each have exactly one mapping from it.

/// Triton's error classes (`TRITONSERVER_Error_Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unknown,
    Internal,
    NotFound,
    InvalidArg,
    Unavailable,
    Unsupported,
    AlreadyExists,
    Cancelled,
}

impl Code {
    /// HTTP status for this class, as Triton's `HttpCodeFromError`.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Internal => 500,
            Code::NotFound => 404,
            Code::Unavailable => 503,
            Code::Unsupported => 501,
            Code::Unknown | Code::InvalidArg | Code::AlreadyExists | Code::Cancelled => 400,
        }
    }

    /// gRPC status code for this class, as Triton's `CodeToStatus`.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Code::Unknown => tonic::Code::Unknown,
            Code::Internal => tonic::Code::Internal,
            Code::NotFound => tonic::Code::NotFound,
            Code::InvalidArg => tonic::Code::InvalidArgument,
            Code::Unavailable => tonic::Code::Unavailable,
            Code::Unsupported => tonic::Code::Unimplemented,
            Code::AlreadyExists => tonic::Code::AlreadyExists,
            Code::Cancelled => tonic::Code::Cancelled,
        }
    }
}

/// A failure with the message a client sees verbatim (Triton's texts are part of the contract).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: Code,
    pub message: String,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_arg(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArg, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(Code::Unsupported, message)
    }

    /// `{"error": "..."}`, the body of every HTTP error.
    pub fn to_json_body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.message.len() + 12);
        body.extend_from_slice(b"{\"error\":");
        // Serialising a &str into a Vec cannot fail.
        serde_json::to_writer(&mut body, &self.message).expect("string serialises. This is a bug.");
        body.push(b'}');
        body
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.code.grpc_code(), err.message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_like_triton() {
        assert_eq!(Code::NotFound.http_status(), 404);
        assert_eq!(Code::Unavailable.http_status(), 503);
        assert_eq!(Code::Unsupported.http_status(), 501);
        assert_eq!(Code::InvalidArg.http_status(), 400);
        assert_eq!(Code::Internal.http_status(), 500);
        assert_eq!(Code::Unsupported.grpc_code(), tonic::Code::Unimplemented);
        assert_eq!(Code::InvalidArg.grpc_code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn json_body_escapes_message() {
        let err = Error::invalid_arg("bad \"quote\"\n");
        assert_eq!(err.to_json_body(), br#"{"error":"bad \"quote\"\n"}"#);
    }
}
