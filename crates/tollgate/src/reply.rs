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
    /// 411: a body the route must read whole came without a length the gateway can
    /// work with (chunked, over 64 KiB).
    LengthRequired,
    /// 429: rate limited.
    RateLimited,
    /// 503: concurrency limit or an unavailable shared store.
    Overloaded,
    /// 502: connection refused or reset by the backend.
    BadGateway,
    /// 503: every backend of the upstream is unhealthy.
    NoHealthyUpstream,
    /// 503: an identity provider or authorization service needed to check the
    /// credential is unavailable (no key set yet, an introspection or `ext_authz` call
    /// failed, too many calls in flight).
    IdentityUnavailable,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// 416: a byte range that starts at or past the end of a cached body.
    RangeNotSatisfiable,
    /// 415: a request body in a coding (or of a type) the route does not take.
    UnsupportedMediaType,
    /// 500: the gateway itself failed.
    InternalError,
    /// A policy's own refusal, made with [`ErrorCode::custom`].
    Custom(CustomCode),
}

/// A refusal code of a policy's own: its status and `error` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustomCode {
    status: StatusCode,
    code: &'static str,
}

/// Why [`ErrorCode::custom`] refused a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CustomCodeError {
    /// A refusal's status must be 4xx or 5xx.
    #[error("a refusal's status must be 4xx or 5xx, not {0}")]
    NotAnError(u16),
    /// The code must be 1 to 64 characters of `a-z`, `0-9` and `_`.
    #[error("an error code must be 1 to 64 characters of a-z, 0-9 and _, not {0:?}")]
    BadCode(&'static str),
}

impl ErrorCode {
    /// A refusal code of your own, for what no built-in code says (a 451 for legal
    /// reasons, a 402 for an exhausted plan): `status` must be 4xx or 5xx, and `code`
    /// (the `error` field of the body and the `reason` label of
    /// `tollgate_refusals_total`) 1 to 64 characters of `a-z`, `0-9` and `_`. Make it
    /// a constant of your policy, never from request data: every distinct code is a
    /// metric series.
    ///
    /// ```
    /// use tollgate::{ErrorCode, Reply};
    ///
    /// let legal = ErrorCode::custom(451, "unavailable_for_legal_reasons")?;
    /// let r = Reply::refuse_with(legal, "not in your country");
    /// assert_eq!(r.status.as_u16(), 451);
    /// let body: serde_json::Value = serde_json::from_slice(&r.body("req-1")).unwrap();
    /// assert_eq!(body["error"], "unavailable_for_legal_reasons");
    /// # Ok::<(), tollgate::CustomCodeError>(())
    /// ```
    ///
    /// # Errors
    /// The status is not 4xx or 5xx, or the code is empty, too long or has other
    /// characters.
    pub fn custom(status: u16, code: &'static str) -> Result<Self, CustomCodeError> {
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .ok_or(CustomCodeError::NotAnError(status))?;
        let valid = !code.is_empty()
            && code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(CustomCodeError::BadCode(code));
        }
        Ok(Self::Custom(CustomCode { status, code }))
    }

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
            Self::LengthRequired => "length_required",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::BadGateway => "bad_gateway",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::IdentityUnavailable => "identity_unavailable",
            Self::GatewayTimeout => "gateway_timeout",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InternalError => "internal_error",
            Self::Custom(c) => c.code,
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
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::NoHealthyUpstream | Self::IdentityUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Custom(c) => c.status,
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
            Self::LengthRequired => "this request body needs a Content-Length",
            Self::RateLimited => "rate limit exceeded",
            Self::Overloaded => "too many requests in flight",
            Self::BadGateway => "the upstream could not be reached",
            Self::NoHealthyUpstream => "no healthy backend for this upstream",
            Self::IdentityUnavailable => "the identity provider is unavailable",
            Self::GatewayTimeout => "the upstream did not answer in time",
            Self::RangeNotSatisfiable => "the range starts at or past the end of the body",
            Self::UnsupportedMediaType => "the request body's type or coding is not accepted",
            Self::InternalError => "internal gateway error",
            Self::Custom(_) => "request refused",
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
    /// The body of a reply that is not a refusal ([`Reply::with_body`]); a refusal's
    /// body is the JSON of its code.
    pub content: Bytes,
    /// A refusal whose body is [`Reply::content`] as another service wrote it
    /// ([`Reply::relay`]). A refusal of the gateway's own keeps the members added with
    /// [`Reply::member`] in `content` instead, as a JSON object.
    relayed: bool,
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
            content: Bytes::new(),
            relayed: false,
        }
    }

    /// The refusal with `name` added to its JSON body after `error`, `message` and
    /// `request_id` (`validate`'s `details`). The body is sent to the client: never put a
    /// secret or a part of the request in it. No effect on other replies.
    #[must_use]
    pub fn member(mut self, name: &str, value: serde_json::Value) -> Self {
        if self.code.is_none() || self.relayed {
            return self;
        }
        let mut members: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&self.content).unwrap_or_default();
        members.insert(name.to_string(), value);
        self.content = Bytes::from(serde_json::to_vec(&members).unwrap_or_default());
        self
    }

    /// A bodiless reply with any status (for example a CORS preflight's 204).
    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            code: None,
            message: String::new(),
            headers: Vec::new(),
            content: Bytes::new(),
            relayed: false,
        }
    }

    /// A reply with any status, headers and body: a policy's own answer (a cached
    /// response, an aggregate of other calls, a redirect with a page). It gets
    /// `Content-Length` and `X-Request-Id` like every answer of the gateway, and the
    /// route's `response_filter` hooks run on it.
    ///
    /// ```
    /// use tollgate::Reply;
    /// use http::{HeaderValue, StatusCode};
    ///
    /// let r = Reply::with_body(
    ///     StatusCode::OK,
    ///     HeaderValue::from_static("application/json"),
    ///     r#"{"cached":true}"#,
    /// );
    /// assert_eq!(&r.body("req-1")[..], br#"{"cached":true}"#);
    /// ```
    pub fn with_body(
        status: StatusCode,
        content_type: HeaderValue,
        body: impl Into<Bytes>,
    ) -> Self {
        Self {
            content: body.into(),
            ..Self::empty(status)
        }
        .header(http::header::CONTENT_TYPE, content_type)
    }

    /// A refusal decided by another service and relayed as it answered (an external
    /// authorization service's denial): counted and logged with `code`, but its status
    /// and body are the service's, and it has no `Content-Type` but the one added
    /// with [`Reply::header`].
    pub fn relay(status: StatusCode, code: ErrorCode, body: impl Into<Bytes>) -> Self {
        Self {
            code: Some(code),
            content: body.into(),
            relayed: true,
            ..Self::empty(status)
        }
    }

    /// Adds a response header.
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The JSON body for `request_id` of a refusal, or the reply's own
    /// [`content`](Reply::content).
    pub fn body(&self, request_id: &str) -> Bytes {
        match self.code {
            Some(code) if !self.relayed && self.content.is_empty() => {
                error_body(code.as_str(), &self.message, request_id)
            }
            Some(code) if !self.relayed => {
                let mut v = serde_json::json!({
                    "error": code.as_str(), "message": self.message, "request_id": request_id,
                });
                let members: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&self.content).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.extend(members);
                }
                let mut s = serde_json::to_vec(&v).unwrap_or_default();
                s.push(b'\n');
                Bytes::from(s)
            }
            _ => self.content.clone(),
        }
    }
}

/// A reply as it goes on the wire, whoever writes it (the proxy through Pingora, or the
/// connection guard as raw HTTP/1): the status, the headers (the contract's, then the
/// reply's own) and the body.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
}

/// `X-Request-Id`, parsed once.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Reply {
    /// The reply for the request `request_id`, ready to write: a refusal gets
    /// `Content-Type: application/json` and the JSON body; every reply gets
    /// `Content-Length` and `X-Request-Id`.
    pub(crate) fn render(self, request_id: &str) -> Rendered {
        let body = self.body(request_id);
        let mut headers = Vec::with_capacity(3 + self.headers.len());
        if self.code.is_some() && !self.relayed {
            headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        headers.push((http::header::CONTENT_LENGTH, HeaderValue::from(body.len())));
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.push((X_REQUEST_ID.clone(), id));
        }
        headers.extend(self.headers);
        Rendered {
            status: self.status,
            headers,
            body,
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
    fn members_join_a_refusals_body_only() {
        let r = Reply::refuse(ErrorCode::BadRequest)
            .member("details", serde_json::json!([{"path": "/a"}]))
            .member("n", serde_json::json!(1));
        let v: serde_json::Value = serde_json::from_slice(&r.body("id")).unwrap();
        assert_eq!(v["details"][0]["path"], "/a");
        assert_eq!(
            (v["n"].as_i64(), v["error"].as_str()),
            (Some(1), Some("bad_request"))
        );
        let plain = Reply::empty(StatusCode::NO_CONTENT).member("x", serde_json::json!(1));
        assert!(plain.body("id").is_empty());
    }

    #[test]
    fn message_is_escaped() {
        let r = Reply::refuse_with(ErrorCode::BadRequest, "quote \" and \n newline");
        let v: serde_json::Value = serde_json::from_slice(&r.body("x")).unwrap();
        assert_eq!(v["message"], "quote \" and \n newline");
    }

    #[test]
    fn a_custom_code_keeps_its_own_status_and_error_string() {
        let code = ErrorCode::custom(451, "unavailable_for_legal_reasons").unwrap();
        assert_eq!(code.status(), StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS);
        assert_eq!(code.as_str(), "unavailable_for_legal_reasons");
        let r = Reply::refuse(code).render("id-1");
        assert_eq!(r.status.as_u16(), 451);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "unavailable_for_legal_reasons");
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "content-length", "x-request-id"]);
    }

    #[test]
    fn a_custom_code_must_be_an_error_status_and_a_label_safe_string() {
        assert_eq!(
            ErrorCode::custom(200, "fine"),
            Err(CustomCodeError::NotAnError(200))
        );
        assert_eq!(
            ErrorCode::custom(999, "odd"),
            Err(CustomCodeError::NotAnError(999))
        );
        for bad in ["", "Upper", "with-dash", "sp ace", "quote\""] {
            assert_eq!(
                ErrorCode::custom(403, bad),
                Err(CustomCodeError::BadCode(bad))
            );
        }
        assert_eq!(ErrorCode::custom(402, "x").map(ErrorCode::as_str), Ok("x"));
    }
}
