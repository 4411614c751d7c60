//! The request shape and the e-signature envelope built from it.
//!
//! Pure code with no host calls, so it is unit-tested natively.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use strongroom_guest::{File, FunctionError};

/// Where the document lives in the vault: one cell of a file column.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DocumentRef {
    /// The vault name.
    pub vault: String,
    /// The table name.
    pub table: String,
    /// The record id.
    pub record: String,
    /// The file column.
    pub column: String,
}

/// Splits the request body into the document reference and the other
/// top-level fields (which must include a `signer` object).
///
/// # Errors
///
/// [`FunctionError::BadRequest`] if the body is not an object, or
/// `document` or `signer` is missing or malformed.
pub fn parse_request(body: Value) -> Result<(DocumentRef, Map<String, Value>), FunctionError> {
    let bad = |text: String| FunctionError::BadRequest(text);
    let Value::Object(mut fields) = body else {
        return Err(bad("body must be a JSON object".into()));
    };
    let document = fields
        .remove("document")
        .ok_or_else(|| bad("`document` is required".into()))?;
    let document: DocumentRef = serde_json::from_value(document)
        .map_err(|err| bad(format!("`document` is malformed: {err}")))?;
    if !fields.get("signer").is_some_and(Value::is_object) {
        return Err(bad("`signer` must be an object".into()));
    }
    Ok((document, fields))
}

/// The envelope: `documents` holding the file, base64-encoded, next to the
/// request's other top-level fields (`signer` and anything else) unchanged.
pub fn build_envelope(mut fields: Map<String, Value>, file: &File) -> Value {
    fields.insert(
        "documents".to_owned(),
        json!([{
            "name": file.name,
            "media_type": file.media_type,
            "document_base64": base64_encode(&file.data),
        }]),
    );
    Value::Object(fields)
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn builds_the_envelope() {
        let body = json!({
            "document": {"vault": "v", "table": "contracts", "record": "r1", "column": "pdf"},
            "signer": {"name": "Ada", "email": "ada@example.test"},
            "subject": "Please sign"
        });
        let (document, fields) = parse_request(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(document.record, "r1");
        let file = File {
            name: "contract.pdf".into(),
            media_type: "application/pdf".into(),
            data: b"%PDF".to_vec(),
        };
        assert_eq!(
            build_envelope(fields, &file),
            json!({
                "documents": [{"name": "contract.pdf", "media_type": "application/pdf", "document_base64": "JVBERg=="}],
                "signer": {"name": "Ada", "email": "ada@example.test"},
                "subject": "Please sign"
            })
        );
    }

    #[test]
    fn rejects_malformed_requests() {
        assert!(parse_request(json!([1])).is_err());
        assert!(parse_request(json!({"signer": {}})).is_err());
        let no_signer =
            json!({"document": {"vault": "v", "table": "t", "record": "r", "column": "c"}});
        assert!(parse_request(no_signer).is_err());
        let partial = json!({"document": {"vault": "v"}, "signer": {}});
        assert!(parse_request(partial).is_err());
    }
}
