//! Hostile test guest: `on-request` sleeps, blocked in a host call (WASI's monotonic clock),
//! for 60 s or the milliseconds in the `x-sleep-ms` header.
//!
//! No wasm code runs while it sleeps, so an epoch deadline alone never fires: the host must
//! stop it at its `timeout_ms` all the same, answer with the same timeout as for an infinite
//! loop, and free its instance.

use std::time::Duration;

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function};

/// The exported function.
pub struct Sleep;

impl Function for Sleep {
    fn on_request(msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let ms = msg
            .header("x-sleep-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(60_000);
        std::thread::sleep(Duration::from_millis(ms));
        Ok(msg)
    }
}

export_function!(Sleep);
