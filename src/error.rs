//! Every failure the proxy answers itself, mapped to a status code, a short
//! plain-text body naming the cause, a metric label and a log level, here
//! and nowhere else.

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No key in the request and `missing_key = "reject"`.
    MissingKey,
    /// The backend could not be connected to (refused, unreachable, connect timeout).
    Connect,
    /// The backend did not send response headers within `timeouts.response_headers`.
    Timeout,
    /// The backend connection failed after the request was sent, or it sent garbage.
    Protocol,
    /// No backend is available.
    NoBackend,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::MissingKey => StatusCode::BAD_REQUEST,
            ProxyError::Connect | ProxyError::Protocol => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The response body: one line naming the cause.
    pub fn body(self) -> &'static str {
        match self {
            ProxyError::MissingKey => {
                "missing client id: the request carries none of the configured routing keys\n"
            }
            ProxyError::Connect => "bad gateway: could not connect to the backend\n",
            ProxyError::Timeout => "gateway timeout: the backend did not answer in time\n",
            ProxyError::Protocol => "bad gateway: the backend connection failed\n",
            ProxyError::NoBackend => "service unavailable: no healthy backend\n",
        }
    }

    /// For upstream failures, the index of its `kind` label in
    /// `metrics::UPSTREAM_ERROR_KINDS` (connect, timeout, protocol).
    pub fn upstream_kind(self) -> Option<usize> {
        match self {
            ProxyError::Connect => Some(0),
            ProxyError::Timeout => Some(1),
            ProxyError::Protocol => Some(2),
            ProxyError::MissingKey | ProxyError::NoBackend => None,
        }
    }

    /// Client mistakes are routine; backend failures are worth a warning.
    pub fn log_level(self) -> tracing::Level {
        match self {
            ProxyError::MissingKey => tracing::Level::DEBUG,
            _ => tracing::Level::WARN,
        }
    }
}
