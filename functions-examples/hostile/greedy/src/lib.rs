//! Hostile test guest: `on-request` floods everything that is counted.
//!
//! It logs 5,000 empty lines, prints 256 KiB to stdout, then calls `detokenize` (with no
//! tokens) until the host refuses. The host must cap the log lines (empty ones too), drop
//! stdout past the log's limit instead of failing the guest, and refuse vault calls past the
//! invocation's quota with `quota-exceeded`. The reply body says how many calls went through
//! and the error that stopped them.

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
        let mut calls = 0u32;
        let error = loop {
            match strongroom_guest::detokenize(&[], Redaction::Plain) {
                Ok(_) if calls < 100_000 => calls += 1,
                Ok(_) => break "no limit".to_string(),
                Err(e) => break e.code().to_string(),
            }
        };
        msg.set_body(format!("{{\"calls\":{calls},\"error\":\"{error}\"}}"));
        Ok(msg)
    }
}

export_function!(Greedy);
