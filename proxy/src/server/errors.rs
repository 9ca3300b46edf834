//! HTTP error responses: a status, a message that says what is wrong (never a secret), and a
//! Retry-After for back-pressure.

use super::object::names;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after_secs: Option<u32>,
    /// The block's current version, for a write refused as superseded (409).
    pub version: Option<u64>,
    /// Why the proxy does not serve this caller, sent as `x-blockproxy-refusal`.
    pub refusal: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after_secs: None, version: None, refusal: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after_secs: Some(retry_after_secs),
            version: None,
            refusal: None,
        }
    }

    /// A refusal for a volume this proxy does not serve, or not for this token.
    pub fn refused(status: StatusCode, refusal: &'static str, message: impl Into<String>) -> Self {
        Self { refusal: Some(refusal), ..Self::new(status, message) }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(v) = self.version {
            resp.headers_mut().insert(names::VERSION, HeaderValue::from(v));
        }
        if let Some(r) = self.refusal {
            resp.headers_mut().insert(names::REFUSAL, HeaderValue::from_static(r));
        }
        resp
    }
}
