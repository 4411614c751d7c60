//! An in-memory stand-in for the host, used when the crate is compiled for a
//! native target (e.g. by `cargo test`).
//!
//! State is per thread, so tests running in parallel do not interfere. Call
//! [`reset`] at the start of a test, then register tokens and files:
//!
//! ```
//! use strongroom_guest::{testing, detokenize_one, Redaction};
//! testing::reset();
//! testing::add_token("tok_1", "1990-05-17");
//! assert_eq!(detokenize_one("tok_1", Redaction::Plain).ok().as_deref(), Some("1990-05-17"));
//! assert!(detokenize_one("tok_2", Redaction::Plain).is_err());
//! ```
//!
//! Unlike the real host it does not enforce grants or hook rules.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::log::Level;
use crate::{File, Redaction};

#[derive(Default)]
struct MockHost {
    tokens: HashMap<String, String>,
    files: HashMap<[String; 4], File>,
    logs: Vec<(Level, String)>,
    next_token: u64,
}

thread_local! {
    static HOST: RefCell<MockHost> = RefCell::new(MockHost::default());
}

/// Clears every token, file and log line of this thread's stand-in host.
pub fn reset() {
    HOST.with_borrow_mut(|host| *host = MockHost::default());
}

/// Makes `token` detokenize to `value`.
pub fn add_token(token: &str, value: &str) {
    HOST.with_borrow_mut(|host| host.tokens.insert(token.to_owned(), value.to_owned()));
}

/// Makes [`read_file`](crate::read_file) of the given cell return `file`.
pub fn add_file(vault: &str, table: &str, record: &str, column: &str, file: File) {
    let key = [vault, table, record, column].map(str::to_owned);
    HOST.with_borrow_mut(|host| host.files.insert(key, file));
}

/// The lines logged so far on this thread.
pub fn logs() -> Vec<(Level, String)> {
    HOST.with_borrow(|host| host.logs.clone())
}

pub(crate) fn detokenize(
    tokens: &[String],
    level: Redaction,
) -> Result<Vec<Result<String, String>>, String> {
    HOST.with_borrow(|host| {
        Ok(tokens
            .iter()
            .map(|token| {
                let value = host.tokens.get(token).ok_or("not-found")?;
                Ok(redact(value, level))
            })
            .collect())
    })
}

/// Masks all but the last four characters, like the default masking rule.
fn redact(value: &str, level: Redaction) -> String {
    match level {
        Redaction::Plain => value.to_owned(),
        Redaction::Masked => {
            let keep = value.chars().count().saturating_sub(4);
            value
                .chars()
                .enumerate()
                .map(|(i, c)| if i < keep { '*' } else { c })
                .collect()
        }
        Redaction::Redacted => "[REDACTED]".to_owned(),
    }
}

pub(crate) fn tokenize(
    _vault: &str,
    _table: &str,
    _column: &str,
    values: &[String],
) -> Result<Vec<String>, String> {
    HOST.with_borrow_mut(|host| {
        Ok(values
            .iter()
            .map(|value| {
                host.next_token += 1;
                let token = format!("tok_mock_{}", host.next_token);
                host.tokens.insert(token.clone(), value.clone());
                token
            })
            .collect())
    })
}

pub(crate) fn read_file(
    vault: &str,
    table: &str,
    record: &str,
    column: &str,
) -> Result<File, String> {
    let key = [vault, table, record, column].map(str::to_owned);
    HOST.with_borrow(|host| {
        host.files
            .get(&key)
            .cloned()
            .ok_or_else(|| "not-found".to_owned())
    })
}

pub(crate) fn log(level: Level, message: &str) {
    HOST.with_borrow_mut(|host| host.logs.push((level, message.to_owned())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detokenize, tokenize};

    #[test]
    fn detokenize_levels_and_missing_tokens() {
        reset();
        add_token("t1", "4242424242424242");
        let values = detokenize(&["t1", "nope"], Redaction::Masked).ok();
        let values = values.as_deref().unwrap_or_default();
        assert_eq!(values[0].as_deref().ok(), Some("************4242"));
        assert_eq!(
            values[1].as_ref().err().map(|e| e.code()),
            Some("not-found")
        );
    }

    #[test]
    fn tokenize_then_detokenize() {
        reset();
        let tokens = tokenize("v", "t", "c", &["secret"]).unwrap_or_default();
        assert_eq!(tokens.len(), 1);
        let value = crate::detokenize_one(&tokens[0], Redaction::Plain).ok();
        assert_eq!(value.as_deref(), Some("secret"));
        crate::log::warn("hello");
        assert_eq!(logs(), vec![(Level::Warn, "hello".to_owned())]);
    }
}
