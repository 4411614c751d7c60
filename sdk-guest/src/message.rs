//! Helpers on [`HttpMessage`]: headers, JSON and form bodies.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{FunctionError, HttpMessage, form_decode, form_encode};

/// The `content-type` of JSON bodies written by [`HttpMessage::set_json`].
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// The `content-type` of form bodies written by [`HttpMessage::set_form`].
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

impl HttpMessage {
    /// A request with no headers and an empty body (handy in tests).
    pub fn request(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            status: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Whether this message is a response (it has a status code).
    pub fn is_response(&self) -> bool {
        self.status.is_some()
    }

    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Sets header `name` to `value`, replacing every existing header of
    /// that name.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.remove_header(name);
        self.headers.push((name.to_ascii_lowercase(), value.into()));
    }

    /// Removes every header named `name` (ASCII case-insensitive).
    pub fn remove_header(&mut self, name: &str) {
        self.headers
            .retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }

    /// Replaces the body.
    ///
    /// Any `content-length` header is dropped: the host sets it from the
    /// final body.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body = body.into();
        self.remove_header("content-length");
    }

    /// The body as UTF-8 text.
    ///
    /// # Errors
    ///
    /// [`FunctionError::BadRequest`] if the body is not valid UTF-8.
    pub fn text(&self) -> Result<&str, FunctionError> {
        std::str::from_utf8(&self.body)
            .map_err(|err| FunctionError::BadRequest(format!("body is not UTF-8: {err}")))
    }

    /// Deserializes the body as JSON.
    ///
    /// # Errors
    ///
    /// [`FunctionError::BadRequest`] if the body is not JSON of shape `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, FunctionError> {
        serde_json::from_slice(&self.body)
            .map_err(|err| FunctionError::BadRequest(format!("invalid JSON body: {err}")))
    }

    /// Serializes `value` as the JSON body and sets `content-type:
    /// application/json`.
    ///
    /// # Errors
    ///
    /// [`FunctionError::Internal`] if `value` cannot be serialized (e.g. a
    /// map with non-string keys).
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FunctionError> {
        let body = serde_json::to_vec(value)
            .map_err(|err| FunctionError::Internal(format!("cannot serialize JSON body: {err}")))?;
        self.set_body(body);
        self.set_header("content-type", JSON_CONTENT_TYPE);
        Ok(())
    }

    /// Decodes the body as `application/x-www-form-urlencoded` pairs.
    ///
    /// # Errors
    ///
    /// [`FunctionError::BadRequest`] if the body is not valid UTF-8.
    pub fn form(&self) -> Result<Vec<(String, String)>, FunctionError> {
        Ok(form_decode(self.text()?))
    }

    /// Encodes `pairs` as the body (see [`form_encode`]) and sets
    /// `content-type: application/x-www-form-urlencoded`.
    pub fn set_form<K: AsRef<str>, V: AsRef<str>>(&mut self, pairs: &[(K, V)]) {
        self.set_body(form_encode(pairs));
        self.set_header("content-type", FORM_CONTENT_TYPE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive() {
        let mut msg = HttpMessage::request("POST", "https://example.test/");
        msg.headers
            .push(("Content-Type".into(), "text/plain".into()));
        msg.headers.push(("Content-Length".into(), "3".into()));
        assert_eq!(msg.header("content-type"), Some("text/plain"));
        msg.set_json(&serde_json::json!({"a": 1})).ok();
        assert_eq!(msg.header("CONTENT-TYPE"), Some(JSON_CONTENT_TYPE));
        assert_eq!(msg.header("content-length"), None);
        assert_eq!(msg.headers.len(), 1);
        assert_eq!(msg.body, br#"{"a":1}"#);
    }

    #[test]
    fn json_errors_are_bad_requests() {
        let mut msg = HttpMessage::request("POST", "https://example.test/");
        msg.set_body("not json");
        let parsed: Result<serde_json::Value, _> = msg.json();
        assert!(matches!(parsed, Err(FunctionError::BadRequest(_))));
    }

    #[test]
    fn form_round_trip() {
        let mut msg = HttpMessage::request("POST", "https://example.test/");
        msg.set_form(&[("a b", "c&d")]);
        assert_eq!(msg.header("content-type"), Some(FORM_CONTENT_TYPE));
        assert_eq!(msg.form().ok(), Some(vec![("a b".into(), "c&d".into())]));
    }
}
