//! Hostile test guest: `on-request` floods everything that is counted.
//!
//! It logs 5,000 empty lines, prints 256 KiB to stdout, then calls `detokenize` (with no
//! tokens) until the host refuses. The host must cap the log lines (empty ones too), drop
//! stdout past the log's limit instead of failing the guest, and refuse vault calls past the
//! invocation's quota with `quota-exceeded`. The reply body says how many calls went through
//! and the error that stopped them.
//!
//! First, when the body lists tokens (`{"tokens": [...]}`), it asks for all of them in one
//! `detokenize` call, which the host must refuse (`quota-exceeded`) when their values together
//! pass the invocation's revealed-bytes quota. The reply's `bulk` says how that call went.

use std::io::Write;

use strongroom_guest::{Function, FunctionError, HttpMessage, Redaction, export_function, log};

/// The exported function.
pub struct Greedy;

impl Function for Greedy {
    fn on_request(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        for _ in 0..5_000 {
            log::info("");
        }
        let line = [b'x'; 1023];
        let mut out = std::io::stdout();
        for _ in 0..256 {
            // A refused write would panic in `println!`: the host must accept and drop.
            out.write_all(&line)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| FunctionError::Internal(format!("stdout: {e}")))?;
        }
        let _ = out.flush();
        let bulk = match msg.json::<serde_json::Value>() {
            Ok(body) if body.get("tokens").is_some() => {
                let tokens: Vec<&str> = body["tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str())
                    .collect();
                match strongroom_guest::detokenize(&tokens, Redaction::Plain) {
                    Ok(values) => format!("revealed {}", values.len()),
                    Err(e) => e.code().to_string(),
                }
            }
            _ => "none".to_string(),
        };
        let mut calls = 0u32;
        let error = loop {
            match strongroom_guest::detokenize(&[], Redaction::Plain) {
                Ok(_) if calls < 100_000 => calls += 1,
                Ok(_) => break "no limit".to_string(),
                Err(e) => break e.code().to_string(),
            }
        };
        msg.set_body(format!(
            "{{\"bulk\":\"{bulk}\",\"calls\":{calls},\"error\":\"{error}\"}}"
        ));
        Ok(msg)
    }
}

export_function!(Greedy);
