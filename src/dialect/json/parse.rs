//! JSON text into an `Object` (or, for a request body, its members' spans), by hand: 11%
//! fewer instructions than serde's visitors building the same tree (bench/README.md). It
//! accepts exactly what serde_json accepts (the tests compare the two on every kind of
//! input), and leaves to serde_json what is rare and subtle: numbers other than plain
//! non-negative integers, and strings with escapes.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::Number;

use super::{Json, Object};

/// serde_json's recursion limit: the containers being read, nested, stay below it.
const DEPTH_LIMIT: u32 = 128;

pub struct Parser<'a> {
    bytes: &'a [u8],
    /// The same text when it is known to be UTF-8 (it came as a `&str`).
    text: Option<&'a str>,
    at: usize,
    /// What is left of the recursion limit.
    depth: u32,
}

impl<'a> Parser<'a> {
    pub fn new(bytes: &'a [u8], text: Option<&'a str>) -> Self {
        Parser {
            bytes,
            text,
            at: 0,
            depth: DEPTH_LIMIT,
        }
    }

    /// One object and nothing after it but whitespace; the values of the top level's
    /// `unread` members are checked for syntax only and read as `null`.
    pub fn whole_object(mut self, unread: &[&str]) -> Option<Object<'a>> {
        self.whitespace();
        if self.peek()? != b'{' {
            return None;
        }
        let object = self.object(unread)?;
        self.at_end()?;
        Some(object)
    }

    /// The members of one object (nothing after it but whitespace), each name given to
    /// `each` with its value's span; the values are passed over as `skip` does.
    pub fn member_spans(mut self, mut each: impl FnMut(Cow<'a, str>, Range<usize>)) -> Option<()> {
        self.whitespace();
        if self.peek()? != b'{' {
            return None;
        }
        self.members(|parser, name| {
            let start = parser.at;
            parser.skip()?;
            each(name, start..parser.at);
            Some(())
        })?;
        self.at_end()
    }

    fn at_end(&mut self) -> Option<()> {
        self.whitespace();
        (self.at == self.bytes.len()).then_some(())
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Past `byte`, if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        self.at += usize::from(next);
        next
    }

    fn enter(&mut self) -> Option<()> {
        self.depth -= 1;
        (self.depth > 0).then_some(())
    }

    /// At `{`.
    fn object(&mut self, unread: &[&str]) -> Option<Object<'a>> {
        self.enter()?;
        // Room for an event's members at once: growing from none reallocates twice.
        let mut members = Vec::with_capacity(8);
        self.members(|parser, name| {
            let value = if unread.contains(&name.as_ref()) {
                parser.skip()?;
                Json::Null
            } else {
                parser.value()?
            };
            members.push((name, value));
            Some(())
        })?;
        self.depth += 1;
        Some(Object { members })
    }

    /// At `{`: past the object's `}`, each member's value read by `value` (at its first
    /// byte), given the member's name.
    fn members(
        &mut self,
        mut value: impl FnMut(&mut Self, Cow<'a, str>) -> Option<()>,
    ) -> Option<()> {
        self.at += 1;
        self.whitespace();
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            self.whitespace();
            if self.peek()? != b'"' {
                return None;
            }
            let name = self.string()?;
            self.whitespace();
            if !self.eat(b':') {
                return None;
            }
            self.whitespace();
            value(self, name)?;
            self.whitespace();
            if !self.eat(b',') {
                break;
            }
        }
        self.eat(b'}').then_some(())
    }

    /// At `[`.
    fn array(&mut self) -> Option<Vec<Json<'a>>> {
        self.enter()?;
        self.at += 1;
        let mut items = Vec::new();
        self.whitespace();
        if !self.eat(b']') {
            loop {
                self.whitespace();
                items.push(self.value()?);
                self.whitespace();
                if !self.eat(b',') {
                    break;
                }
            }
            if !self.eat(b']') {
                return None;
            }
        }
        self.depth += 1;
        Some(items)
    }

    fn value(&mut self) -> Option<Json<'a>> {
        Some(match self.peek()? {
            b'"' => Json::String(self.string()?),
            b'{' => Json::Object(self.object(&[])?),
            b'[' => Json::Array(self.array()?),
            b't' => self.word(b"true", Json::Bool(true))?,
            b'f' => self.word(b"false", Json::Bool(false))?,
            b'n' => self.word(b"null", Json::Null)?,
            _ => Json::Number(self.number()?),
        })
    }

    fn word(&mut self, word: &[u8], value: Json<'a>) -> Option<Json<'a>> {
        let found = self.bytes[self.at..].starts_with(word);
        self.at += word.len();
        found.then_some(value)
    }

    /// A number: a plain non-negative integer that fits a `u64` is read here, any other
    /// by serde_json (negative zero, overflow into `f64`, rounding).
    fn number(&mut self) -> Option<Number> {
        let start = self.at;
        let plain = self.number_end()?;
        let span = &self.bytes[start..self.at];
        if plain {
            let mut n: u64 = 0;
            let fits = span.iter().try_for_each(|d| {
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                Some(())
            });
            if fits.is_some() {
                return Some(n.into());
            }
        }
        serde_json::from_slice(span).ok()
    }

    /// Past a number, checked for syntax only (as serde_json checks what it ignores: not
    /// whether it is in range); whether it is digits alone.
    fn number_end(&mut self) -> Option<bool> {
        let negative = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut plain = !negative;
        if self.eat(b'.') {
            plain = false;
            self.at_least_one_digit()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            plain = false;
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.at_least_one_digit()?;
        }
        Some(plain)
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// At `"`: the string, borrowed from the text unless it has escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.at;
        let escaped = self.string_end(false)?;
        if escaped {
            let quoted = &self.bytes[start..self.at];
            return serde_json::from_slice::<String>(quoted)
                .ok()
                .map(Cow::Owned);
        }
        let (from, to) = (start + 1, self.at - 1);
        match self.text {
            // The quotes are ASCII, so these are character boundaries.
            Some(text) => Some(Cow::Borrowed(&text[from..to])),
            None => ascii_or_utf8(&self.bytes[from..to]).map(Cow::Borrowed),
        }
    }

    /// At `"`: moves past the closing quote; whether the string has escapes. Escapes
    /// are checked here only when `check_escapes` (a string passed over); a string that
    /// is read is unescaped by serde_json, which checks them.
    fn string_end(&mut self, check_escapes: bool) -> Option<bool> {
        self.at += 1;
        let mut escaped = false;
        loop {
            self.at += plain_run(&self.bytes[self.at..]);
            let byte = self.peek()?;
            self.at += 1;
            match byte {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    let kind = self.peek()?;
                    self.at += 1;
                    match kind {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.bytes.get(self.at..self.at + 4)?;
                            if check_escapes && !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 4;
                        }
                        _ if check_escapes => return None,
                        _ => {}
                    }
                }
                _ => return None, // a control character
            }
        }
    }

    /// Past one value, checked as serde_json checks what it ignores: syntax and escapes,
    /// but not the UTF-8 in strings, nor how deep it nests.
    fn skip(&mut self) -> Option<()> {
        // The containers open around the value being passed over.
        let mut open: Vec<u8> = Vec::new();
        loop {
            // One value.
            match self.peek()? {
                b'"' => {
                    self.string_end(true)?;
                }
                b'{' | b'[' => {
                    let bracket = self.bytes[self.at];
                    self.at += 1;
                    self.whitespace();
                    let close = if bracket == b'{' { b'}' } else { b']' };
                    if self.eat(close) {
                        // Empty: a whole value.
                    } else {
                        open.push(bracket);
                        if bracket == b'{' {
                            self.member_name()?;
                        }
                        continue;
                    }
                }
                b't' => _ = self.word(b"true", Json::Null)?,
                b'f' => _ = self.word(b"false", Json::Null)?,
                b'n' => _ = self.word(b"null", Json::Null)?,
                _ => _ = self.number_end()?,
            }
            // After a value: the next one in its container, or the container's end.
            loop {
                let Some(&bracket) = open.last() else {
                    return Some(());
                };
                self.whitespace();
                if self.eat(b',') {
                    self.whitespace();
                    if bracket == b'{' {
                        self.member_name()?;
                    }
                    break;
                }
                let close = if bracket == b'{' { b'}' } else { b']' };
                if !self.eat(close) {
                    return None;
                }
                open.pop();
            }
        }
    }

    /// A passed-over object's `"name":`, and the whitespace before its value.
    fn member_name(&mut self) -> Option<()> {
        self.whitespace();
        if self.peek()? != b'"' {
            return None;
        }
        self.string_end(true)?;
        self.whitespace();
        self.eat(b':').then_some(())?;
        self.whitespace();
        Some(())
    }
}

/// `bytes` as text if they are UTF-8. An answer's strings are short and nearly always
/// ASCII, which `is_ascii` checks a word at a time; `from_utf8`'s setup for each string
/// cost more (the answer's strings took 1,000 instructions a request more with it, in
/// `tollgate-bench --instructions`).
fn ascii_or_utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

/// How many bytes at the start of `bytes` a string holds as they are: up to the first
/// quote, backslash or control character. Eight bytes at a time, as serde_json looks for
/// them: a byte is flagged by the lowest set bit of its lane (borrows only flag lanes above
/// a true match, so the lowest flagged lane is exact).
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    let mut run = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let quote = below(word ^ (ONES * u64::from(b'"')), 1);
        let backslash = below(word ^ (ONES * u64::from(b'\\')), 1);
        let found = quote | backslash | below(word, 0x20);
        if found != 0 {
            return run + found.trailing_zeros() as usize / 8;
        }
        run += 8;
    }
    run + bytes[run..]
        .iter()
        .take_while(|&&b| b != b'"' && b != b'\\' && b >= 0x20)
        .count()
}

/// Up to three bytes of `bytes` broken: removed, overwritten, or with a piece of JSON (or
/// of something that is not) put before them; what the tests compare readings on.
#[cfg(test)]
pub(crate) fn break_bytes(rng: &mut impl rand::Rng, bytes: &mut Vec<u8>) {
    const PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"\\",
        b"\\u",
        b"\\ud83d",
        b"0",
        b"7",
        b"-",
        b".",
        b"e",
        b"E",
        b"+",
        b"true",
        b"null",
        b" ",
        b"\n",
        b"\t",
        b"\x01",
        b"\xff",
        b"\xe6\x88",
        b"\xc3\xa9",
        b"\"choices\":",
        b"\"usage\":",
        b"\"data\":",
        b"\"model\":",
        b"\"a\"",
    ];
    for _ in 0..rng.random_range(0..4) {
        if bytes.is_empty() {
            return;
        }
        let at = rng.random_range(0..bytes.len());
        let piece = PIECES[rng.random_range(0..PIECES.len())];
        match rng.random_range(0..3) {
            0 => drop(bytes.remove(at)),
            1 => drop(bytes.splice(at..at, piece.iter().copied())),
            _ => bytes[at] = piece[0],
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::{Map, Value};

    use super::super::Object;
    use super::break_bytes;

    const LONG: &[&str] = &["choices", "data", "output"];

    /// What serde_json makes of `bytes` as a whole answer's head: the members of one
    /// object, the `LONG` ones ignored (read as `null`).
    fn serde_head(bytes: &[u8]) -> Option<Map<String, Value>> {
        struct Head;
        impl<'de> Visitor<'de> for Head {
            type Value = Map<String, Value>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = if LONG.contains(&name.as_str()) {
                        map.next_value::<IgnoredAny>()?;
                        Value::Null
                    } else {
                        map.next_value()?
                    };
                    members.insert(name, value);
                }
                Ok(members)
            }
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let head = de.deserialize_map(Head).ok()?;
        de.end().ok()?;
        Some(head)
    }

    /// Both ways of reading `bytes` agree with serde_json's, in what they accept and
    /// in every value read.
    fn agrees(bytes: &[u8]) {
        let head = Object::head(bytes).map(|o| o.to_map());
        assert_eq!(
            head,
            serde_head(bytes),
            "head of {:?}",
            String::from_utf8_lossy(bytes)
        );
        if let Ok(text) = std::str::from_utf8(bytes) {
            let parsed = Object::parse(text).map(|o| o.to_map());
            let serde = serde_json::from_str::<Map<String, Value>>(text).ok();
            assert_eq!(parsed, serde, "{text:?}");
            // Signs and kinds of numbers too (`-0.0 == 0.0`, `1.0 == 1`? not to serde).
            assert_eq!(format!("{parsed:?}"), format!("{serde:?}"), "{text:?}");
        }
    }

    #[test]
    fn hard_cases_read_as_serde_json_reads_them() {
        let nested = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        let mut cases: Vec<String> = [
            r#"{}"#,
            r#" { } "#,
            r#"{"a":1}"#,
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":[1,2,]}"#,
            r#"{"a":[,]}"#,
            r#"{"a":[]}"#,
            r#"{"a":[ ]}"#,
            r#"{"a":{}}"#,
            r#"{"a":tru}"#,
            r#"{"a":true}"#,
            r#"{"a":nul}"#,
            r#"{"a":null,"a":2}"#,
            r#"{"a":-0}"#,
            r#"{"a":-0.0}"#,
            r#"{"a":0}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":+1}"#,
            r#"{"a":1e5}"#,
            r#"{"a":1E+5}"#,
            r#"{"a":1e-400}"#,
            r#"{"a":1e400}"#,
            r#"{"a":-1e400}"#,
            r#"{"a":1e}"#,
            r#"{"a":18446744073709551615}"#,
            r#"{"a":18446744073709551616}"#,
            r#"{"a":-9223372036854775808}"#,
            r#"{"a":-9223372036854775809}"#,
            r#"{"a":0.1}"#,
            r#"{"a":2.2250738585072011e-308}"#,
            r#"{"a":1.7976931348623157e308}"#,
            r#"{"a":"\u00e9\n\"\\\/\b\f\r\t"}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\ud83d"}"#,
            r#"{"a":"\ude00"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12G4"}"#,
            r#"{"a":"\x"}"#,
            r#"{"\u0061":1}"#,
            r#"{"a\"b":1}"#,
            r#"{"a":"b"#,
            r#"{"a""#,
            r#"{"a":1"#,
            "{",
            "",
            " ",
            "null",
            "[]",
            r#"{"a":1}{}"#,
            r#"{"a":1} x"#,
            "{\"a\":\"\t\"}",
            "{\"a\":\"\u{7f}\"}",
            "\u{feff}{}",
            "{\"a\":1}\u{a0}",
            r#"{"a":[1,[2,{"b":[]}]]}"#,
            r#"{"choices":[{"a":"\ud83d"}],"x":1}"#,
            r#"{"choices":1e400}"#,
            r#"{"choices":[01]}"#,
            r#"{"choices":{"a":1,}}"#,
            r#"{"choices":{"a" 1}}"#,
            r#"{"choices":"\u12G4"}"#,
            r#"{"choices":"\q"}"#,
            r#"{"data":[[],{},"",0,-1.5e3]}"#,
            r#"{"output":{"usage":{"input_tokens":3}},"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":[1,2}"#,
            r#"{"choices":[1 2]}"#,
            r#"{"choices":{"a":1"b":2}}"#,
            r#"{"choices":{1:2}}"#,
            r#"{"choices":tru}"#,
            r#"{"choices":}"#,
        ]
        .map(String::from)
        .to_vec();
        for n in [126, 127, 128, 129, 500] {
            cases.push(nested(n));
            cases.push(format!(
                "{{\"choices\":{}1{}}}",
                "[".repeat(n),
                "]".repeat(n)
            ));
        }
        for case in &cases {
            agrees(case.as_bytes());
        }
        for bytes in [
            &b"{\"a\":\"\xff\"}"[..],
            b"{\"\xe6\x88\":1}",
            b"{\"choices\":[\"\xe6\x88\"]}",
            b"{\"choices\":\"\xff\\u00e9\"}",
            b"{\"a\":\"\xe6\x88\\n\"}",
            b"{\"a\":\"ok\"}\xff",
        ] {
            agrees(bytes);
        }
    }

    #[test]
    fn random_and_broken_json_reads_as_serde_json_reads_it() {
        let mut rng = StdRng::seed_from_u64(29);
        for _ in 0..30_000 {
            let value = random_value(&mut rng, 0);
            let mut bytes = serde_json::to_vec(&Value::Object(match value {
                Value::Object(map) => map,
                other => Map::from_iter([("choices".to_string(), other)]),
            }))
            .unwrap();
            break_bytes(&mut rng, &mut bytes);
            agrees(&bytes);
        }
    }

    #[test]
    fn plain_runs_end_where_a_scan_byte_by_byte_ends() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50_000 {
            let bytes: Vec<u8> = (0..rng.random_range(0..40))
                .map(|_| match rng.random_range(0..40) {
                    0 => b'"',
                    1 => b'\\',
                    2 => rng.random_range(0..0x20),
                    3..10 => rng.random_range(0x80..=0xff),
                    _ => rng.random_range(0x20..0x80),
                })
                .collect();
            let scanned = bytes
                .iter()
                .take_while(|&&b| b != b'"' && b != b'\\' && b >= 0x20);
            assert_eq!(super::plain_run(&bytes), scanned.count(), "{bytes:?}");
        }
    }

    fn random_value(rng: &mut StdRng, depth: usize) -> Value {
        let names = [
            "choices", "usage", "data", "output", "id", "a", "é\"\n", "a",
        ];
        let kind = rng.random_range(0..if depth > 4 { 6 } else { 8 });
        match kind {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => Value::from(rng.random::<u64>() >> rng.random_range(0..64)),
            3 => Value::from(-(rng.random::<i64>() >> rng.random_range(1..64))),
            4 => Value::from(rng.random::<f64>() * 10f64.powi(rng.random_range(-30..30))),
            5 => {
                let strings = [
                    "",
                    "hi",
                    "é\u{1F600}",
                    "a\"b\\c\n\u{1}",
                    "\u{2028}x",
                    "tab\t",
                ];
                Value::from(strings[rng.random_range(0..strings.len())])
            }
            6 => Value::Array(
                (0..rng.random_range(0..4))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.random_range(0..5))
                    .map(|_| {
                        let name = names[rng.random_range(0..names.len())].to_string();
                        (name, random_value(rng, depth + 1))
                    })
                    .collect(),
            ),
        }
    }
}
