//! The hand-made line against the library's own, event by event.

use std::sync::{Arc, Mutex};

use super::*;

/// What a subscriber wrote, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        crate::sync::lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(crate::sync::lock(&self.0).clone()).expect("UTF-8 lines")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot reach the member")]
struct Outer(#[source] std::io::Error);

/// Every kind of field vipgate logs, at every level.
fn events() {
    let address: std::net::SocketAddr = "198.51.100.7:50112".parse().unwrap();
    let missing: Option<std::net::SocketAddr> = None;
    tracing::info!(target: "vipgate::request", virtual_server = %"web", client = %address, member = missing.map(tracing::field::display), method = %http::Method::GET, status = 200u16, duration_ms = 12u64, "request");
    tracing::warn!(delta = -42i64, ratio = 0.5f64, on = true, name = "quoted \"name\"", list = ?vec![1, 2], "numbers and words");
    tracing::error!(r#type = "raw", "a raw field name");
    tracing::debug!(count = 0u64, "zero");
    tracing::trace!("message only");
    tracing::info!(
        "2 worker threads on CPUs [{}, {}] ({})",
        0,
        1,
        "settings.cpu_affinity = \"auto\""
    );
    tracing::info!(message = "a message given as a field", after = 1u64);
    tracing::info!(before = 1u64, "the message comes where it is given");
    let error = Outer(std::io::Error::other("connection refused"));
    tracing::warn!(
        error = &error as &(dyn std::error::Error + 'static),
        "with sources"
    );
    let plain = std::io::Error::other("no source");
    tracing::warn!(
        error = &plain as &(dyn std::error::Error + 'static),
        "without sources"
    );
    tracing::info!("escaped in the message: \x1b[31mred\x1b[0m \u{9b} bell\x07");
}

/// The lines `events` gives through `format`, without timestamps.
fn lines_of<F>(format: F) -> String
where
    F: tracing_subscriber::fmt::FormatEvent<
            tracing_subscriber::Registry,
            tracing_subscriber::fmt::format::DefaultFields,
        > + Send
        + Sync
        + 'static,
{
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .event_format(format)
        .finish();
    tracing::subscriber::with_default(subscriber, events);
    captured.text()
}

#[test]
fn lines_are_the_library_lines() {
    let ours = lines_of(TextLine::new(false));
    let library = lines_of(
        Format::default()
            .with_target(false)
            .with_ansi(false)
            .without_time(),
    );
    assert_eq!(ours.lines().count(), 11, "{ours}");
    for (ours, library) in ours.lines().zip(library.lines()) {
        assert_eq!(ours, library);
    }
    assert!(ours.contains(" INFO request virtual_server=web client=198.51.100.7:50112 method=GET status=200 duration_ms=12\n"), "{ours}");
    assert!(
        ours.contains("\\x1b[31mred\\x1b[0m \\u{9b} bell\\x07"),
        "{ours}"
    );
}

#[test]
fn field_values_are_escaped_too() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .event_format(TextLine::new(false))
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(server_name = %"evil\x1b]0;title\x07", "hello");
    });
    assert_eq!(
        captured.text(),
        " INFO hello server_name=evil\\x1b]0;title\\x07\n"
    );
}

#[test]
fn timestamps_are_utc_with_microseconds() {
    let at = |seconds: u64, micros: u32| {
        let mut text = String::new();
        let time = UNIX_EPOCH + std::time::Duration::new(seconds, micros * 1000);
        write_timestamp(&mut text, time).unwrap();
        text
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
    assert_eq!(at(1_764_952_545, 927_272), "2025-12-05T16:35:45.927272Z");
    assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    assert_eq!(at(253_402_300_799, 1), "9999-12-31T23:59:59.000001Z");
    // The cache is per second: the next second is formatted anew.
    assert_eq!(at(1_764_952_546, 0), "2025-12-05T16:35:46.000000Z");
    // Past year 9999 the library's text takes over (the clock's, not this
    // one: only that it is not the four-digit form).
    assert!(!at(253_402_300_800, 0).starts_with("9999"));
}

#[test]
fn the_timestamp_agrees_with_the_library() {
    let pair = || {
        let mut ours = String::new();
        write_timestamp(&mut ours, SystemTime::now()).unwrap();
        let mut library = String::new();
        LibraryTime
            .format_time(&mut Writer::new(&mut library))
            .unwrap();
        (ours, library)
    };
    // Taken microseconds apart: the same length and the same minute; a
    // second try if a minute turned in between.
    let (mut ours, mut library) = pair();
    if ours[..16] != library[..16] {
        (ours, library) = pair();
    }
    assert_eq!(ours.len(), library.len(), "{ours} / {library}");
    assert_eq!(ours[..16], library[..16], "{ours} / {library}");
}

#[test]
fn integers_are_written_whole() {
    for (negative, value, text) in [
        (false, 0, "0"),
        (false, 7, "7"),
        (false, u64::MAX, "18446744073709551615"),
        (true, 1u64 << 63, "-9223372036854775808"),
        (true, 42, "-42"),
    ] {
        let mut out = String::new();
        write_integer(&mut out, negative, value).unwrap();
        assert_eq!(out, text);
    }
}
