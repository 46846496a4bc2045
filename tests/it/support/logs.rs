//! The process's one log subscriber. Every test of the binary shares it, so it is installed
//! once (the first in-process gateway does it) and a test that reads log lines records them
//! through it instead of installing its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing_subscriber::filter::{dynamic_filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The gateway's log lines while at least one [`Recording`] lives.
#[derive(Default)]
struct Recorded {
    recordings: usize,
    text: Vec<u8>,
}

#[derive(Default)]
struct Logs {
    recorded: Mutex<Recorded>,
    /// `recorded.recordings > 0`, readable without the lock for the per-event filter.
    recording: AtomicBool,
}

impl Logs {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static LOGS: OnceLock<Logs> = OnceLock::new();

/// Installs the subscriber unless it is: lines `RUST_LOG` selects go to the test output
/// (`RUST_LOG=phx_gateway=debug cargo test`), and while a [`Recording`] lives, every
/// `phx_gateway` line at DEBUG and above is recorded (without colours).
pub(crate) fn install() {
    LOGS.get_or_init(|| {
        let record = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| Writer)
            .with_filter(
                // Asked per span and event: nothing is formatted while nobody records.
                dynamic_filter_fn(|meta, _| {
                    LOGS.get()
                        .is_some_and(|logs| logs.recording.load(Ordering::Relaxed))
                        && *meta.level() <= tracing::Level::DEBUG
                        && meta.target().starts_with("phx_gateway")
                })
                .with_max_level_hint(LevelFilter::DEBUG),
            );
        let show = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(EnvFilter::from_default_env());
        // Fails only if something else installed a global subscriber first.
        let _ = tracing_subscriber::registry()
            .with(record)
            .with(show)
            .try_init();
        Logs::default()
    });
}

/// Appends formatted lines to the record while someone records.
struct Writer;

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(logs) = LOGS.get() {
            let mut recorded = logs.lock();
            if recorded.recordings > 0 {
                recorded.text.extend_from_slice(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The gateway's log lines, from every test of the process, while this lives.
pub(crate) struct Recording(&'static Logs);

impl Recording {
    pub(crate) fn start() -> Self {
        install();
        let logs = LOGS.get().expect("installed");
        logs.lock().recordings += 1;
        logs.recording.store(true, Ordering::Relaxed);
        Self(logs)
    }

    /// How many bytes have been recorded: a position for [`Recording::since`].
    pub(crate) fn len(&self) -> usize {
        self.0.lock().text.len()
    }

    /// The lines recorded since position `from`.
    pub(crate) fn since(&self, from: usize) -> String {
        let recorded = self.0.lock();
        String::from_utf8_lossy(&recorded.text[from.min(recorded.text.len())..]).into_owned()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let mut recorded = self.0.lock();
        recorded.recordings -= 1;
        if recorded.recordings == 0 {
            recorded.text = Vec::new();
            self.0.recording.store(false, Ordering::Relaxed);
        }
    }
}
