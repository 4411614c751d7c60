//! End-to-end tests: real HTTP to a real server on a real PostgreSQL.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // helpers outside #[test] fns

/// The servers under test run in this process, on the allocator `strongroom serve` uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bad_input;
mod connections;
mod connections_tls;
mod contract;
mod files;
mod functions;
mod governance;
mod keys;
mod plaintext;
mod records;
mod server;
mod tokens;
mod vaults;

/// Luhn check, for asserting on format-preserving card tokens.
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let mut d = c.to_digit(10).expect("digit");
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}
