//! Log setup: structured lines on stderr, written by a thread of their
//! own so a slow terminal or journald never stalls the data path.
//!
//! A worker thread does not hand over each line (a futex wake-up per
//! connection, and per request on HTTP virtuals): it gathers its lines in
//! a buffer of its own and hands the batch over 100 ms after its first
//! line (`workers::LOG_FLUSH_INTERVAL`; the worker is told of that first
//! line, so an idle worker is never woken to flush nothing) or when the
//! batch passes [`BATCH_BYTES`]. Other
//! threads hand over each line at once. Both are bounded: when
//! [`QUEUED_BATCHES`] wait for the writer, further ones are dropped and
//! counted, and the writer says how many lines were lost.
//!
//! Two formats: readable text (the default; formatted by hand in `text`,
//! coloured by the library on a terminal), and one JSON object per line
//! for log pipelines (`--log-format json` or `VIPGATE_LOG_FORMAT=json`),
//! with the timestamp, level, target and every field of the event. Under
//! systemd (`JOURNAL_STREAM` set), text lines leave the timestamp to
//! journald.
//!
//! Crates that log through `log` (rustls) are bridged into the same
//! lines. A module above may claim one crate's records first
//! ([`claim_log_records`]): `tls` takes rustls' remarks about clients, to
//! count them and name the client.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

mod address;
mod text;

pub use address::Address;

/// A worker hands its lines over once they pass this many bytes (64 KiB,
/// about 300 lines), if its flush interval has not come first. Each hand-over
/// wakes the writer thread: at 16 KiB a busy HTTP virtual (75k requests/s)
/// woke it 950 times a second.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Batches waiting for the writer thread; beyond this, lines are dropped
/// (and counted) rather than queued without bound: 256 (16 MiB of lines).
pub const QUEUED_BATCHES: usize = 256;

/// How long the guard waits at exit for the writer to finish: 2 s.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Environment variable that overrides the level, with `tracing` filter
/// syntax such as `info,vipgate::connection=warn`.
pub const LOG_ENV: &str = "VIPGATE_LOG";

/// Environment variable that overrides the format: `text` or `json`.
pub const FORMAT_ENV: &str = "VIPGATE_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines: time, level, message, `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

/// Installs the global subscriber. `level` (`error` .. `trace`) applies
/// unless [`LOG_ENV`] is set; `format` unless [`FORMAT_ENV`] is. Keep the
/// guard alive until exit: dropping it flushes what is buffered.
pub fn init(level: &str, format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(level));
    let format = match std::env::var(FORMAT_ENV).as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => format,
    };
    start_writer();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| BatchWriter);
    // `finish` and not `init`: the `log` bridge is ours (below).
    let installed = match format {
        LogFormat::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .with_target(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Text => {
            // journald stamps every line itself.
            let journald = std::env::var_os("JOURNAL_STREAM").is_some();
            if !journald && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                // Colours, for a person at a terminal: speed does not matter.
                tracing::subscriber::set_global_default(
                    builder.with_target(false).with_ansi(true).finish(),
                )
            } else {
                tracing::subscriber::set_global_default(
                    builder
                        .event_format(text::TextLine::new(!journald))
                        .finish(),
                )
            }
        }
    };
    // Set once per process; a second call (tests) keeps the first.
    if installed.is_ok() && log::set_logger(&LogBridge).is_ok() {
        // Warnings always (a claimed crate's are counted); below that, only
        // what the filter lets through, so its per-handshake tracing
        // costs nothing unless asked for.
        let asked = match tracing::level_filters::LevelFilter::current() {
            tracing::level_filters::LevelFilter::TRACE => log::LevelFilter::Trace,
            tracing::level_filters::LevelFilter::DEBUG => log::LevelFilter::Debug,
            _ => log::LevelFilter::Warn,
        };
        log::set_max_level(asked);
    }
    LogGuard(())
}

/// Flushes the log lines still buffered when dropped (at exit).
#[must_use = "dropping the guard flushes the log; keep it until exit"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush_thread();
        if let Some(sink) = SINK.get() {
            let (done, finished) = mpsc::sync_channel(1);
            if sink.send(Message::Flush(done)).is_ok() {
                let _ = finished.recv_timeout(FINAL_FLUSH_WAIT);
            }
        }
    }
}

enum Message {
    Lines(Vec<u8>),
    /// Answered once everything before it is written.
    Flush(SyncSender<()>),
}

/// The writer thread's queue, once [`init`] started it.
static SINK: OnceLock<SyncSender<Message>> = OnceLock::new();

/// Lines dropped because the writer fell behind, not yet reported.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static BATCH: RefCell<Batch> = const {
        RefCell::new(Batch { buffered: false, bytes: Vec::new(), first_line: None })
    };
}

/// This thread's lines not yet handed to the writer.
struct Batch {
    /// Gather lines until [`flush_thread`] (worker threads), rather than
    /// handing each over at once.
    buffered: bool,
    bytes: Vec<u8>,
    /// Told when a line lands in an empty batch (gathering threads).
    first_line: Option<std::rc::Rc<tokio::sync::Notify>>,
}

impl Batch {
    fn hand_over(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.bytes);
        let dropped = match SINK.get() {
            // No writer started (tests of the library alone): nowhere to go.
            None => Some(lines),
            Some(sink) => match sink.try_send(Message::Lines(lines)) {
                // The writer is behind: these lines are dropped and counted.
                Err(
                    TrySendError::Full(Message::Lines(lines))
                    | TrySendError::Disconnected(Message::Lines(lines)),
                ) => {
                    let count = lines.iter().filter(|&&b| b == b'\n').count();
                    DROPPED_LINES.fetch_add(count as u64, Ordering::Relaxed);
                    Some(lines)
                }
                _ => None,
            },
        };
        self.bytes = next_batch(self.buffered, dropped);
    }
}

/// The buffer a thread gathers its next lines in, after handing over a
/// batch (`dropped`: the batch, if it was not taken). A worker's starts at
/// its full size (a line may end past it) rather than growing to it through
/// a dozen reallocations, reusing a dropped batch's; other threads keep
/// none.
fn next_batch(buffered: bool, dropped: Option<Vec<u8>>) -> Vec<u8> {
    match (buffered, dropped) {
        (false, _) => Vec::new(),
        (true, Some(mut lines)) => {
            lines.clear();
            lines
        }
        (true, None) => Vec::with_capacity(BATCH_BYTES + BATCH_BYTES / 4),
    }
}

impl Drop for Batch {
    /// A thread that ends hands over what it gathered.
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// Makes the calling thread gather its log lines until [`flush_thread`];
/// `first_line` is told whenever a line lands in an empty batch (a worker
/// then flushes 100 ms later).
pub fn buffer_this_thread(first_line: std::rc::Rc<tokio::sync::Notify>) {
    BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        batch.buffered = true;
        batch.first_line = Some(first_line);
    });
}

/// Hands the calling thread's gathered lines to the writer thread.
pub fn flush_thread() {
    let _ = BATCH.try_with(|batch| {
        if let Ok(mut batch) = batch.try_borrow_mut() {
            batch.hand_over();
        }
    });
}

/// What the formatter writes a line to: this thread's batch.
struct BatchWriter;

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let _ = BATCH.try_with(|batch| {
            if let Ok(mut batch) = batch.try_borrow_mut() {
                let first = batch.bytes.is_empty();
                batch.bytes.extend_from_slice(line);
                if !batch.buffered || batch.bytes.len() >= BATCH_BYTES {
                    batch.hand_over();
                } else if first {
                    if let Some(first_line) = &batch.first_line {
                        first_line.notify_one();
                    }
                }
            }
        });
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts the thread that writes batches to stderr (once per process).
fn start_writer() {
    SINK.get_or_init(|| {
        let (sink, batches) = mpsc::sync_channel::<Message>(QUEUED_BATCHES);
        let spawned = std::thread::Builder::new()
            .name("vipgate-log".into())
            .spawn(move || {
                for message in batches {
                    // Locked per batch: the main thread prints its last
                    // error to stderr too.
                    let mut stderr = std::io::stderr().lock();
                    let dropped = DROPPED_LINES.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let _ = writeln!(stderr, "vipgate: {dropped} log lines dropped: the log output (stderr) is slower than the lines come");
                    }
                    match message {
                        Message::Lines(lines) => {
                            let _ = stderr.write_all(&lines);
                        }
                        Message::Flush(done) => {
                            let _ = stderr.flush();
                            let _ = done.send(());
                        }
                    }
                }
            });
        if let Err(error) = spawned {
            eprintln!("vipgate: cannot start the log writer thread ({error}); logging off");
        }
        sink
    });
}

/// A crate's `log` records, claimed by a module above this one.
struct Claim {
    /// The records' target prefix, e.g. `"rustls"`.
    target: &'static str,
    take: fn(&log::Record<'_>),
}

/// Set once; read (without a lock) for every record a `log` crate sends.
static CLAIM: OnceLock<Claim> = OnceLock::new();

/// Sends the `log` records whose target starts with `target` to `take`
/// instead of the log, whatever the level (warnings at least, see [`init`]:
/// a claimed crate's warnings are counted even when not logged). One claim
/// per process; `false` if another target was claimed already (the same
/// one again is fine).
pub fn claim_log_records(target: &'static str, take: fn(&log::Record<'_>)) -> bool {
    CLAIM.get_or_init(|| Claim { target, take }).target == target
}

fn claim_of(target: &str) -> Option<&'static Claim> {
    CLAIM.get().filter(|claim| target.starts_with(claim.target))
}

/// Records of crates that log through `log`, as `tracing` events.
struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        claim_of(metadata.target()).is_some()
            || tracing_log::AsTrace::as_trace(&metadata.level())
                <= tracing::level_filters::LevelFilter::current()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match claim_of(record.target()) {
            Some(claim) => (claim.take)(record),
            None => {
                let _ = tracing_log::format_trace(record);
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What this thread has gathered: (bytes, capacity).
    fn gathered() -> (usize, usize) {
        BATCH.with(|batch| {
            let batch = batch.borrow();
            (batch.bytes.len(), batch.bytes.capacity())
        })
    }

    /// A worker is told of a batch's first line only, so that it sleeps
    /// while nothing is logged and flushes once per batch.
    #[test]
    fn the_first_line_of_a_batch_tells_the_worker_and_no_other_does() {
        std::thread::spawn(|| {
            let first_line = std::rc::Rc::new(tokio::sync::Notify::new());
            buffer_this_thread(std::rc::Rc::clone(&first_line));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let told = || {
                runtime.block_on(async {
                    tokio::time::timeout(
                        std::time::Duration::from_millis(20),
                        first_line.notified(),
                    )
                    .await
                    .is_ok()
                })
            };
            assert!(!told(), "nothing logged, nothing told");
            BatchWriter.write_all(b"one\n").unwrap();
            assert!(told(), "the first line tells");
            BatchWriter.write_all(b"two\n").unwrap();
            assert!(!told(), "a second line of the same batch does not");
            flush_thread();
            BatchWriter.write_all(b"three\n").unwrap();
            assert!(told(), "the next batch's first line tells again");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_worker_hands_its_lines_over_once_they_pass_the_batch_size() {
        std::thread::spawn(|| {
            let first_line = std::rc::Rc::new(tokio::sync::Notify::new());
            buffer_this_thread(std::rc::Rc::clone(&first_line));
            let line = [b'x'; 199];
            let mut written = 0;
            while written + line.len() < BATCH_BYTES {
                BatchWriter.write_all(&line).unwrap();
                written += line.len();
                assert_eq!(gathered().0, written, "gathered, not handed over");
            }
            BatchWriter.write_all(&line).unwrap();
            let (bytes, capacity) = gathered();
            assert_eq!(bytes, 0, "handed over at {BATCH_BYTES} bytes");
            assert!(capacity > BATCH_BYTES, "the next batch starts at full size");
            BatchWriter.write_all(&line).unwrap();
            flush_thread();
            assert_eq!(gathered().0, 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_worker_gathers_next_in_a_full_size_buffer_and_reuses_a_dropped_one() {
        let fresh = next_batch(true, None);
        assert!(fresh.is_empty() && fresh.capacity() > BATCH_BYTES);
        let dropped = vec![b'x'; 300];
        let at = dropped.as_ptr();
        let reused = next_batch(true, Some(dropped));
        assert!(reused.is_empty());
        assert_eq!(reused.as_ptr(), at, "the dropped batch's buffer");
        assert_eq!(next_batch(false, None).capacity(), 0);
        assert_eq!(next_batch(false, Some(vec![b'x'; 300])).capacity(), 0);
    }

    #[test]
    fn other_threads_hand_each_line_over_and_keep_no_buffer() {
        std::thread::spawn(|| {
            BatchWriter.write_all(b"one line\n").unwrap();
            assert_eq!(gathered(), (0, 0));
        })
        .join()
        .unwrap();
    }
}
