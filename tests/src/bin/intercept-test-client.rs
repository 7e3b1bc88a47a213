//! `intercept-test-client [--reply] ADDR`: connects once over TCP to ADDR (e.g.
//! `127.0.0.1:8080`, `[::1]:8080`), sends [`intercept_tests::CLIENT_GREETING`] and exits 0;
//! any failure is printed and exits 1.
//!
//! With `--reply` it then shuts down its sending side, reads the listener's answer until the
//! listener closes, and prints it on stdout (see `intercept_tests::traffic`).
//!
//! `intercept-test-client --udp ADDR` sends the greeting as one datagram from an unconnected
//! socket (`sendto`, as musl's resolver and dig do), `--udp-connected ADDR` from a connected
//! one (`connect` then `send`, as glibc's resolver does); either prints the reply datagram and
//! ` from=<addr>`, where `recvfrom` says it came from (what a resolver checks).
//!
//! The integration tests run it as a child process so that it, and not the test runner, can
//! be placed in a test cgroup, a network namespace and an identity before it connects.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

use intercept_tests::CLIENT_GREETING;

/// How long a connect, and a read of the reply, may take; `INTERCEPT_TEST_CLIENT_TIMEOUT_MS`
/// sets it for a test that holds connections on purpose.
const TIMEOUT: Duration = Duration::from_secs(5);
const TIMEOUT_VAR: &str = "INTERCEPT_TEST_CLIENT_TIMEOUT_MS";

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
    let (mode, addr) = match args.as_slice() {
        [flag, addr] if flag == "--reply" => ("--reply", addr),
        [flag, addr] if flag == "--udp" || flag == "--udp-connected" => (flag.as_str(), addr),
        [addr] => ("", addr),
        _ => return Err("usage: intercept-test-client [--reply|--udp|--udp-connected] ADDR".into()),
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("invalid address {addr:?}: {e}"))?;
    let timeout = match std::env::var(TIMEOUT_VAR) {
        Ok(ms) => Duration::from_millis(ms.parse().map_err(|e| format!("{TIMEOUT_VAR}={ms:?}: {e}"))?),
        Err(_) => TIMEOUT,
    };
    if mode.starts_with("--udp") {
        return udp(addr, mode == "--udp-connected");
    }
    let reply = mode == "--reply";
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.write_all(CLIENT_GREETING).map_err(|e| format!("write to {addr}: {e}"))?;
    if !reply {
        return Ok(());
    }
    stream.shutdown(Shutdown::Write).map_err(|e| format!("shut down writing to {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| format!("set a read timeout: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("read the reply from {addr}: {e}"))?;
    if answer.is_empty() {
        return Err(format!("{addr} closed the connection without a reply"));
    }
    print!("{answer}");
    Ok(())
}

fn udp(addr: SocketAddr, connected: bool) -> Result<(), String> {
    let any: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("an address");
    let socket = UdpSocket::bind(any).map_err(|e| format!("bind a UDP socket: {e}"))?;
    socket.set_read_timeout(Some(TIMEOUT)).map_err(|e| format!("set a read timeout: {e}"))?;
    if connected {
        socket.connect(addr).map_err(|e| format!("connect UDP to {addr}: {e}"))?;
        socket.send(CLIENT_GREETING).map_err(|e| format!("send to {addr}: {e}"))?;
    } else {
        socket.send_to(CLIENT_GREETING, addr).map_err(|e| format!("send to {addr}: {e}"))?;
    }
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).map_err(|e| format!("no reply from {addr}: {e}"))?;
    println!("{} from={from}", String::from_utf8_lossy(&buf[..n]).trim());
    Ok(())
}
