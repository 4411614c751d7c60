//! The `file` column type: a document (a signed contract, an ID scan) stored encrypted with its
//! file name and media type.
//!
//! A file is submitted in JSON as `{"name": "…", "media_type": "…", "content_base64": "…"}` (or
//! uploaded as multipart, which the API turns into the same shape). Its canonical text, what is
//! sealed like every other value, is the JSON object `{"name", "media_type", "data"}` with the
//! content in standard base64: files then flow through the same encryption, token and audit paths
//! as every other value. A plain read returns the submitted shape plus `size_bytes`; a masked read
//! shows only the media type and size (a file name can itself be personal data).

use super::InvalidValue;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// The largest file content accepted, in bytes (before base64).
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// Longest file name, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// A file as submitted in JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Submitted {
    name: String,
    media_type: String,
    content_base64: String,
}

/// The canonical (sealed) form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Canonical {
    name: String,
    media_type: String,
    data: String,
}

/// A stored file, opened.
pub struct FileValue {
    pub name: String,
    pub media_type: String,
    pub data: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for FileValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileValue")
            .field("media_type", &self.media_type)
            .field("size_bytes", &self.data.len())
            .finish_non_exhaustive()
    }
}

fn invalid<T>(reason: &'static str) -> Result<T, InvalidValue> {
    Err(InvalidValue { reason })
}

/// Validates a file name: one path component, printable, at most 255 bytes.
pub fn check_name(name: &str) -> Result<(), InvalidValue> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return invalid("file name must be 1 to 255 bytes");
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '/' || c == '\\')
        || name == "."
        || name == ".."
    {
        return invalid("file name must be a single path component without control characters");
    }
    Ok(())
}

/// Validates and lowercases a media type (`type/subtype`, RFC 6838 characters, no parameters).
pub fn check_media_type(media_type: &str) -> Result<String, InvalidValue> {
    let restricted = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                    )
            })
    };
    match media_type.trim().split_once('/') {
        Some((kind, sub)) if restricted(kind) && restricted(sub) => {
            Ok(media_type.trim().to_ascii_lowercase())
        }
        _ => invalid("media_type must look like type/subtype (e.g. application/pdf)"),
    }
}

/// Validates a submitted file and returns its canonical text.
pub fn normalize(input: &Value) -> Result<String, InvalidValue> {
    if !input.is_object() {
        return invalid("expected an object with name, media_type and content_base64");
    }
    let Ok(submitted) = Submitted::deserialize(input) else {
        return invalid("expected exactly name, media_type and content_base64, all strings");
    };
    // Base64 grows content by a third: refuse oversized input before decoding it.
    if submitted.content_base64.len() > MAX_FILE_BYTES.div_ceil(3) * 4 {
        return invalid("file is larger than 16 MiB");
    }
    // Decoded only to check it: the standard engine accepts canonical base64 alone (padding
    // required, no stray bits), so the submitted text is already the canonical encoding.
    let Ok(data) = STANDARD.decode(submitted.content_base64.as_bytes()) else {
        return invalid("content_base64 is not standard base64");
    };
    let size = Zeroizing::new(data).len();
    check_name(&submitted.name)?;
    let media_type = check_media_type(&submitted.media_type)?;
    if size > MAX_FILE_BYTES {
        return invalid("file is larger than 16 MiB");
    }
    let canonical = Canonical {
        name: submitted.name,
        media_type,
        data: submitted.content_base64,
    };
    serde_json::to_string(&canonical).or_else(|_| invalid("file could not be encoded"))
}

fn canonical(text: &str) -> Option<Canonical> {
    serde_json::from_str(text).ok()
}

/// Opens canonical text into the file.
pub fn open(text: &str) -> Option<FileValue> {
    let c = canonical(text)?;
    let data = Zeroizing::new(STANDARD.decode(c.data.as_bytes()).ok()?);
    Some(FileValue {
        name: c.name,
        media_type: c.media_type,
        data,
    })
}

/// The plain JSON view: what was submitted, plus the size.
pub fn to_json(text: &str) -> Value {
    match canonical(text) {
        Some(c) => json!({
            "name": c.name,
            "media_type": c.media_type,
            "size_bytes": decoded_len(&c.data),
            "content_base64": c.data,
        }),
        None => Value::Null,
    }
}

/// The masked view: media type and size only.
pub fn summary(text: &str) -> String {
    match canonical(text) {
        Some(c) => format!("{} file, {} bytes", c.media_type, decoded_len(&c.data)),
        None => "file".to_string(),
    }
}

fn decoded_len(b64: &str) -> usize {
    let padding = b64.bytes().rev().take_while(|b| *b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(padding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitted(name: &str, media: &str, content: &[u8]) -> Value {
        json!({"name": name, "media_type": media, "content_base64": STANDARD.encode(content)})
    }

    #[test]
    fn round_trips_and_reports_its_size() {
        let text = normalize(&submitted(
            "contract.pdf",
            "Application/PDF",
            b"%PDF-1.7 hello",
        ));
        let text = text.unwrap_or_default();
        let plain = to_json(&text);
        assert_eq!(plain["name"], "contract.pdf");
        assert_eq!(plain["media_type"], "application/pdf");
        assert_eq!(plain["size_bytes"], 14);
        assert_eq!(summary(&text), "application/pdf file, 14 bytes");
        let opened = open(&text);
        assert_eq!(
            opened.as_ref().map(|f| f.data.as_slice()),
            Some(&b"%PDF-1.7 hello"[..])
        );
        assert!(!format!("{opened:?}").contains("hello"));
    }

    #[test]
    fn refuses_bad_files() {
        let bad = [
            json!("just a string"),
            json!({"name": "a.pdf", "media_type": "application/pdf"}),
            json!({"name": "a.pdf", "media_type": "application/pdf", "content_base64": "!!!"}),
            json!({"name": "a.pdf", "media_type": "application/pdf", "content_base64": "", "x": 1}),
            submitted("", "application/pdf", b"x"),
            submitted("../etc/passwd", "application/pdf", b"x"),
            submitted("a\nb", "application/pdf", b"x"),
            submitted("a.pdf", "pdf", b"x"),
            submitted("a.pdf", "application/pdf; charset=x", b"x"),
        ];
        for input in bad {
            assert!(normalize(&input).is_err(), "{input}");
        }
    }

    #[test]
    fn keeps_only_canonical_base64() {
        // The canonical text reuses the submitted base64, so only one spelling may pass.
        for content in ["QQ", "QR==", "QQ=", " QQ=="] {
            let input =
                json!({"name": "a.txt", "media_type": "text/plain", "content_base64": content});
            assert!(normalize(&input).is_err(), "{content}");
        }
        let input = json!({"name": "a.txt", "media_type": "text/plain", "content_base64": "QQ=="});
        assert_eq!(
            open(&normalize(&input).unwrap_or_default()).map(|f| f.data.to_vec()),
            Some(b"A".to_vec())
        );
    }

    #[test]
    fn refuses_more_than_16_mib() {
        let big = vec![0u8; MAX_FILE_BYTES + 1];
        assert!(normalize(&submitted("big.bin", "application/octet-stream", &big)).is_err());
        let ok = vec![0u8; MAX_FILE_BYTES];
        assert!(normalize(&submitted("ok.bin", "application/octet-stream", &ok)).is_ok());
    }
}
