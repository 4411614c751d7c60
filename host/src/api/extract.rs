//! Extractors that answer bad input in the contract's error shape, never echoing a value.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// A JSON body deserialised into `T` (whose unknown fields are refused).
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as `Content-Type: application/json`",
            ));
        }
        let Body(bytes) = Body::from_request(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// The raw request body, with a body over the route's limit answered 413 in the contract's
/// shape (axum's own rejection is plain text).
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::invalid("the request body could not be read")
                }
            })
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is too large",
    )
}

/// A `multipart/form-data` body. Another media type is 415, in the contract's shape.
pub struct Form(pub axum::extract::Multipart);

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::extract::Multipart::from_request(req, state)
            .await
            .map(Form)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as `Content-Type: multipart/form-data` with a boundary",
                )
            })
    }
}

/// A failure while reading a multipart body or one of its parts (`what`): 413 past the
/// route's body limit, else 400.
pub fn multipart_error(e: &axum::extract::multipart::MultipartError, what: &str) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        ApiError::invalid(format!("could not read {what}"))
    }
}

/// Parses JSON, turning serde's messages into ones that never quote the input.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let at = format!("line {}, column {}", e.line(), e.column());
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON ({at})"),
            ),
            Category::Data => ApiError::invalid(safe_data_message(&e.to_string(), &at)),
        }
    })
}

/// serde's data errors quote the offending value ("invalid type: string \"…\", expected …").
/// Keep only messages about field names, and the expectation of the others.
fn safe_data_message(raw: &str, at: &str) -> String {
    let head = raw.split(" at line ").next().unwrap_or_default();
    if head.starts_with("unknown field")
        || head.starts_with("missing field")
        || head.starts_with("duplicate field")
    {
        return format!("{head} ({at})");
    }
    match head.rsplit_once(", expected ") {
        Some((_, expected)) => {
            format!("a value has the wrong type or form: expected {expected} ({at})")
        }
        None => format!("the body does not have the expected shape ({at})"),
    }
}

/// Query parameters, with unknown names refused.
pub struct QueryParams(pub HashMap<String, String>);

impl QueryParams {
    pub fn only(self, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
        if let Some(bad) = self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::invalid(format!(
                "unknown query parameter `{}`",
                truncate(bad, 64)
            )));
        }
        Ok(self.0)
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let mut map = HashMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    ApiError::invalid("the query string is not valid UTF-8 percent-encoding")
                })
            };
            map.insert(decode(k)?, decode(v)?);
        }
        Ok(QueryParams(map))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shape {
        count: u32,
    }

    #[test]
    fn data_errors_never_quote_values() {
        let err = parse_json::<Shape>(br#"{"count": "4111111111111111"}"#).unwrap_err();
        assert!(!err.message.contains("4111"), "{}", err.message);
        assert_eq!(err.code, "invalid_request");
        let err = parse_json::<Shape>(br#"{"count": 1, "cuont": 2}"#).unwrap_err();
        assert!(
            err.message.contains("unknown field `cuont`"),
            "{}",
            err.message
        );
        let err = parse_json::<Shape>(br#"{"count": 1"#).unwrap_err();
        assert_eq!(err.code, "invalid_json");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb+c").as_deref(), Some("a,b c"));
        assert_eq!(percent_decode("%zz"), None);
    }
}
