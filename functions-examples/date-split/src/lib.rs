//! `date-split`: a Strongroom function that replaces a (tokenized) date in a
//! JSON request body by separate day, month and year fields.
//!
//! See the crate's `README.md` for the contract.

pub mod date;
pub mod split;

use strongroom_guest::{
    Function, FunctionError, HttpMessage, Redaction, detokenize_one, export_function, log,
};

use crate::split::{FIELD_HEADER, parse_fields, split_dates};

/// The exported function.
pub struct DateSplit;

impl Function for DateSplit {
    fn on_request(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let fields = parse_fields(msg.header(FIELD_HEADER))?;
        // The configuration header is for this function, not the upstream.
        msg.remove_header(FIELD_HEADER);
        let mut body: serde_json::Value = msg.json()?;
        let split = split_dates(&mut body, &fields, |token| {
            Ok(detokenize_one(token, Redaction::Plain)?)
        })?;
        if split > 0 {
            msg.set_json(&body)?;
        }
        log::debug(&format!("date-split: split {split} field(s)"));
        Ok(msg)
    }
}

export_function!(DateSplit);

#[cfg(test)]
mod tests {
    use super::*;
    use strongroom_guest::testing;

    #[test]
    fn on_request_detokenizes_and_strips_the_config_header() {
        testing::reset();
        testing::add_token("tok_dob", "1985-12-01");
        let mut msg = HttpMessage::request("POST", "https://api.example.test/patients");
        msg.set_header(FIELD_HEADER, "$.dob");
        msg.set_json(&serde_json::json!({"dob": "tok_dob"})).ok();
        let out = DateSplit::on_request(msg).ok();
        let out = out.as_ref();
        assert_eq!(out.and_then(|m| m.header(FIELD_HEADER)), None);
        let body: Option<serde_json::Value> = out.and_then(|m| m.json().ok());
        assert_eq!(
            body,
            Some(serde_json::json!({"dob_day": 1, "dob_month": 12, "dob_year": 1985}))
        );
    }

    #[test]
    fn unknown_tokens_are_bad_requests() {
        testing::reset();
        let mut msg = HttpMessage::request("POST", "https://api.example.test/patients");
        msg.set_json(&serde_json::json!({"date_of_birth": "tok_unknown"}))
            .ok();
        assert!(matches!(
            DateSplit::on_request(msg),
            Err(FunctionError::BadRequest(_))
        ));
    }
}
