//! Hostile test guest: `on-request` allocates and touches 16 MiB chunks
//! until an allocation fails.
//!
//! The host's memory limit must make `memory.grow` fail; the allocation
//! failure then aborts the guest with a trap, never the host.

use std::hint::black_box;

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function};

/// The exported function.
pub struct MemoryBomb;

/// Size of each allocation.
const CHUNK: usize = 16 << 20;

impl Function for MemoryBomb {
    fn on_request(_msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            chunk.fill(0xa5);
            hoard.push(black_box(chunk));
        }
    }
}

export_function!(MemoryBomb);
