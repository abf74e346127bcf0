//! Log setup: structured lines on stderr through a bounded, non-blocking
//! writer, so a slow terminal or journald never stalls the data path (when
//! the buffer is full, lines are dropped rather than queued without bound).

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Environment variable that overrides the level, with `tracing` filter
/// syntax such as `info,vipgate::connection=warn`.
pub const LOG_ENV: &str = "VIPGATE_LOG";

/// Installs the global subscriber. `level` (`error` .. `trace`) applies
/// unless [`LOG_ENV`] is set. Keep the guard alive until exit: dropping it
/// flushes what is buffered.
pub fn init(level: &str) -> WorkerGuard {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(level));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    guard
}
