//! Responses the gateway makes itself: the contract's JSON refusal format.
//!
//! Every such response has `Content-Type: application/json`, the `X-Request-Id`
//! header and the body `{"error": "<code>", "message": "<text>", "request_id": "<id>"}`.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;

/// The machine-readable reason of a refusal: the `error` field of the body and the
/// `reason` label of `tollgate_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 404: no route matches.
    NoRoute,
    /// 405: a route matches the path but not the method.
    MethodNotAllowed,
    /// 400: malformed request, bad path, ambiguous framing.
    BadRequest,
    /// 408: header block not received in time.
    RequestTimeout,
    /// 414: URI too long.
    UriTooLong,
    /// 431: header block too large or too many headers.
    HeadersTooLarge,
    /// 401: missing or bad credentials.
    Unauthorized,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 413: body too large.
    PayloadTooLarge,
    /// 429: rate limited.
    RateLimited,
    /// 503: concurrency limit or an unavailable shared store.
    Overloaded,
    /// 502: connection refused or reset by the backend.
    BadGateway,
    /// 503: every backend of the upstream is unhealthy.
    NoHealthyUpstream,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// 500: the gateway itself failed.
    InternalError,
}

impl ErrorCode {
    /// The `error` string of the JSON body.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BadRequest => "bad_request",
            Self::RequestTimeout => "request_timeout",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::BadGateway => "bad_gateway",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::GatewayTimeout => "gateway_timeout",
            Self::InternalError => "internal_error",
        }
    }

    /// The HTTP status the contract gives this code.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A default human message for this code.
    pub const fn default_message(self) -> &'static str {
        match self {
            Self::NoRoute => "no route matches this request",
            Self::MethodNotAllowed => "method not allowed on this route",
            Self::BadRequest => "malformed request",
            Self::RequestTimeout => "request header not received in time",
            Self::UriTooLong => "request URI too long",
            Self::HeadersTooLarge => "request header block too large",
            Self::Unauthorized => "missing or invalid credentials",
            Self::Forbidden => "access denied",
            Self::PayloadTooLarge => "request body too large",
            Self::RateLimited => "rate limit exceeded",
            Self::Overloaded => "too many requests in flight",
            Self::BadGateway => "the upstream could not be reached",
            Self::NoHealthyUpstream => "no healthy backend for this upstream",
            Self::GatewayTimeout => "the upstream did not answer in time",
            Self::InternalError => "internal gateway error",
        }
    }
}

/// A response made by the gateway (or a policy) instead of proxying.
///
/// Build one with [`Reply::refuse`], add headers with [`Reply::header`], and return it
/// from a policy as [`Flow::Respond`](crate::policy::Flow::Respond).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status sent.
    pub status: StatusCode,
    /// The refusal code, `None` for non-error replies (a CORS preflight's 204).
    pub code: Option<ErrorCode>,
    /// The human message of the JSON body.
    pub message: String,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, `Allow`, …).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    /// A contract refusal with the code's status and default message.
    pub fn refuse(code: ErrorCode) -> Self {
        Self::refuse_with(code, code.default_message())
    }

    /// A contract refusal with a specific message. The message is sent to the client:
    /// never put a secret in it.
    ///
    /// ```
    /// use tollgate::{ErrorCode, Reply};
    ///
    /// let r = Reply::refuse_with(ErrorCode::Forbidden, "tenant not allowed");
    /// assert_eq!(r.status.as_u16(), 403);
    /// let body: serde_json::Value = serde_json::from_slice(&r.body("req-1")).unwrap();
    /// assert_eq!(body["error"], "forbidden");
    /// assert_eq!(body["request_id"], "req-1");
    /// ```
    pub fn refuse_with(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code: Some(code),
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// A bodiless reply with any status (for example a CORS preflight's 204).
    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            code: None,
            message: String::new(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The JSON body for `request_id`, or an empty body for non-error replies.
    pub fn body(&self, request_id: &str) -> Bytes {
        match self.code {
            Some(code) => error_body(code.as_str(), &self.message, request_id),
            None => Bytes::new(),
        }
    }
}

/// `{"error": .., "message": .., "request_id": ..}` as bytes.
pub(crate) fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    let v = serde_json::json!({ "error": code, "message": message, "request_id": request_id });
    let mut s = serde_json::to_vec(&v).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_contract_json() {
        let r = Reply::refuse(ErrorCode::NoRoute);
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_slice(&r.body("abc")).unwrap();
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["request_id"], "abc");
        assert!(v["message"].as_str().unwrap().contains("no route"));
    }

    #[test]
    fn message_is_escaped() {
        let r = Reply::refuse_with(ErrorCode::BadRequest, "quote \" and \n newline");
        let v: serde_json::Value = serde_json::from_slice(&r.body("x")).unwrap();
        assert_eq!(v["message"], "quote \" and \n newline");
    }
}
