//! Log setup: structured lines on stderr through a bounded, non-blocking
//! writer, so a slow terminal or journald never stalls the data path (when
//! the buffer is full, lines are dropped rather than queued without bound).
//!
//! Two formats: readable text (the default), and one JSON object per line
//! for log pipelines (`--log-format json` or `VIPGATE_LOG_FORMAT=json`),
//! with the timestamp, level, target and every field of the event. Under
//! systemd (`JOURNAL_STREAM` set), text lines leave the timestamp to
//! journald.

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
    match format {
        LogFormat::Json => builder
            .json()
            .with_target(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        // journald stamps every line itself.
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => builder
            .with_target(false)
            .with_ansi(false)
            .without_time()
            .init(),
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    guard
}
