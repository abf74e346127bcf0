//! Log setup: structured lines on stderr through a bounded, non-blocking
//! writer, so a slow terminal or journald never stalls the data path (when
//! the buffer is full, lines are dropped rather than queued without bound).
//!
//! Two formats: readable text (the default), and one JSON object per line
//! for log pipelines (`--log-format json` or `VIPGATE_LOG_FORMAT=json`),
//! with the timestamp, level, target and every field of the event. Under
//! systemd (`JOURNAL_STREAM` set), text lines leave the timestamp to
//! journald.
//!
//! Crates that log through `log` (rustls) are bridged into the same
//! lines; rustls' remarks about clients go through `tls::alerts` first.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

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
pub fn init(level: &str, format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(level));
    let format = match std::env::var(FORMAT_ENV).as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => format,
    };
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
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
        // journald stamps every line itself.
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => {
            tracing::subscriber::set_global_default(
                builder
                    .with_target(false)
                    .with_ansi(false)
                    .without_time()
                    .finish(),
            )
        }
        LogFormat::Text => tracing::subscriber::set_global_default(
            builder
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .finish(),
        ),
    };
    // Set once per process; a second call (tests) keeps the first.
    if installed.is_ok() && log::set_logger(&LogBridge).is_ok() {
        // rustls' warnings always (they are counted); below that, only
        // what the filter lets through, so its per-handshake tracing
        // costs nothing unless asked for.
        let asked = match tracing::level_filters::LevelFilter::current() {
            tracing::level_filters::LevelFilter::TRACE => log::LevelFilter::Trace,
            tracing::level_filters::LevelFilter::DEBUG => log::LevelFilter::Debug,
            _ => log::LevelFilter::Warn,
        };
        log::set_max_level(asked);
    }
    guard
}

/// Records of crates that log through `log`, as `tracing` events.
struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // rustls' warnings are counted whatever the level.
        metadata.target().starts_with("rustls")
            || tracing_log::AsTrace::as_trace(&metadata.level())
                <= tracing::level_filters::LevelFilter::current()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if record.target().starts_with("rustls") {
            crate::tls::alerts::rustls_said(record);
        } else {
            let _ = tracing_log::format_trace(record);
        }
    }

    fn flush(&self) {}
}
