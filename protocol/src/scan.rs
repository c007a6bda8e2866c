//! A scanner for the gateway envelope `{op, d, s, t}`: it reads `op`, `s` and `t`, and finds
//! where `d` begins and ends, validating the whole message as JSON on the way without building
//! anything (no allocation unless `t` or a key holds escapes).
//!
//! What it checks is what `serde_json::from_str` checks for the same envelope struct (the
//! property tests use serde_json as the oracle): the grammar of every value (RFC 8259: strings
//! with valid escapes and no control characters, numbers, literals, any nesting depth),
//! one object and nothing after it but whitespace, no duplicate `op`/`d`/`s`/`t` keys, `op`
//! and `s` unsigned 64-bit integers (or `null`), `t` a string (or `null`).
//!
//! The input is `&str`: UTF-8 is checked once, by the caller, over the whole message, so the
//! scanner itself never looks at a byte twice.

use std::borrow::Cow;
use std::fmt;

/// The envelope of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scanned<'a> {
    /// The opcode.
    pub(crate) op: u64,
    /// The sequence number, if present and not `null`.
    pub(crate) s: Option<u64>,
    /// The event name, if present and not `null`.
    pub(crate) t: Option<Cow<'a, str>>,
    /// The raw text of `d`, if present and not `null`.
    pub(crate) d: Option<&'a str>,
}

/// Why a message is not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// Not valid JSON, at byte `at`.
    Syntax {
        /// Byte offset.
        at: usize,
        /// What was wrong.
        what: &'static str,
    },
    /// The message is valid JSON but not an object.
    NotObject,
    /// A field appears twice.
    Duplicate(&'static str),
    /// A field has the wrong type.
    InvalidType(&'static str),
    /// `op` is missing or `null`.
    MissingOp,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Syntax { at, what } => write!(f, "{what} at byte {at}"),
            ScanError::NotObject => f.write_str("payload is not a json object"),
            ScanError::Duplicate(field) => write!(f, "duplicate field `{field}`"),
            ScanError::InvalidType(field) => write!(f, "invalid type for field `{field}`"),
            ScanError::MissingOp => f.write_str("missing field `op`"),
        }
    }
}

impl std::error::Error for ScanError {}

/// Scans one complete message.
pub(crate) fn scan(text: &str) -> Result<Scanned<'_>, ScanError> {
    let mut c = Cursor {
        b: text.as_bytes(),
        i: 0,
    };
    c.ws();
    match c.peek() {
        Some(b'{') => {}
        Some(_) => {
            // Still tell bad JSON from JSON that is not an object, as serde does.
            c.skip_value()?;
            c.ws();
            if c.i < c.b.len() {
                return Err(c.err("trailing characters"));
            }
            return Err(ScanError::NotObject);
        }
        None => return Err(c.err("EOF while parsing a value")),
    }
    c.i += 1;
    let mut op: Option<Option<u64>> = None;
    let mut s: Option<Option<u64>> = None;
    let mut t: Option<Option<Cow<'_, str>>> = None;
    let mut d: Option<Option<&str>> = None;
    c.ws();
    if c.peek() == Some(b'}') {
        c.i += 1;
    } else {
        loop {
            c.ws();
            if c.peek() != Some(b'"') {
                return Err(c.err_or_eof("key must be a string"));
            }
            let key = c.string(text)?;
            c.ws();
            if c.peek() != Some(b':') {
                return Err(c.err_or_eof("expected `:`"));
            }
            c.i += 1;
            c.ws();
            match key.as_ref() {
                "op" => {
                    if op.is_some() {
                        return Err(ScanError::Duplicate("op"));
                    }
                    op = Some(c.opt_u64("op")?);
                }
                "s" => {
                    if s.is_some() {
                        return Err(ScanError::Duplicate("s"));
                    }
                    s = Some(c.opt_u64("s")?);
                }
                "t" => {
                    if t.is_some() {
                        return Err(ScanError::Duplicate("t"));
                    }
                    t = Some(if c.literal(b"null") {
                        None
                    } else if c.peek() == Some(b'"') {
                        Some(c.string(text)?)
                    } else {
                        c.skip_value()?;
                        return Err(ScanError::InvalidType("t"));
                    });
                }
                "d" => {
                    if d.is_some() {
                        return Err(ScanError::Duplicate("d"));
                    }
                    if c.literal(b"null") {
                        d = Some(None);
                    } else {
                        let start = c.i;
                        c.skip_value()?;
                        d = Some(Some(&text[start..c.i]));
                    }
                }
                _ => c.skip_value()?,
            }
            c.ws();
            match c.peek() {
                Some(b',') => c.i += 1,
                Some(b'}') => {
                    c.i += 1;
                    break;
                }
                _ => return Err(c.err_or_eof("expected `,` or `}`")),
            }
        }
    }
    c.ws();
    if c.i < c.b.len() {
        return Err(c.err("trailing characters"));
    }
    let op = op.flatten().ok_or(ScanError::MissingOp)?;
    Ok(Scanned {
        op,
        s: s.flatten(),
        t: t.flatten(),
        d: d.flatten(),
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

/// Bytes that end the fast run through a string: `"`, `\` and control characters.
const fn string_stop_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
}

static STOP: [bool; 256] = string_stop_table();

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` is `"`, `\` or below 0x20 (bytes >= 0x80 never match).
#[inline]
fn has_stop(w: u64) -> bool {
    let quote = w ^ (LO * u64::from(b'"'));
    let slash = w ^ (LO * u64::from(b'\\'));
    let zero = |x: u64| x.wrapping_sub(LO) & !x;
    let ctrl = w.wrapping_sub(LO * 0x20) & !w;
    (zero(quote) | zero(slash) | ctrl) & HI != 0
}

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self, what: &'static str) -> ScanError {
        ScanError::Syntax { at: self.i, what }
    }

    fn err_or_eof(&self, what: &'static str) -> ScanError {
        if self.i >= self.b.len() {
            self.err("EOF while parsing")
        } else {
            self.err(what)
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    /// Skips from the opening quote past the closing one; returns whether escapes were seen.
    #[inline]
    fn skip_string(&mut self) -> Result<bool, ScanError> {
        self.i += 1;
        let mut escaped = false;
        loop {
            // Eight bytes at a time while none of them needs a look.
            while let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let w = u64::from_le_bytes([
                    chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
                ]);
                if has_stop(w) {
                    break;
                }
                self.i += 8;
            }
            while let Some(&b) = self.b.get(self.i) {
                if STOP[b as usize] {
                    break;
                }
                self.i += 1;
            }
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => return Err(self.err("control character in string")),
                None => return Err(self.err("EOF while parsing a string")),
            }
        }
    }

    /// Checks one escape sequence at the backslash and moves past it.
    fn escape(&mut self) -> Result<(), ScanError> {
        self.i += 1;
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 1;
                Ok(())
            }
            Some(b'u') => {
                self.i += 1;
                for _ in 0..4 {
                    match self.peek() {
                        Some(h) if h.is_ascii_hexdigit() => self.i += 1,
                        Some(_) => return Err(self.err("invalid escape")),
                        None => return Err(self.err("EOF while parsing a string")),
                    }
                }
                Ok(())
            }
            Some(_) => Err(self.err("invalid escape")),
            None => Err(self.err("EOF while parsing a string")),
        }
    }

    /// A string value or key, unescaped only when it holds escapes.
    fn string(&mut self, text: &'a str) -> Result<Cow<'a, str>, ScanError> {
        let start = self.i;
        let escaped = self.skip_string()?;
        let raw = &text[start + 1..self.i - 1];
        if !escaped {
            return Ok(Cow::Borrowed(raw));
        }
        unescape(raw).map(Cow::Owned).ok_or(ScanError::Syntax {
            at: start,
            what: "lone surrogate in escape",
        })
    }

    /// `null` or an unsigned integer.
    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, ScanError> {
        if self.literal(b"null") {
            return Ok(None);
        }
        let start = self.i;
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => {}
            _ => {
                self.skip_value()?;
                return Err(ScanError::InvalidType(field));
            }
        }
        self.skip_number()?;
        let digits = &self.b[start..self.i];
        if digits.iter().all(u8::is_ascii_digit) {
            let mut v: u64 = 0;
            for &d in digits {
                v = match v
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(d - b'0')))
                {
                    Some(v) => v,
                    // Past u64: serde reads it as a float, which is not an integer.
                    None => return Err(ScanError::InvalidType(field)),
                };
            }
            return Ok(Some(v));
        }
        Err(ScanError::InvalidType(field))
    }

    fn skip_number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.i += 1;
                }
            }
            _ => return Err(self.err_or_eof("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err_or_eof("invalid number"));
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err_or_eof("invalid number"));
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
        }
        Ok(())
    }

    /// Skips one value, checking its grammar. Iterative, and with no depth limit (serde_json
    /// has none for values it skips either): the open containers are a stack of bits.
    fn skip_value(&mut self) -> Result<(), ScanError> {
        let mut stack = Brackets::default();
        loop {
            // A value.
            self.ws();
            match self.peek() {
                Some(b'"') => {
                    self.skip_string()?;
                }
                Some(b'-' | b'0'..=b'9') => self.skip_number()?,
                Some(b't') if self.literal(b"true") => {}
                Some(b'f') if self.literal(b"false") => {}
                Some(b'n') if self.literal(b"null") => {}
                Some(open @ (b'{' | b'[')) => {
                    self.i += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else {
                        stack.push(open == b'{');
                        if open == b'{' {
                            self.key()?;
                        }
                        continue;
                    }
                }
                None => return Err(self.err("EOF while parsing a value")),
                Some(_) => return Err(self.err("expected value")),
            }
            // After a value: close containers or move to the next element.
            loop {
                let Some(in_object) = stack.top() else {
                    return Ok(());
                };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if in_object {
                            self.ws();
                            self.key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {}
                    Some(b']') if !in_object => {}
                    _ => return Err(self.err_or_eof("expected `,` or a closing bracket")),
                }
                self.i += 1;
                stack.pop();
            }
        }
    }

    /// A key and its colon, inside an object being skipped.
    fn key(&mut self) -> Result<(), ScanError> {
        if self.peek() != Some(b'"') {
            return Err(self.err_or_eof("key must be a string"));
        }
        self.skip_string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(self.err_or_eof("expected `:`"));
        }
        self.i += 1;
        Ok(())
    }
}

/// Decodes the escapes of a string's contents (already checked); `None` for a lone surrogate.
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.char_indices();
    while let Some((_, ch)) = chars.next() {
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        let (_, e) = chars.next()?;
        let c = match e {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hi = hex4(&mut chars)?;
                if (0xD800..0xDC00).contains(&hi) {
                    if chars.next()?.1 != '\\' || chars.next()?.1 != 'u' {
                        return None;
                    }
                    let lo = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                } else {
                    char::from_u32(hi)?
                }
            }
            _ => return None,
        };
        out.push(c);
    }
    Some(out)
}

fn hex4(chars: &mut std::str::CharIndices<'_>) -> Option<u32> {
    let mut v = 0;
    for _ in 0..4 {
        v = v * 16 + chars.next()?.1.to_digit(16)?;
    }
    Some(v)
}

/// The kinds of the open containers (true = object), innermost on top: the first 128 levels in
/// one word, deeper ones (never seen in gateway traffic) in a spill vector.
#[derive(Default)]
struct Brackets {
    word: u128,
    len: usize,
    spill: Vec<u128>,
}

impl Brackets {
    fn push(&mut self, object: bool) {
        if self.len > 0 && self.len.is_multiple_of(128) {
            self.spill.push(self.word);
            self.word = 0;
        }
        self.word = (self.word << 1) | u128::from(object);
        self.len += 1;
    }

    fn top(&self) -> Option<bool> {
        (self.len > 0).then_some(self.word & 1 == 1)
    }

    fn pop(&mut self) {
        self.word >>= 1;
        self.len -= 1;
        if self.len > 0 && self.len.is_multiple_of(128) {
            self.word = self.spill.pop().unwrap_or(0);
        }
    }
}
