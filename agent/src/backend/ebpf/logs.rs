//! `--bpf-log`: the programs' debug events, forwarded to `tracing`.

use std::time::Duration;

use aya_log::EbpfLogger;

/// The programs' debug events (aya-log), forwarded to `tracing` (target `intercept::bpf`) at
/// their own level. The ring buffer lives as long as this value.
pub struct Logs(pub(super) EbpfLogger<Printer>);

impl Logs {
    /// Forwards the events that arrived since the last call.
    pub fn flush(&mut self) {
        self.0.flush();
    }

    /// Forwards events as they arrive, forever (the pins keep interception going when this
    /// process is killed).
    pub fn follow(mut self) -> ! {
        loop {
            self.flush();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// aya-log's `log::Log` sink: each record becomes a `tracing` event.
pub struct Printer;

impl log::Log for Printer {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "intercept::bpf", "{message}"),
            log::Level::Warn => tracing::warn!(target: "intercept::bpf", "{message}"),
            log::Level::Info => tracing::info!(target: "intercept::bpf", "{message}"),
            log::Level::Debug => tracing::debug!(target: "intercept::bpf", "{message}"),
            log::Level::Trace => tracing::trace!(target: "intercept::bpf", "{message}"),
        }
    }

    fn flush(&self) {}
}
