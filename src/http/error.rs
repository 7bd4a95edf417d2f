//! Every failure the proxy answers itself, mapped to a status code, a short
//! plain-text body naming the cause, a metric label, who is at fault and a
//! log level, here and nowhere else.

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No key in the request and `missing_key = "reject"`.
    MissingKey,
    /// An HTTP/2 request's header list is over
    /// `limits.max_request_header_bytes` (RFC 9113 §6.5.2 sizes, 431).
    HeaderTooLarge,
    /// The request head breaks an HTTP rule (RFC 9112 §3.2: no `Host` in
    /// HTTP/1.1, or more than one).
    BadRequest(BadRequest),
    /// The client stopped sending its request body for
    /// `timeouts.client_body_read`.
    ClientTimeout,
    /// A method the proxy does not forward (`CONNECT`).
    Method,
    /// A transfer coding other than `chunked` in a request (501).
    TransferCoding,
    /// The backend could not be connected to (refused, unreachable, connect timeout).
    Connect,
    /// The backend did not send response headers within `timeouts.response_headers`.
    Timeout,
    /// The backend connection failed after the request was sent, or it sent garbage.
    Protocol,
    /// The backend answered `101 Switching Protocols` to a request that
    /// asked for no upgrade.
    UnaskedUpgrade,
    /// The backend's response has a transfer coding besides `chunked`,
    /// which only an HTTP/1.1 client can be sent.
    Coding,
    /// No backend is available.
    NoBackend,
    /// The backend's connection cap (`limits.max_backend_connections`) was
    /// reached and none came free in time: the proxy's limit.
    BackendBusy,
    /// The proxy ran out of its own resources (file descriptors, ports).
    LocalResources,
}

/// What is wrong with a request the proxy refuses with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    NoHost,
    ManyHosts,
    /// A `Host` or target authority that is not `host[:port]`.
    BadHost,
    /// `*` other than with `OPTIONS`, authority-form other than with `CONNECT`.
    BadTarget,
    /// The request body's framing is malformed, or it ended early.
    Body,
}

/// The `kind` label of `upstream_errors_total`: a failure of the backend
/// or of the way to it, never of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Protocol,
}

impl UpstreamErrorKind {
    /// Label values, indexed by `kind as usize`.
    pub const ALL: [UpstreamErrorKind; 3] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::MissingKey | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Method => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Connect
            | ProxyError::Protocol
            | ProxyError::UnaskedUpgrade
            | ProxyError::Coding => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoBackend | ProxyError::BackendBusy | ProxyError::LocalResources => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The response body: one line naming the cause.
    pub fn body(self) -> &'static str {
        match self {
            ProxyError::MissingKey => {
                "missing client id: the request carries none of the configured routing keys\n"
            }
            ProxyError::HeaderTooLarge => {
                "request header fields too large: over limits.max_request_header_bytes\n"
            }
            ProxyError::BadRequest(BadRequest::NoHost) => {
                "bad request: an HTTP/1.1 request must carry a Host header\n"
            }
            ProxyError::BadRequest(BadRequest::ManyHosts) => {
                "bad request: more than one Host header\n"
            }
            ProxyError::BadRequest(BadRequest::BadHost) => {
                "bad request: the Host header or target authority is not a valid host[:port]\n"
            }
            ProxyError::BadRequest(BadRequest::BadTarget) => {
                "bad request: the request target's form does not fit its method\n"
            }
            ProxyError::TransferCoding => "not implemented: a transfer coding other than chunked\n",
            ProxyError::BadRequest(BadRequest::Body) => {
                "bad request: the request body is malformed or incomplete\n"
            }
            ProxyError::ClientTimeout => {
                "request timeout: the client stopped sending its request body\n"
            }
            ProxyError::Method => "method not allowed: this proxy does not tunnel CONNECT\n",
            ProxyError::Connect => "bad gateway: could not connect to the backend\n",
            ProxyError::Timeout => "gateway timeout: the backend did not answer in time\n",
            ProxyError::Protocol => "bad gateway: the backend connection failed\n",
            ProxyError::UnaskedUpgrade => {
                "bad gateway: the backend switched protocols though no upgrade was asked for\n"
            }
            ProxyError::Coding => {
                "bad gateway: the backend's transfer coding cannot be passed on over this protocol\n"
            }
            ProxyError::NoBackend => "service unavailable: no healthy backend\n",
            ProxyError::BackendBusy => {
                "service unavailable: every connection to the backend is in use\n"
            }
            ProxyError::LocalResources => {
                "service unavailable: the proxy is out of local resources\n"
            }
        }
    }

    /// The `cause` label of `proxy_responses_total`.
    pub fn cause(self) -> &'static str {
        match self {
            ProxyError::MissingKey => "missing_key",
            ProxyError::HeaderTooLarge => "header_too_large",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ClientTimeout => "client_timeout",
            ProxyError::Method => "method",
            ProxyError::TransferCoding => "not_implemented",
            ProxyError::Connect => "connect",
            ProxyError::Timeout => "timeout",
            ProxyError::Protocol | ProxyError::UnaskedUpgrade | ProxyError::Coding => "protocol",
            ProxyError::NoBackend => "no_backend",
            ProxyError::BackendBusy => "backend_busy",
            ProxyError::LocalResources => "local_resources",
        }
    }

    /// For failures of the backend, the `kind` of `upstream_errors_total`;
    /// `None` for the client's faults and the proxy's own refusals.
    pub fn upstream_kind(self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::Connect => Some(UpstreamErrorKind::Connect),
            ProxyError::Timeout => Some(UpstreamErrorKind::Timeout),
            ProxyError::Protocol | ProxyError::UnaskedUpgrade => Some(UpstreamErrorKind::Protocol),
            ProxyError::MissingKey
            | ProxyError::HeaderTooLarge
            | ProxyError::BadRequest(_)
            | ProxyError::ClientTimeout
            | ProxyError::Method
            | ProxyError::TransferCoding
            | ProxyError::Coding
            | ProxyError::NoBackend
            | ProxyError::BackendBusy
            | ProxyError::LocalResources => None,
        }
    }

    /// Whether the client's connection cannot carry another request after
    /// this answer: its request body broke off or stalled, so where the
    /// next request would start is unknown (RFC 9112 §9.6: say `close`).
    pub fn ends_connection(self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(BadRequest::Body) | ProxyError::ClientTimeout
        )
    }

    /// Whether the answer belongs in the chosen backend's own request count
    /// and latency: its failures do, the client's faults and the proxy's
    /// own limits do not.
    pub fn counts_for_backend(self) -> bool {
        self.upstream_kind().is_some()
    }

    /// Client mistakes are routine; backend failures are worth a warning.
    pub fn log_level(self) -> tracing::Level {
        match self {
            ProxyError::MissingKey
            | ProxyError::HeaderTooLarge
            | ProxyError::BadRequest(_)
            | ProxyError::ClientTimeout
            | ProxyError::Method
            | ProxyError::TransferCoding => tracing::Level::DEBUG,
            _ => tracing::Level::WARN,
        }
    }
}

impl From<crate::http::wire::Refusal> for ProxyError {
    fn from(r: crate::http::wire::Refusal) -> Self {
        match r {
            crate::http::wire::Refusal::NoHost => ProxyError::BadRequest(BadRequest::NoHost),
            crate::http::wire::Refusal::ManyHosts => ProxyError::BadRequest(BadRequest::ManyHosts),
            crate::http::wire::Refusal::BadHost => ProxyError::BadRequest(BadRequest::BadHost),
            crate::http::wire::Refusal::BadTarget => ProxyError::BadRequest(BadRequest::BadTarget),
            crate::http::wire::Refusal::Connect => ProxyError::Method,
            crate::http::wire::Refusal::TransferCoding => ProxyError::TransferCoding,
        }
    }
}

impl From<crate::http::body::BodyFault> for ProxyError {
    fn from(f: crate::http::body::BodyFault) -> Self {
        match f {
            crate::http::body::BodyFault::Broken => ProxyError::BadRequest(BadRequest::Body),
            crate::http::body::BodyFault::Stalled => ProxyError::ClientTimeout,
        }
    }
}
