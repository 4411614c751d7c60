//! Test guest: returns every request and response unchanged.
//!
//! The baseline for host tests and benchmarks (instantiation and call
//! overhead with no work inside).

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function};

/// The exported function.
pub struct Trivial;

impl Function for Trivial {
    fn on_request(msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        Ok(msg)
    }
    // `on_response` keeps the SDK's default: unchanged.
}

export_function!(Trivial);
