//! `intercept-test-client [--reply] ADDR`: connects once over TCP to ADDR (e.g.
//! `127.0.0.1:8080`, `[::1]:8080`), sends [`intercept_tests::CLIENT_GREETING`] and exits 0;
//! any failure is printed and exits 1.
//!
//! With `--reply` it then shuts down its sending side, reads the listener's answer until the
//! listener closes, and prints it on stdout (see `intercept_tests::traffic`).
//!
//! The integration tests run it as a child process so that it, and not the test runner, can
//! be placed in a test cgroup, a network namespace and an identity before it connects.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use intercept_tests::CLIENT_GREETING;

const TIMEOUT: Duration = Duration::from_secs(5);

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (reply, addr) = match args.as_slice() {
        [flag, addr] if flag == "--reply" => (true, addr),
        [addr] => (false, addr),
        _ => return Err("usage: intercept-test-client [--reply] ADDR".into()),
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("invalid address {addr:?}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.write_all(CLIENT_GREETING).map_err(|e| format!("write to {addr}: {e}"))?;
    if !reply {
        return Ok(());
    }
    stream.shutdown(Shutdown::Write).map_err(|e| format!("shut down writing to {addr}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| format!("set a read timeout: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("read the reply from {addr}: {e}"))?;
    if answer.is_empty() {
        return Err(format!("{addr} closed the connection without a reply"));
    }
    print!("{answer}");
    Ok(())
}
