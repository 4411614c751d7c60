//! Hostile test guest: `on-request` spins forever.
//!
//! The host must interrupt it (fuel or epoch deadline) and answer with a
//! timeout instead of hanging a worker.

use std::hint::black_box;

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function};

/// The exported function.
pub struct InfiniteLoop;

impl Function for InfiniteLoop {
    fn on_request(_msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let mut counter: u64 = 0;
        loop {
            // `black_box` keeps the optimiser from proving the loop side-effect free.
            counter = black_box(counter.wrapping_add(1));
        }
    }
}

export_function!(InfiniteLoop);
