//! Hostile test guest: tries to open a TCP connection.
//!
//! `std::net::TcpStream::connect` makes the component import
//! `wasi:sockets/*`, which the host never links, so the host must refuse to
//! load this component at all (and, should it ever be instantiated, the
//! connect must fail). The target is the loopback discard port, so even a
//! broken host sends nothing off the machine.

use std::net::TcpStream;

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function};

/// The exported function.
pub struct ForbiddenImport;

/// Where the guest tries to connect.
pub const TARGET: &str = "127.0.0.1:9";

impl Function for ForbiddenImport {
    fn on_request(msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        match TcpStream::connect(TARGET) {
            Ok(_) => Err(FunctionError::Internal(format!(
                "sandbox escape: connected to {TARGET}"
            ))),
            Err(_) => Ok(msg),
        }
    }
}

export_function!(ForbiddenImport);
