//! A fake Envoy admin for the proxy readiness tests (`apply --install-when` and the daemon's
//! `installWhen`).

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::topology::Netns;

/// The port of Envoy's admin in the seed guide (`http://127.0.0.1:9901/server_info`).
const ADMIN_PORT: u16 = 9901;

/// A fake Envoy admin: `GET /server_info` answers `{"state":"PRE_INITIALIZING"}` until
/// [`FakeAdmin::go_live`], then `{"state":"LIVE"}`. Listens on 127.0.0.1 of the namespace it
/// was created in; stops on drop.
pub struct FakeAdmin {
    live: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAdmin {
    pub fn start(netns: &Netns) -> FakeAdmin {
        // The socket belongs to the namespace the thread that made it had joined.
        let listener = netns.run(|| TcpListener::bind(("127.0.0.1", ADMIN_PORT)).expect("bind the fake admin"));
        listener.set_nonblocking(true).unwrap();
        let (live, stop, requests) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        let thread = {
            let (live, stop, requests) = (live.clone(), stop.clone(), requests.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((mut stream, _)) = listener.accept() else {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut request = Vec::new();
                    let mut buf = [0; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    // A client that gave up before sending anything gets no answer.
                    if request.is_empty() {
                        continue;
                    }
                    assert!(request.starts_with(b"GET /server_info "), "{}", String::from_utf8_lossy(&request));
                    let state = if live.load(Ordering::SeqCst) { "LIVE" } else { "PRE_INITIALIZING" };
                    let body = format!(r#"{{"version":"fake/1.29","state":"{state}","uptime_current_epoch":"1s"}}"#);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: \
                         close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                    requests.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        FakeAdmin { live, stop, requests, thread: Some(thread) }
    }

    pub fn go_live(&self) {
        self.live.store(true, Ordering::SeqCst);
    }

    /// Waits until the admin has answered `n` requests.
    pub fn wait_for_requests(&self, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.requests.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "intercept did not poll the admin {n} times in 20 s");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
