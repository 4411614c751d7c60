//! Hostile test guest: `on-request` recurses without bound, with a sizeable
//! frame at each level.
//!
//! The stack overflow must trap the guest (shadow stack out of bounds or the
//! host's wasm stack limit), never crash the host.

use std::hint::black_box;

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function};

/// The exported function.
pub struct DeepRecursion;

/// Recurses until the stack runs out; the `black_box`es stop the compiler
/// from turning it into a loop or proving it never returns.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    if black_box(depth) == u64::MAX {
        return frame[0];
    }
    descend(depth + 1).wrapping_add(frame[31])
}

impl Function for DeepRecursion {
    fn on_request(msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        black_box(descend(0));
        Ok(msg)
    }
}

export_function!(DeepRecursion);
