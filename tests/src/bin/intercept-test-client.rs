//! `intercept-test-client ADDR`: connects once over TCP to ADDR (e.g. `127.0.0.1:8080`,
//! `[::1]:8080`), sends [`intercept_tests::CLIENT_GREETING`] and exits 0; any failure is
//! printed and exits 1.
//!
//! The integration tests run it as a child process so that it, and not the test runner, can
//! be placed in a test cgroup before it connects.

use std::{io::Write as _, net::SocketAddr, net::TcpStream, process::ExitCode, time::Duration};

use intercept_tests::CLIENT_GREETING;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("intercept-test-client: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), None) = (args.next(), args.next()) else {
        return Err("usage: intercept-test-client ADDR".into());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("invalid address {addr:?}: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.write_all(CLIENT_GREETING).map_err(|e| format!("write to {addr}: {e}"))
}
