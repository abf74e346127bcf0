//! The text line, formatted by hand: the same line as `tracing-subscriber`'s
//! full format without colours (`2026-12-05T16:35:45.927272Z  INFO request
//! virtual_server=web client=198.51.100.7:50112 status=200`), at a fraction
//! of its cost.
//!
//! Why: at the default `info` level an HTTP virtual writes a line per
//! request, and the library's formatter (a calendar conversion and a
//! dozen padded `write!`s for the timestamp, colour wrappers even with
//! colours off, a span lookup) cost about 9% of the requests a worker
//! could serve. Here the timestamp's date and time are formatted once a
//! second per thread, integers are written without `core::fmt`, and the
//! rest is one pass over the event's fields.
//!
//! Events with a span around them (vipgate opens none) and records bridged
//! from the `log` crate (whose level and target are fields) keep the
//! library's formatter, so their lines do not change either.
//!
//! Every value, not only the message, has terminal control characters
//! escaped (ESC, BEL, BS, FF, DEL and the C1 set, as the library does for
//! messages), so no value can drive the terminal of someone reading the log.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime as LibraryTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The text format without colours; `timestamps: false` under journald,
/// which stamps lines itself.
pub(super) struct TextLine {
    /// For the lines this one leaves to the library, configured alike;
    /// whether it stamps them says whether this one does.
    library: Library,
}

enum Library {
    Stamped(Format<Full, LibraryTime>),
    Unstamped(Format<Full, ()>),
}

impl TextLine {
    pub(super) fn new(timestamps: bool) -> TextLine {
        let format = Format::default().with_target(false).with_ansi(false);
        let library = if timestamps {
            Library::Stamped(format)
        } else {
            Library::Unstamped(format.without_time())
        };
        TextLine { library }
    }
}

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.is_log() || context.event_scope().is_some() {
            return match &self.library {
                Library::Stamped(format) => format.format_event(context, writer, event),
                Library::Unstamped(format) => format.format_event(context, writer, event),
            };
        }
        if matches!(self.library, Library::Stamped(_)) {
            write_timestamp(&mut writer, SystemTime::now())?;
            writer.write_char(' ')?;
        }
        writer.write_str(level_text(*event.metadata().level()))?;
        writer.write_char(' ')?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The level as the library writes it: five columns.
fn level_text(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

thread_local! {
    /// The second last formatted on this thread, and its text up to the
    /// seconds (`2026-12-05T16:35:45`).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-12-05T16:35:45.927272Z`: UTC, microseconds.
fn write_timestamp(writer: &mut impl Write, now: SystemTime) -> fmt::Result {
    // Before 1970 or after 9999 (a clock this wrong is rare), or while
    // the thread ends: the library's text, of the clock's time.
    let Ok(since_epoch) = now.duration_since(UNIX_EPOCH) else {
        return LibraryTime.format_time(&mut Writer::new(writer));
    };
    let seconds = since_epoch.as_secs();
    let written = SECOND.try_with(|second| {
        let mut second = second.try_borrow_mut().ok()?;
        if second.0 != seconds {
            second.1.clear();
            civil_time(seconds, &mut second.1)?;
            second.0 = seconds;
        }
        writer.write_str(&second.1).ok()
    });
    if written.ok().flatten().is_none() {
        return LibraryTime.format_time(&mut Writer::new(writer));
    }
    writer.write_char('.')?;
    let mut micros = [b'0'; 6];
    let mut rest = since_epoch.subsec_micros();
    for digit in micros.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    // Six ASCII digits.
    writer.write_str(std::str::from_utf8(&micros).map_err(|_| fmt::Error)?)?;
    writer.write_char('Z')
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SS` (UTC), for years up to
/// 9999 (`None` beyond: the library's text takes over).
fn civil_time(seconds: u64, text: &mut String) -> Option<()> {
    let days = seconds / 86_400;
    let in_day = seconds % 86_400;
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let shifted = days.checked_add(719_468)?;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    if year > 9999 {
        return None;
    }
    write!(
        text,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
    .ok()
}

/// Writes an event's fields as the library's default visitor does without
/// colours: the message first as it is, then ` name=value` with the value's
/// `Debug` text (strings quoted, `%display` values as displayed).
struct Fields<'writer, 'line> {
    writer: &'writer mut Writer<'line>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// The separator and `name=` (nothing for the message); `false` when
    /// the field is not written at all.
    fn begin(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        let name = field.name();
        // Metadata of `log` records; those take the library's formatter,
        // but a field so named is skipped alike.
        if name.starts_with("log.") {
            return false;
        }
        if self.first {
            self.first = false;
        } else {
            self.result = self.writer.write_char(' ');
        }
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = self
                .result
                .and_then(|()| self.writer.write_str(name))
                .and_then(|()| self.writer.write_char('='));
        }
        self.result.is_ok()
    }
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.begin(field) {
            self.result = write!(Escaping(&mut *self.writer), "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.begin(field) {
            return;
        }
        self.result = if field.name() == "message" {
            Escaping(&mut *self.writer).write_str(value)
        } else {
            write!(Escaping(&mut *self.writer), "{value:?}")
        };
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.begin(field) {
            self.result = write_integer(self.writer, false, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.begin(field) {
            self.result = write_integer(self.writer, value < 0, value.unsigned_abs());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.begin(field) {
            self.result = self.writer.write_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !self.begin(field) {
            return;
        }
        let mut out = Escaping(&mut *self.writer);
        self.result = match value.source() {
            None => write!(out, "{value}"),
            Some(source) => write!(out, "{value} {}.sources={}", field.name(), Sources(source)),
        };
    }
}

/// An error's chain of sources, `[first, second]`, as the library lists it.
struct Sources<'error>(&'error (dyn std::error::Error + 'static));

impl fmt::Display for Sources<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = formatter.debug_list();
        let mut next = Some(self.0);
        while let Some(error) = next {
            list.entry(&format_args!("{error}"));
            next = error.source();
        }
        list.finish()
    }
}

pub(super) fn write_integer(
    writer: &mut impl Write,
    negative: bool,
    mut value: u64,
) -> fmt::Result {
    let mut digits = [0u8; 21];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        start -= 1;
        digits[start] = b'-';
    }
    // ASCII digits and a sign.
    writer.write_str(std::str::from_utf8(&digits[start..]).map_err(|_| fmt::Error)?)
}

/// Passes text on with terminal control characters escaped: ESC, BEL, BS,
/// FF and DEL as `\x1b`, and the C1 controls (U+0080-U+009F) as `\u{9b}`.
struct Escaping<'writer, W: Write>(&'writer mut W);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // The usual case, one pass over the bytes: nothing to escape (C1
        // controls are encoded as 0xC2 0x80-0x9F in UTF-8).
        if !text
            .bytes()
            .any(|byte| matches!(byte, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2))
        {
            return self.0.write_str(text);
        }
        for character in text.chars() {
            match character {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                    write!(self.0, "\\x{:02x}", character as u32)?;
                }
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", character as u32)?,
                _ => self.0.write_char(character)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
