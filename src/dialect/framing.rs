//! Turns a backend's byte stream into events, whatever the network's chunking: SSE
//! (`data:` with or without a space, CRLF, comments, `event:`/`id:` lines, multi-line data, a
//! last event with no blank line) and bare-JSON streams (objects back to back, no `data:`,
//! no `[DONE]`). Lines are cut on bytes, so UTF-8 split across chunks is never broken.
//! The events relayed to the client are written here too (`outgoing`).

use crate::config::StreamFormat;

/// A line or object larger than this is refused rather than buffered without end.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The SSE `event:` name, if any.
    pub name: Option<String>,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("the backend sent an event larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    #[error("the backend's stream is garbled: {0}")]
    Garbled(&'static str),
}

/// Frames either format; with `StreamFormat::Auto` the first non-blank byte decides
/// (`{` is bare JSON, anything else SSE).
#[derive(Debug)]
pub enum Framer {
    Undecided(Vec<u8>),
    Sse(SseFramer),
    BareJson(BareJsonFramer),
}

impl Framer {
    pub fn new(format: StreamFormat) -> Framer {
        match format {
            StreamFormat::Auto => Framer::Undecided(Vec::new()),
            StreamFormat::Sse => Framer::Sse(SseFramer::default()),
            StreamFormat::BareJson => Framer::BareJson(BareJsonFramer::default()),
        }
    }

    pub fn is_bare_json(&self) -> bool {
        matches!(self, Framer::BareJson(_))
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), FramingError> {
        if let Framer::Undecided(held) = self {
            held.extend_from_slice(chunk);
            let Some(&first) = held.iter().find(|b| !b.is_ascii_whitespace()) else {
                return Ok(());
            };
            let held = std::mem::take(held);
            *self = if first == b'{' {
                Framer::BareJson(BareJsonFramer::default())
            } else {
                Framer::Sse(SseFramer::default())
            };
            return self.push(&held, out);
        }
        match self {
            Framer::Sse(f) => f.push(chunk, out),
            Framer::BareJson(f) => f.push(chunk, out),
            Framer::Undecided(_) => unreachable!("decided above"),
        }
    }

    /// Flushes a last event the backend did not terminate.
    pub fn finish(&mut self, out: &mut Vec<Event>) -> Result<(), FramingError> {
        match self {
            Framer::Undecided(_) => Ok(()),
            Framer::Sse(f) => {
                f.finish(out);
                Ok(())
            }
            Framer::BareJson(f) => f.finish(),
        }
    }
}

/// An event as it goes out to the client: `parts` one after the other, in one buffer of
/// their length. (`format!` grows its string from a guess, reallocating it on the way for
/// every chunk of a few hundred bytes.)
pub fn outgoing(parts: &[&str]) -> bytes::Bytes {
    let mut event = Vec::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        event.extend_from_slice(part.as_bytes());
    }
    event.into()
}

/// `bytes` as text, invalid UTF-8 replaced: checked by `str::from_utf8` first, which reads
/// ASCII a word at a time where `from_utf8_lossy` reads every byte.
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[derive(Debug, Default)]
pub struct SseFramer {
    /// Bytes of the line being received.
    line: Vec<u8>,
    /// `data:` lines of the event being assembled, joined by `\n`.
    data: Option<String>,
    name: Option<String>,
}

impl SseFramer {
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Event>) -> Result<(), FramingError> {
        while let Some(end) = memchr::memchr(b'\n', chunk) {
            if self.line.is_empty() {
                self.take_line(&chunk[..end], out);
            } else {
                self.line.extend_from_slice(&chunk[..end]);
                let line = std::mem::take(&mut self.line);
                self.take_line(&line, out);
            }
            chunk = &chunk[end + 1..];
        }
        if self.line.len() + chunk.len() > MAX_EVENT_BYTES {
            return Err(FramingError::TooLarge);
        }
        self.line.extend_from_slice(chunk);
        Ok(())
    }

    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.take_line(&line, out);
        }
        self.dispatch(out);
    }

    fn take_line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.dispatch(out);
        }
        if line[0] == b':' {
            return; // a comment, e.g. a keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = text(value);
        match field {
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            b"event" => self.name = Some(value.into_owned()),
            _ => {} // id, retry and unknown fields carry nothing tollgate needs
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        let name = self.name.take();
        if let Some(data) = self.data.take() {
            out.push(Event { name, data });
        }
    }
}

#[derive(Debug, Default)]
pub struct BareJsonFramer {
    buf: Vec<u8>,
    /// How far `buf` has been scanned, and the scanner's state there.
    scanned: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl BareJsonFramer {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), FramingError> {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.depth == 0 {
                if b.is_ascii_whitespace() {
                    start = i + 1;
                } else if b == b'{' {
                    start = i;
                    self.depth = 1;
                } else {
                    return Err(FramingError::Garbled("expected a JSON object"));
                }
            } else if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            let data = text(&self.buf[start..=i]).into_owned();
                            out.push(Event { name: None, data });
                            start = i + 1;
                        }
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(FramingError::TooLarge);
        }
        Ok(())
    }

    pub fn finish(&mut self) -> Result<(), FramingError> {
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err(FramingError::Garbled(
                "the stream ended inside a JSON object",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(format: StreamFormat, chunks: &[&[u8]]) -> Result<Vec<Event>, FramingError> {
        let mut framer = Framer::new(format);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, &mut out)?;
        }
        framer.finish(&mut out)?;
        Ok(out)
    }

    fn data(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn sse_variants_are_understood() {
        let text = b": keep-alive\r\nevent: message\r\nid: 7\r\ndata:{\"a\":1}\r\n\r\ndata: line1\ndata: line2\n\ndata: last";
        let events = frame(StreamFormat::Auto, &[text]).unwrap();
        assert_eq!(data(&events), ["{\"a\":1}", "line1\nline2", "last"]);
        assert_eq!(events[0].name.as_deref(), Some("message"));
    }

    #[test]
    fn bare_json_objects_are_split_even_with_braces_in_strings() {
        let text = br#"{"a":"}{\"","b":[{"c":1}]}

{"d":2}{"e":3}"#;
        let events = frame(StreamFormat::Auto, &[&text[..5], &text[5..]]).unwrap();
        assert_eq!(
            data(&events),
            [r#"{"a":"}{\"","b":[{"c":1}]}"#, r#"{"d":2}"#, r#"{"e":3}"#]
        );
    }

    #[test]
    fn a_cut_bare_json_stream_is_reported() {
        assert!(frame(StreamFormat::BareJson, &[b"{\"a\":"]).is_err());
        assert!(frame(StreamFormat::BareJson, &[b"oops"]).is_err());
    }

    #[test]
    fn split_utf8_survives() {
        let text = "data: 我是\n\n".as_bytes();
        let events = frame(StreamFormat::Sse, &[&text[..8], &text[8..]]).unwrap();
        assert_eq!(data(&events), ["我是"]);
    }
}
