//! The log line pgtenant writes when stderr is not a terminal: the same text as `tracing-subscriber`'s default
//! format without colours (`2026-12-04T12:29:31.680379Z  INFO target: message key=value key="text"`), made
//! without its per-character work. Two lines a login (the audit line and "session ended") cost a quarter of the
//! instructions of a `pgbench -C` login with the default formatter, most of it in `Debug`-escaping every text
//! value one character at a time and in painting names in styles that are off. Here a value of plain printable
//! ASCII is copied as it is; anything else goes through the same escaping as the default. Events inside a
//! span and events of the `log` crate are handed to the default formatter unchanged.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::VisitOutput;
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A [`FormatEvent`] writing plain (uncoloured) lines; see the module's documentation.
#[derive(Debug, Default)]
pub struct PlainLines {
    fallback: Format<Full>,
}

impl<S, N> FormatEvent<S, N> for PlainLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // The `log` crate's records carry their target in fields; the default formatter knows them.
        if ctx.event_scope().is_some() || meta.fields().field("log.target").is_some() {
            return self.fallback.format_event(ctx, writer, event);
        }
        writer.write_str(&rfc3339_micros(SystemTime::now()))?;
        writer.write_str(level_column(meta.level()))?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = PlainFields {
            writer: writer.by_ref(),
            is_empty: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The level as the default formatter pads it, and the space after it.
fn level_column(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        _ => " ERROR ",
    }
}

/// `time` in UTC as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (the default formatter's timestamp). The text up to the
/// seconds is kept per thread and made again only when the second changes.
fn rfc3339_micros(time: SystemTime) -> String {
    thread_local! {
        static UP_TO_SECONDS: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let mut text = String::with_capacity(27);
    UP_TO_SECONDS.with_borrow_mut(|(cached_second, cached_text)| {
        if *cached_second != seconds {
            *cached_text = up_to_seconds(seconds);
            *cached_second = seconds;
        }
        text.push_str(cached_text);
    });
    text.push('.');
    push_digits(&mut text, since_epoch.subsec_micros().into(), 6);
    text.push('Z');
    text
}

/// `YYYY-MM-DDTHH:MM:SS` of a count of seconds since the epoch, in UTC.
fn up_to_seconds(seconds: u64) -> String {
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    let mut text = String::with_capacity(19);
    push_digits(&mut text, year.max(0) as u64, 4);
    text.push('-');
    push_digits(&mut text, month.into(), 2);
    text.push('-');
    push_digits(&mut text, day.into(), 2);
    text.push('T');
    push_digits(&mut text, of_day / 3600, 2);
    text.push(':');
    push_digits(&mut text, of_day / 60 % 60, 2);
    text.push(':');
    push_digits(&mut text, of_day % 60, 2);
    text
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `value` in decimal, zero-padded to at least `width` digits.
fn push_digits(text: &mut String, value: u64, width: usize) {
    let mut buffer = [0u8; 20];
    let digits = decimal(value, &mut buffer);
    for _ in digits.len()..width {
        text.push('0');
    }
    text.push_str(digits);
}

/// `value` in decimal, written at the end of `buffer`.
pub(crate) fn decimal(value: u64, buffer: &mut [u8; 20]) -> &str {
    let mut at = buffer.len();
    let mut rest = value;
    loop {
        at -= 1;
        buffer[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buffer[at..]).unwrap_or("0")
}

/// The fields of an event as the default formatter writes them: the message bare, the others `name=value`,
/// separated by spaces; text values quoted and escaped as `Debug` does.
struct PlainFields<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainFields<'_> {
    fn separate(&mut self) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }

    fn name(&mut self, field: &Field) -> fmt::Result {
        let name = field.name();
        self.separate()?;
        self.writer
            .write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.writer.write_char('=')
    }
}

impl Visit for PlainFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            self.separate()
                .and_then(|()| EscapeControls(&mut self.writer).write_str(value))
        } else {
            self.name(field).and_then(|()| {
                if is_plain(value) {
                    self.writer.write_char('"')?;
                    self.writer.write_str(value)?;
                    self.writer.write_char('"')
                } else {
                    write!(self.writer, "{value:?}")
                }
            })
        };
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_err() || field.name() == "message" {
            return self.record_debug(field, &value);
        }
        self.result = self
            .name(field)
            .and_then(|()| self.writer.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_err() || field.name() == "message" {
            return self.record_debug(field, &value);
        }
        self.result = self
            .name(field)
            .and_then(|()| self.writer.write_str(decimal(value, &mut [0; 20])));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_err() || field.name() == "message" {
            return self.record_debug(field, &value);
        }
        self.result = self.name(field).and_then(|()| {
            if value < 0 {
                self.writer.write_char('-')?;
            }
            self.writer
                .write_str(decimal(value.unsigned_abs(), &mut [0; 20]))
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        // Rare, and the default writes an error's sources in its own way: let it.
        let mut default = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        default.record_error(field, value);
        self.is_empty = false;
        self.result = default.finish();
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            self.separate()
                .and_then(|()| write!(EscapeControls(&mut self.writer), "{value:?}"))
        } else {
            self.name(field)
                .and_then(|()| write!(self.writer, "{value:?}"))
        };
    }
}

/// Text that `Debug` writes as it is, between quotes: printable ASCII but `"` and `\`.
fn is_plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// A writer escaping what could drive a terminal (ESC, BEL, BS, FF, DEL, the C1 controls), as the default
/// formatter does for messages.
struct EscapeControls<'a, 'b>(&'a mut Writer<'b>);

impl fmt::Write for EscapeControls<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // 0xc2 starts the UTF-8 encoding of U+0080..U+00BF, the C1 controls among them.
        if !text
            .bytes()
            .any(|b| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2))
        {
            return self.0.write_str(text);
        }
        for ch in text.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_capture::{with_subscriber, Captured};
    use std::time::Duration;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the outer failure")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Every kind of field and value the code base logs, and the awkward ones.
    fn events() {
        let peer: std::net::SocketAddr = ([127, 0, 0, 1], 5432).into();
        let error = Outer(std::io::Error::other("inner \"cause\""));
        let plain_error = std::io::Error::other("just one");
        tracing::info!("a message alone");
        tracing::info!(target: "pgtenant::audit", %peer, user_name = ?"ann@example.com", tenant = "acme",
            admin = false, waited_ms = 12u64, delta = -3i64, ratio = 0.5f64, "login");
        tracing::warn!(
            text = "quote \" backslash \\ tab \t newline \n",
            unicode = "zürich ✓",
            control = "bell \x07",
            empty = "",
            "odd texts"
        );
        tracing::error!(
            error = &error as &(dyn std::error::Error + 'static),
            "with sources"
        );
        tracing::error!(
            error = &plain_error as &(dyn std::error::Error + 'static),
            "without"
        );
        tracing::info!("escape \x1b[31m red \u{9b} c1 and {} formatted", 42);
        tracing::info!(r#type = "raw name", "raw");
        tracing::info!(only = 1u64);
        tracing::debug!(message = "bool message", flag = true);
        tracing::trace!(count = 7i64, "trace level");
        let span = tracing::info_span!("inside", id = 3);
        span.in_scope(|| tracing::info!(k = "v", "in a span"));
    }

    fn lines_of(plain: bool) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(Level::TRACE);
        let dispatch = if plain {
            tracing::Dispatch::new(builder.event_format(PlainLines::default()).finish())
        } else {
            tracing::Dispatch::new(builder.finish())
        };
        with_subscriber(dispatch, events);
        captured.text()
    }

    #[test]
    fn lines_match_the_default_format_but_for_the_time() {
        let (default, plain) = (lines_of(false), lines_of(true));
        assert_eq!(default.lines().count(), 11, "{default}");
        assert_eq!(plain.lines().count(), default.lines().count(), "{plain}");
        for (expected, got) in default.lines().zip(plain.lines()) {
            let (expected_time, expected_rest) = expected.split_at(27);
            let (got_time, got_rest) = got.split_at(27);
            assert_eq!(got_rest, expected_rest);
            assert_eq!(got_time.len(), expected_time.len());
            assert_eq!(&got_time[..4], &expected_time[..4], "{got} / {expected}");
            assert!(
                got_time.bytes().zip(expected_time.bytes()).all(|(g, e)| {
                    g.is_ascii_digit() == e.is_ascii_digit() && (g.is_ascii_digit() || g == e)
                }),
                "{got_time} against {expected_time}"
            );
        }
        assert!(
            plain.contains(r#"text="quote \" backslash \\ tab \t newline \n""#),
            "{plain}"
        );
        assert!(
            plain.contains(r"escape \x1b[31m red \u{9b} c1 and 42 formatted"),
            "{plain}"
        );
        assert!(plain.contains("error.sources=[inner \"cause\"]"), "{plain}");
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let at = |seconds: u64, micros: u64| {
            rfc3339_micros(UNIX_EPOCH + Duration::from_micros(seconds * 1_000_000 + micros))
        };
        // Expected values from `date -u -d @<seconds> +%FT%T`.
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(1_796_396_018, 123_456), "2026-12-04T14:53:38.123456Z");
        assert_eq!(at(253_402_300_799, 500_000), "9999-12-31T23:59:59.500000Z");
        // The same second again (from the per-thread cache), the next one, and back.
        assert_eq!(at(253_402_300_799, 1), "9999-12-31T23:59:59.000001Z");
        assert_eq!(at(1_796_396_019, 0), "2026-12-04T14:53:39.000000Z");
        assert_eq!(at(1_796_396_018, 9), "2026-12-04T14:53:38.000009Z");
    }
}
