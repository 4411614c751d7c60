//! Hostile test guest: `on-request` returns a body far larger than any sane
//! output limit.
//!
//! The size defaults to 16 MiB; the request header `x-huge-output-bytes`
//! overrides it (so a test can pick a size just over the host's limit while
//! staying under its memory limit). The host must reject the output.

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function};

/// The exported function.
pub struct HugeOutput;

/// Request header overriding the body size, in bytes.
pub const SIZE_HEADER: &str = "x-huge-output-bytes";

/// Body size used when the header is absent.
pub const DEFAULT_SIZE: usize = 16 << 20;

impl Function for HugeOutput {
    fn on_request(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let size = match msg.header(SIZE_HEADER) {
            Some(value) => value.trim().parse().map_err(|_| {
                FunctionError::BadRequest(format!("{SIZE_HEADER} must be a byte count"))
            })?,
            None => DEFAULT_SIZE,
        };
        msg.set_body(vec![b'A'; size]);
        Ok(msg)
    }
}

export_function!(HugeOutput);
