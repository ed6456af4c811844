//! HTTP/1.1 as tollgate speaks it to a plain-HTTP backend: a request's head written out,
//! an answer's head parsed (`httparse`, as hyper parses it), and the answer's body taken
//! out of what was read, as its framing says (RFC 9112 §6): a length, chunks, or the
//! connection's end. No I/O here: `pool` reads and writes, this decides what the bytes mean.

use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use bytes::{Buf, Bytes, BytesMut};

/// An answer's head may be this long, its headers this many (hyper's defaults for a client).
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// Chunk extensions and trailers a body may carry in all, bytes (as hyper allows). Sizes
/// and line ends are not counted: a stream may have any number of chunks.
const MAX_EXTRA: usize = 16 * 1024;

/// A body of a known length up to this is handed out whole, in one piece, so that a
/// whole answer is not copied together from the pieces it was read in.
pub const WHOLE: usize = 64 * 1024;

/// Why a backend's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the backend's answer is not valid HTTP/1.1: {0}")]
    Invalid(&'static str),
    #[error("the backend closed the connection before its answer ended")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `request`'s head, as sent: its own headers in order, then the body's length.
/// `Content-Length` and `Transfer-Encoding` given by the caller are left out: the body is
/// whole, and its length is the one sent.
pub fn request_head(request: &Request<Bytes>) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(128 + request.headers().len() * 48);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    // As hyper: an empty body of a method that has none goes without a length.
    let bodiless = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::CONNECT
    );
    if !request.body().is_empty() || !bodiless {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(request.body().len()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// An answer's head, and how its body is framed.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
    /// Whether the connection may carry another request once the body has been read.
    pub keep_alive: bool,
}

/// Takes an answer's head off the front of `read`: `None` until all of it is there.
/// Informational answers (1xx) are skipped; `method` is the request's (an answer to `HEAD`
/// has no body).
pub fn take_head(read: &mut BytesMut, method: &Method) -> Result<Option<Head>, WireError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        let len = match parsed.parse(read) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if read.len() >= MAX_HEAD => {
                return Err(WireError::Invalid("its head is too long"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(WireError::Invalid("its head has too many headers"));
            }
            Err(_) => return Err(WireError::Invalid("its head cannot be parsed")),
        };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code)
            .map_err(|_| WireError::Invalid("its status is not a number from 100 to 999"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(WireError::Invalid(
                "it switches protocols, which was not asked",
            ));
        }
        if status.is_informational() {
            read.advance(len);
            continue;
        }
        let mut map = HeaderMap::with_capacity(parsed.headers.len());
        for header in parsed.headers.iter() {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| WireError::Invalid("a header's name is not valid"))?;
            let value = HeaderValue::from_bytes(header.value)
                .map_err(|_| WireError::Invalid("a header's value is not valid"))?;
            map.append(name, value);
        }
        let http10 = parsed.version == Some(0);
        read.advance(len);
        return framing(status, map, method, http10).map(Some);
    }
}

/// How the body of an answer with these headers ends (RFC 9112 §6.3).
fn framing(
    status: StatusCode,
    headers: HeaderMap,
    method: &Method,
    http10: bool,
) -> Result<Head, WireError> {
    let close = has_token(&headers, CONNECTION, "close");
    let mut keep_alive = match http10 {
        true => has_token(&headers, CONNECTION, "keep-alive") && !close,
        false => !close,
    };
    let body = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Body::Length(0)
    } else if headers.contains_key(TRANSFER_ENCODING) {
        if http10 {
            return Err(WireError::Invalid("an HTTP/1.0 answer cannot be chunked"));
        }
        // With a length as well, the chunks win, and the connection is not trusted after.
        keep_alive &= !headers.contains_key(CONTENT_LENGTH);
        let last = headers.get_all(TRANSFER_ENCODING).iter().next_back();
        let last = last.and_then(|v| v.to_str().ok()?.rsplit(',').next());
        match last.map(str::trim) {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => Body::Chunked(Chunk::Start),
            _ => {
                keep_alive = false;
                Body::Close
            }
        }
    } else if headers.contains_key(CONTENT_LENGTH) {
        Body::Length(content_length(&headers)?)
    } else {
        keep_alive = false;
        Body::Close
    };
    Ok(Head {
        status,
        headers,
        body,
        keep_alive,
    })
}

/// The one length all `Content-Length` values give (repeats of one value are allowed).
fn content_length(headers: &HeaderMap) -> Result<u64, WireError> {
    let invalid = WireError::Invalid("its Content-Length is not one number");
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value
            .to_str()
            .map_err(|_| WireError::Invalid("bad length"))?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid);
            }
            let n: u64 = part.parse().map_err(|_| WireError::Invalid("bad length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid);
            }
            length = Some(n);
        }
    }
    length.ok_or(invalid)
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Where a body is: what is left of it, by its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// This many bytes to go (0: ended).
    Length(u64),
    /// Chunked, in the middle of its framing.
    Chunked(Chunk),
    /// Until the connection closes.
    Close,
    /// Ended at the connection's close.
    Closed,
}

/// A chunked body's framing, one byte at a time outside the chunks' data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// At the start of a chunk's size line.
    Start,
    /// The size's hex digits, so far.
    Size(u64),
    /// Spaces or tabs after the size.
    SizeSpace(u64),
    /// An extension, ignored up to its line's end.
    Extension(u64),
    /// The size line's CR was read.
    SizeLf(u64),
    /// This many bytes of data to go.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line or of the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Ended,
}

/// What the bytes read so far give of a body.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The body has ended.
    End,
    /// Nothing until more is read.
    More,
}

/// A body's state as it is read: `Body` and the bytes of chunk extensions and trailers
/// it has carried.
#[derive(Debug)]
pub struct Decoder {
    pub body: Body,
    extra: usize,
}

impl Decoder {
    pub fn new(body: Body) -> Decoder {
        Decoder { body, extra: 0 }
    }

    /// How much room the next read should have: all of a body handed out whole.
    pub fn wants(&self) -> usize {
        match self.body {
            Body::Length(left) if left <= WHOLE as u64 => left as usize,
            _ => 0,
        }
    }

    /// Whether the body has been read to its end.
    pub fn ended(&self) -> bool {
        matches!(
            self.body,
            Body::Length(0) | Body::Chunked(Chunk::Ended) | Body::Closed
        )
    }

    /// Takes the next piece of the body off the front of `read`. Data is handed out as it
    /// lies in `read`, without a copy.
    pub fn step(&mut self, read: &mut BytesMut) -> Result<Step, WireError> {
        loop {
            match self.body {
                Body::Length(0) | Body::Chunked(Chunk::Ended) | Body::Closed => {
                    return Ok(Step::End);
                }
                Body::Length(left) if (read.len() as u64) < left && left <= WHOLE as u64 => {
                    return Ok(Step::More);
                }
                Body::Length(left) | Body::Chunked(Chunk::Data(left)) => {
                    if read.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = left.min(read.len() as u64);
                    let data = read.split_to(n as usize).freeze();
                    self.body = match self.body {
                        Body::Length(_) => Body::Length(left - n),
                        _ if left == n => Body::Chunked(Chunk::DataCr),
                        _ => Body::Chunked(Chunk::Data(left - n)),
                    };
                    return Ok(Step::Data(data));
                }
                Body::Close if read.is_empty() => return Ok(Step::More),
                Body::Close => return Ok(Step::Data(read.split().freeze())),
                Body::Chunked(state) => {
                    let Some(&byte) = read.first() else {
                        return Ok(Step::More);
                    };
                    read.advance(1);
                    let state = next(state, byte)?;
                    if matches!(state, Chunk::Extension(_) | Chunk::Trailer) {
                        self.extra += 1;
                        if self.extra > MAX_EXTRA {
                            return Err(WireError::Invalid(
                                "its chunk extensions or trailers are too long",
                            ));
                        }
                    }
                    self.body = Body::Chunked(state);
                }
            }
        }
    }

    /// What the connection's end means now: the end of a body read to its close, or an
    /// answer cut off.
    pub fn closed(&mut self) -> Result<Step, WireError> {
        match self.body {
            Body::Close | Body::Closed => {
                self.body = Body::Closed;
                Ok(Step::End)
            }
            _ if self.ended() => Ok(Step::End),
            _ => Err(WireError::Closed),
        }
    }
}

/// A chunked body's framing after `byte` (never called in `Data`, `Ended`).
fn next(state: Chunk, byte: u8) -> Result<Chunk, WireError> {
    let bad = |what| Err(WireError::Invalid(what));
    Ok(match (state, byte) {
        (Chunk::Start | Chunk::Size(_), b) if b.is_ascii_hexdigit() => {
            let size = match state {
                Chunk::Size(size) => size,
                _ => 0,
            };
            let digit = (b as char).to_digit(16).unwrap_or_default() as u64;
            match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                Some(size) => Chunk::Size(size),
                None => return bad("a chunk's size is too large"),
            }
        }
        (Chunk::Start, _) => return bad("a chunk's size is missing"),
        (Chunk::Size(size) | Chunk::SizeSpace(size), b' ' | b'\t') => Chunk::SizeSpace(size),
        (Chunk::Size(size) | Chunk::SizeSpace(size), b';') => Chunk::Extension(size),
        (Chunk::Size(size) | Chunk::SizeSpace(size) | Chunk::Extension(size), b'\r') => {
            Chunk::SizeLf(size)
        }
        (Chunk::Size(_) | Chunk::SizeSpace(_), _) => return bad("a chunk's size is not hex"),
        (Chunk::Extension(_), b'\n') => return bad("a chunk extension holds a line feed"),
        (Chunk::Extension(size), _) => Chunk::Extension(size),
        (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
        (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Start,
        (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
        (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
        (Chunk::TrailerStart | Chunk::Trailer, _) => Chunk::Trailer,
        (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
        (Chunk::EndLf, b'\n') => Chunk::Ended,
        _ => return bad("a chunk's line does not end in CRLF"),
    })
}

#[cfg(test)]
mod tests;
