//! The process's log output: text or JSON lines on stderr, filtered by `KFSEC_LOG` or the
//! config's `logger.level`.
//!
//! Invariants: one event is exactly one line. Every field value — user names, pipeline names,
//! paths, error texts, whatever a client chose — is written with its control characters
//! (CR, LF, ESC and the rest of C0/C1), Unicode line and paragraph separators and bidirectional
//! overrides escaped, so a hostile value can neither start a forged line nor recolour or hide the
//! terminal's text. JSON lines are produced by serde_json, whose string escaping keeps each line
//! valid JSON whatever a value holds. Colours are used only when stderr is a terminal.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

/// Installs the global subscriber.
pub fn init(level: Option<&str>, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KFSEC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or("info")));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!json && std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).init();
    } else {
        b.fmt_fields(escaping_fields()).init();
    }
}

/// The text format's field writer: `message` bare, the others `name=value`, separated by
/// spaces, every value escaped.
fn escaping_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    debug_fn(|w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
        if field.name() != "message" {
            write!(w, "{}=", field.name())?;
        }
        write!(Escaper(w), "{value:?}")
    })
    .delimited(" ")
}

/// Whether `c` must not reach a log line as itself.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'            // line / paragraph separator
            | '\u{200e}' | '\u{200f}'          // directional marks
            | '\u{202a}'..='\u{202e}'          // embeddings and overrides
            | '\u{2066}'..='\u{2069}') // isolates
}

/// A `fmt::Write` that escapes [`dangerous`] characters as Rust escapes (`\n`, `\r`, `\t`,
/// `\u{1b}`) on their way through.
struct Escaper<W>(W);

impl<W: fmt::Write> fmt::Write for Escaper<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(dangerous) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn escape(s: &str) -> String {
        let mut out = String::new();
        write!(Escaper(&mut out), "{s}").unwrap();
        out
    }

    #[test]
    fn every_control_and_line_breaking_character_is_escaped() {
        for c in (0u32..0x20)
            .chain(0x7f..0xa0)
            .chain([0x2028, 0x2029, 0x200e, 0x202e, 0x2066])
        {
            let c = char::from_u32(c).unwrap();
            let out = escape(&format!("a{c}b"));
            assert!(!out.contains(c), "{c:?} survived: {out:?}");
            assert!(out.starts_with('a') && out.ends_with('b'), "{out:?}");
        }
        assert_eq!(escape("x\r\nINFO forged"), "x\\r\\nINFO forged");
        assert_eq!(escape("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(escape("plain ünïcode ✓"), "plain ünïcode ✓");
    }

    #[test]
    fn display_and_debug_fields_are_escaped_in_the_text_format() {
        // Collect one event's fields through a real dispatcher with the text field formatter.
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .fmt_fields(escaping_fields())
            .finish();
        let name = "pipe\r\n2026-12-05T00:00:00Z  INFO audit: admin granted\u{1b}[8m";
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "audit", user = %name, other = ?name, "created {name}");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.matches('\n').count(), 1, "one event, one line: {out:?}");
        assert!(out.ends_with('\n'));
        assert!(!out.contains('\r') && !out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("user=pipe\\r\\n2026"), "{out:?}");
    }
}
