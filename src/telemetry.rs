//! Logging: `tracing` to standard output, human-readable or one JSON object per line.
//!
//! Every request writes an access-log line, so the line's cost is part of every request's. Two
//! things keep it small:
//!
//! * JSON lines are written by [`JsonLine`], which keeps each span's fields as a ready JSON
//!   fragment ([`JsonFields`]): recording a field appends to it, and a line splices it in as is.
//!   tracing-subscriber's own JSON formatter parses and re-serializes a span's fields at every
//!   record and every line. The shape is the same: the event's fields at the top level, the
//!   request span's under `"span"`.
//! * Lines go to a buffer that a thread of its own writes out every [`FLUSH_EVERY`] (and at once
//!   when it is large, for a warning or an error, and at the end), not one `write(2)` per line.

use std::fmt;
use std::io::{IsTerminal, Write as _};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{ConfigError, LogFormat};

/// warp's own per-request events repeat what the request span and the access-log line already
/// say (and log every 4xx as a warning), so they are off unless `RUST_LOG` names them.
const QUIET_WARP: &str = "warp::filters::trace=off";

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written out at once.
const FLUSH_AT: usize = 64 * 1024;

fn filter(rust_log: &str) -> Result<EnvFilter, ConfigError> {
    let directives = if rust_log.contains("warp::filters::trace") {
        rust_log.to_owned()
    } else {
        format!("{rust_log},{QUIET_WARP}")
    };
    EnvFilter::try_new(directives).map_err(|e| ConfigError(format!("RUST_LOG is not valid: {e}")))
}

/// Installs the global subscriber. Call once, before anything logs; [`flush`] before exiting.
pub fn init(format: LogFormat, rust_log: &str) -> Result<(), ConfigError> {
    let filter = filter(rust_log)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(BufferedStdout);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields)
            .event_format(JsonLine)
            .try_init(),
    };
    result.map_err(|e| ConfigError(format!("cannot install the logger: {e}")))?;
    start_flusher();
    // A panic's own message is written by the default hook, to standard error; the lines before
    // it must not stay in the buffer.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush();
        previous(info);
    }));
    Ok(())
}

/// Writes out every buffered line (at shutdown; the flusher does it otherwise).
pub fn flush() {
    let pending = std::mem::take(&mut *buffer().lock().unwrap_or_else(|p| p.into_inner()));
    if !pending.is_empty() {
        // Nowhere to report a failed write of the log itself (a closed pipe): the lines go.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&pending);
        let _ = out.flush();
    }
}

fn buffer() -> &'static Mutex<Vec<u8>> {
    static BUFFER: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    BUFFER.get_or_init(|| Mutex::new(Vec::with_capacity(FLUSH_AT)))
}

fn start_flusher() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                }
            });
        if let Err(e) = spawned {
            eprintln!("warp-auth-api: no log flusher thread ({e}); lines are written as they come");
        }
    });
}

/// Standard output through the shared buffer: each line is added whole (the formatter writes a
/// line in one call); warnings and errors are written out at once.
struct BufferedStdout;

struct Line {
    urgent: bool,
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

impl std::io::Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buffer = buffer().lock().unwrap_or_else(|p| p.into_inner());
            buffer.extend_from_slice(bytes);
            buffer.len() >= FLUSH_AT
        };
        if full || self.urgent {
            flush();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A span's fields as a JSON fragment, `"name":value,…` without braces, kept in the span and
/// extended in place when a field is recorded.
pub struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = JsonVisitor::new(&mut writer, true);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut visitor = JsonVisitor::new(&mut writer, first);
        fields.record(&mut visitor);
        visitor.result
    }
}

/// One JSON object per line: `timestamp`, `level`, the event's fields (its message as
/// `message`), and the current span's fields and name under `span`.
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
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
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", event.metadata().level())?;
        let mut visitor = JsonVisitor::new(&mut writer, false);
        event.record(&mut visitor);
        visitor.result?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            let fields = extensions
                .get::<FormattedFields<N>>()
                .map(|f| f.fields.as_str())
                .unwrap_or_default();
            writer.write_str(fields)?;
            if !fields.is_empty() {
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            write_json_string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes fields as `"name":value` pairs, comma-separated (a leading comma unless `first`).
struct JsonVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl<'a, 'w> JsonVisitor<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>, first: bool) -> Self {
        Self {
            writer,
            first,
            result: Ok(()),
        }
    }

    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(',')?;
            }
            write_json_string(self.writer, field.name())?;
            self.writer.write_char(':')?;
            value(self.writer)
        })();
    }
}

impl Visit for JsonVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| write_json_string(w, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.field(field, |w| write!(w, "{value}"));
        } else {
            self.field(field, |w| write_json_string(w, &value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Formatted straight into the line, escaped on the way (no string of its own).
        self.field(field, |w| {
            w.write_char('"')?;
            fmt::Write::write_fmt(&mut Escaped(w), format_args!("{value:?}"))?;
            w.write_char('"')
        });
    }
}

/// Writes what it is given escaped as the inside of a JSON string.
struct Escaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        write_escaped(self.0, text)
    }
}

/// `text` as a JSON string.
fn write_json_string(w: &mut impl fmt::Write, text: &str) -> fmt::Result {
    w.write_char('"')?;
    write_escaped(w, text)?;
    w.write_char('"')
}

/// `text` escaped as the inside of a JSON string.
fn write_escaped(w: &mut impl fmt::Write, text: &str) -> fmt::Result {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => "",
            _ => continue,
        };
        w.write_str(&text[start..i])?;
        if escaped.is_empty() {
            write!(w, "\\u{:04x}", c as u32)?;
        } else {
            w.write_str(escaped)?;
        }
        start = i + c.len_utf8();
    }
    w.write_str(&text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> String {
        let mut out = String::new();
        write_json_string(&mut out, text).unwrap();
        out
    }

    #[test]
    fn strings_are_escaped_as_serde_json_reads_them() {
        for text in [
            "plain",
            "quote \" and backslash \\",
            "lines\nand\ttabs\r",
            "control \u{1} \u{1f}",
            "unicode: é, 漢字, emoji 🦀, separators \u{2028}\u{2029}",
            "",
        ] {
            let written = json(text);
            let read: String = serde_json::from_str(&written).unwrap();
            assert_eq!(read, text, "{written}");
        }
        assert_eq!(json("a\"b"), r#""a\"b""#);
    }

    /// A subscriber with the service's JSON format writing into a vector.
    fn capture(f: impl FnOnce()) -> Vec<serde_json::Value> {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("trace"))
            .with_target(false)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn a_line_has_the_event_fields_on_top_and_the_span_under_span() {
        let lines = capture(|| {
            let span = tracing::info_span!(
                "request",
                method = "GET",
                path = "/x\"y",
                request_id = tracing::field::Empty
            );
            let _entered = span.enter();
            tracing::Span::current().record("request_id", "abc");
            tracing::info!(
                status = 200u16,
                latency_ms = 0.25,
                user_id = Some(7i64),
                client = tracing::field::display("192.0.2.1"),
                missing = None::<i64>,
                ok = true,
                "request finished"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["message"], "request finished");
        assert_eq!(line["status"], 200);
        assert_eq!(line["latency_ms"], 0.25);
        assert_eq!(line["user_id"], 7);
        assert_eq!(line["client"], "192.0.2.1");
        assert_eq!(line["ok"], true);
        assert!(line.get("missing").is_none());
        assert_eq!(
            line["span"],
            serde_json::json!({"method": "GET", "path": "/x\"y", "request_id": "abc", "name": "request"})
        );
    }

    #[test]
    fn a_line_outside_any_span_has_no_span_and_odd_values_stay_json() {
        let lines = capture(|| {
            tracing::warn!(
                error = ?"a \"debug\" value",
                ratio = f64::NAN,
                "something odd"
            );
        });
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert!(line.get("span").is_none());
        assert_eq!(line["error"], "\"a \\\"debug\\\" value\"");
        assert_eq!(line["ratio"], "NaN");
    }

    #[test]
    fn warnings_are_urgent_and_info_is_not() {
        let warn = tracing::Metadata::new(
            "w",
            "t",
            Level::WARN,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        assert!(BufferedStdout.make_writer_for(&warn).urgent);
        let info = tracing::Metadata::new(
            "i",
            "t",
            Level::INFO,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        assert!(!BufferedStdout.make_writer_for(&info).urgent);
    }

    struct Callsite;
    static CALLSITE: Callsite = Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unimplemented!()
        }
    }
}
