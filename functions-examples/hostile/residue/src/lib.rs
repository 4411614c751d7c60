//! Hostile test guest: looks in its linear memory for what an earlier invocation left there.
//!
//! - `{"plant": S}` copies `S` into 64 leaked heap buffers and into a page it grows itself,
//!   then answers `{"found": n}`: the copies of `S` its scan sees, its own included. So a
//!   test can tell that the scan finds what is there.
//! - `{"seek": R}`, where `R` is `S` reversed, rebuilds `S` in one buffer and answers
//!   `{"found": n}`: the copies of `S` anywhere else in its memory. The host must give every
//!   invocation memory with nothing of an earlier one in it, so `n` must be 0.

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function};

/// The exported function.
pub struct Residue;

const PAGE: usize = 64 * 1024;

/// Copies of `needle` in the whole linear memory, except the one at `skip`.
fn count(needle: &[u8], skip: usize) -> usize {
    let end = core::arch::wasm32::memory_size(0) * PAGE;
    let Some((&first, rest)) = needle.split_first() else {
        return 0;
    };
    let byte = |addr: usize| {
        // SAFETY: every address below `memory_size` is mapped linear memory; volatile reads so
        // the scan is not reasoned away.
        unsafe { core::ptr::read_volatile(addr as *const u8) }
    };
    let mut found = 0;
    // Address 0 is skipped: nothing is stored there.
    for addr in 1..end.saturating_sub(needle.len()) {
        if addr != skip
            && byte(addr) == first
            && rest
                .iter()
                .enumerate()
                .all(|(i, &b)| byte(addr + 1 + i) == b)
        {
            found += 1;
        }
    }
    found
}

impl Function for Residue {
    fn on_request(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let body: serde_json::Value = msg.json()?;
        let found = if let Some(plant) = body["plant"].as_str() {
            for _ in 0..64 {
                Box::leak(plant.as_bytes().to_vec().into_boxed_slice());
            }
            let page = core::arch::wasm32::memory_grow(0, 1);
            if page != usize::MAX && plant.len() <= PAGE {
                // SAFETY: the page was just grown and belongs to no allocation.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        plant.as_ptr(),
                        (page * PAGE) as *mut u8,
                        plant.len(),
                    )
                };
            }
            count(plant.as_bytes(), 0)
        } else {
            let seek = body["seek"].as_str().unwrap_or_default();
            let needle: Vec<u8> = seek.bytes().rev().collect();
            count(&needle, needle.as_ptr() as usize)
        };
        msg.set_header("content-type", "application/json");
        msg.set_body(format!("{{\"found\":{found}}}").into_bytes());
        Ok(msg)
    }
}

export_function!(Residue);
