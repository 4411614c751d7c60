//! `file-extract`: a Strongroom function that reads a file from the vault
//! and sends it to an e-signature API as a base64 document in an envelope.
//!
//! See the crate's `README.md` for the contract.

pub mod envelope;

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function, log, read_file};

use crate::envelope::{build_envelope, parse_request};

/// The exported function.
pub struct FileExtract;

impl Function for FileExtract {
    fn on_request(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let (document, fields) = parse_request(msg.json()?)?;
        let file = read_file(
            &document.vault,
            &document.table,
            &document.record,
            &document.column,
        )?;
        log::info(&format!(
            "file-extract: attached {} bytes of {}",
            file.data.len(),
            file.media_type
        ));
        msg.set_json(&build_envelope(fields, &file))?;
        Ok(msg)
    }
}

export_function!(FileExtract);

#[cfg(test)]
mod tests {
    use super::*;
    use strongroom_guest::{File, testing};

    #[test]
    fn on_request_reads_the_file() {
        testing::reset();
        let file = File {
            name: "a.txt".into(),
            media_type: "text/plain".into(),
            data: b"hi".to_vec(),
        };
        testing::add_file("v", "docs", "r1", "body", file);
        let mut msg = HttpMessage::request("POST", "https://esign.example.test/envelopes");
        msg.set_json(&serde_json::json!({
            "document": {"vault": "v", "table": "docs", "record": "r1", "column": "body"},
            "signer": {"email": "ada@example.test"}
        }))
        .ok();
        let body: Option<serde_json::Value> = FileExtract::on_request(msg)
            .ok()
            .and_then(|m| m.json().ok());
        assert_eq!(
            body,
            Some(serde_json::json!({
                "documents": [{"name": "a.txt", "media_type": "text/plain", "document_base64": "aGk="}],
                "signer": {"email": "ada@example.test"}
            }))
        );
    }

    #[test]
    fn missing_files_are_bad_requests() {
        testing::reset();
        let mut msg = HttpMessage::request("POST", "https://esign.example.test/envelopes");
        msg.set_json(&serde_json::json!({
            "document": {"vault": "v", "table": "docs", "record": "gone", "column": "body"},
            "signer": {}
        }))
        .ok();
        assert!(matches!(
            FileExtract::on_request(msg),
            Err(FunctionError::BadRequest(_))
        ));
    }
}
