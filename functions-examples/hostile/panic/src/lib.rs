//! Hostile test guest: `on-request` panics.
//!
//! A Rust panic in a `wasm32-wasip2` component aborts, so the host sees a
//! trap (after the panic message on the guest's stderr) and must answer 502
//! without losing the worker.

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function};

/// The exported function.
pub struct Panic;

impl Function for Panic {
    fn on_request(_msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        panic!("hostile guest: deliberate panic in on-request");
    }
}

export_function!(Panic);
