//! A scanner for the gateway envelope `{op, d, s, t}`: it reads `op`, `s` and `t`, and finds
//! where `d` begins and ends without building anything (no allocation unless `t` or a key holds
//! escapes).
//!
//! Three depths of checking, the same envelope rules in all:
//!
//! - The envelope itself, always strict: one object and nothing after it but whitespace, keys
//!   strings, colons and commas where RFC 8259 puts them, no duplicate `op`/`d`/`s`/`t` keys,
//!   `op` and `s` unsigned 64-bit integers (or `null`), `t` a string (or `null`), and the full
//!   grammar of every value other than `d` (unknown keys included).
//! - `d`: [`scan_strict`] checks its full grammar, as `serde_json::from_str` does for the
//!   envelope struct (the property tests use serde_json as the oracle). [`scan`] checks an
//!   object or array `d` only structurally: strings closed, with valid escapes and no raw
//!   control characters; brackets balanced and matched by kind; any depth. What lies between
//!   them (numbers, literals, commas, colons) is passed over unread. [`scan_tail`], the codec's
//!   hot path, reads nothing of an object or array `d` that comes after `op`, `s` and `t` and
//!   ends the message (the order Discord sends, `{"t":..,"s":..,"op":..,"d":{..}}`): `d` is
//!   everything from its opening bracket to the closing bracket of the same kind just before
//!   the envelope's `}`, and its structure is checked where it is parsed; any other object or
//!   array `d` is checked as [`scan`] does. A scalar `d` (string, number, literal) gets the
//!   full grammar in all three.
//!
//! So a message [`scan`] or [`scan_tail`] accepts is one [`scan_strict`] accepts with the same
//! `op`, `s`, `t` and `d` whenever the text of `d` is valid JSON on its own: an application
//! that parses `d` either gets a typed error from its own parser or reads exactly what a strict
//! parser of the whole message would, never a different sequence number, since `op`, `s` and
//! `t` are read before a `d` taken unread (`protocol/tests/envelope_oracle.rs`). The one
//! message a strict parser reads differently is one with members after such a `d`
//! (`{"op":0,"s":1,"t":"X","d":{},"x":{}}`, which Discord does not send): [`scan_tail`] takes
//! them as part of the text of `d`, which is then not valid JSON on its own.
//!
//! The input is bytes whose UTF-8 the caller has checked over the whole message (or, for a
//! text message, its transport did: see `Envelope`), so the scanner reads each byte of the
//! envelope once; the few it turns into strings (`t`, and keys) are checked again where they
//! become `str`, the one step that needs it without `unsafe`. `d` is returned as a range.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// The envelope of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// The opcode.
    pub(crate) op: u64,
    /// The sequence number, if present and not `null`.
    pub(crate) s: Option<u64>,
    /// The event name, if present and not `null`: where its text lies between the quotes.
    pub(crate) t: Option<StrAt>,
    /// Where the raw text of `d` lies in the message, if present and not `null`.
    pub(crate) d: Option<Range<usize>>,
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

/// How much of `d` a scan reads (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// The full grammar.
    Strict,
    /// The structure of an object or array `d`.
    Structural,
    /// Nothing of an object or array `d` that ends the message after `op`, `s` and `t`; the
    /// structure of any other.
    Tail,
}

/// Scans one complete message, `d` checked structurally (see the module documentation).
pub(crate) fn scan(text: &[u8]) -> Result<Scanned, ScanError> {
    scan_with(text, Depth::Structural)
}

/// Scans one complete message, `d` checked against the full JSON grammar.
pub(crate) fn scan_strict(text: &[u8]) -> Result<Scanned, ScanError> {
    scan_with(text, Depth::Strict)
}

/// Scans one complete message, an object or array `d` that ends it after `op`, `s` and `t`
/// taken unread (the codec's hot path; see the module documentation).
pub(crate) fn scan_tail(text: &[u8]) -> Result<Scanned, ScanError> {
    scan_with(text, Depth::Tail)
}

fn scan_with(text: &[u8], depth: Depth) -> Result<Scanned, ScanError> {
    if depth == Depth::Tail
        && let Some(scanned) = compact_tail(text)
    {
        return Ok(scanned);
    }
    scan_general(text, depth)
}

/// Any envelope, member by member.
fn scan_general(text: &[u8], depth: Depth) -> Result<Scanned, ScanError> {
    let mut c = Cursor { b: text, i: 0 };
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
    let mut t: Option<Option<StrAt>> = None;
    let mut d: Option<Option<Range<usize>>> = None;
    c.ws();
    if c.peek() == Some(b'}') {
        c.i += 1;
    } else {
        loop {
            c.ws();
            if c.peek() != Some(b'"') {
                return Err(c.err_or_eof("key must be a string"));
            }
            let key = c.envelope_key()?;
            c.ws();
            if c.peek() != Some(b':') {
                return Err(c.err_or_eof("expected `:`"));
            }
            c.i += 1;
            c.ws();
            match key {
                Key::Op => {
                    if op.is_some() {
                        return Err(ScanError::Duplicate("op"));
                    }
                    op = Some(c.opt_u64("op")?);
                }
                Key::S => {
                    if s.is_some() {
                        return Err(ScanError::Duplicate("s"));
                    }
                    s = Some(c.opt_u64("s")?);
                }
                Key::T => {
                    if t.is_some() {
                        return Err(ScanError::Duplicate("t"));
                    }
                    t = Some(if c.literal(b"null") {
                        None
                    } else if c.peek() == Some(b'"') {
                        Some(c.string_at()?)
                    } else {
                        c.skip_value()?;
                        return Err(ScanError::InvalidType("t"));
                    });
                }
                Key::D => {
                    if d.is_some() {
                        return Err(ScanError::Duplicate("d"));
                    }
                    if c.literal(b"null") {
                        d = Some(None);
                    } else {
                        let start = c.i;
                        match c.peek() {
                            Some(open @ (b'{' | b'[')) if depth != Depth::Strict => {
                                let envelope_read = op.is_some() && s.is_some() && t.is_some();
                                if depth == Depth::Structural
                                    || !envelope_read
                                    || !c.take_tail(open)
                                {
                                    c.skip_structural()?;
                                }
                            }
                            _ => c.skip_value()?,
                        }
                        d = Some(Some(start..c.i));
                    }
                }
                Key::Other => c.skip_value()?,
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

/// The envelope as Discord writes it, compactly: `op`, `s` and `t` in any order, each once,
/// with no whitespace, then an object or array `d` that closes the message; what the general
/// loop ([`scan_general`]) returns for it with [`Depth::Tail`], for fewer instructions (no
/// whitespace skips, no duplicate bookkeeping beyond the three values). `None` for anything
/// else (whitespace, other or escaped keys, `null`s, numbers outside the one-pass form, `d`
/// elsewhere), which the general loop then reads from the start: a message's result never
/// depends on which of the two read it.
#[inline]
fn compact_tail(b: &[u8]) -> Option<Scanned> {
    if b.first() != Some(&b'{') {
        return None;
    }
    let mut c = Cursor { b, i: 1 };
    let (mut op, mut s, mut t) = (None, None, None);
    loop {
        let rest = &b[c.i..];
        if op.is_none() && rest.starts_with(b"\"op\":") {
            c.i += 5;
            op = Some(c.opt_u64("op").ok()??);
        } else if s.is_none() && rest.starts_with(b"\"s\":") {
            c.i += 4;
            s = Some(c.opt_u64("s").ok()??);
        } else if t.is_none() && rest.starts_with(b"\"t\":\"") {
            c.i += 4;
            t = Some(c.string_at().ok()?);
        } else if rest.starts_with(b"\"d\":") {
            let (op, s, t) = (op?, s?, t?);
            c.i += 4;
            let open = c.peek()?;
            if !matches!(open, b'{' | b'[') {
                return None;
            }
            let start = c.i;
            if !c.take_tail(open) {
                return None;
            }
            return Some(Scanned {
                op,
                s: Some(s),
                t: Some(t),
                d: Some(start..c.i),
            });
        } else {
            return None;
        }
        if c.peek() != Some(b',') {
            return None;
        }
        c.i += 1;
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

/// Where a string's text lies in the message, between its quotes, and whether it holds
/// escapes (checked: see [`unescape`] for the decoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StrAt {
    /// The bytes between the quotes.
    pub(crate) range: Range<usize>,
    /// Whether they hold escapes.
    pub(crate) escaped: bool,
}

/// A key of the envelope.
enum Key {
    Op,
    S,
    T,
    D,
    Other,
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

/// High bit set in each byte of `x` that is zero. Only the lowest set bit is exact (a borrow
/// can flag a byte above a zero one), which is all the callers use: `trailing_zeros() / 8` is
/// the index of the first matching byte.
#[inline]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO) & !x & HI
}

/// Flags the bytes of `w` that are `"`, `\` or below 0x20 (bytes >= 0x80 never match); the
/// lowest flag is exact.
#[inline]
fn stop_mask(w: u64) -> u64 {
    let ctrl = w.wrapping_sub(LO * 0x20) & !w & HI;
    zero_bytes(w ^ (LO * u64::from(b'"'))) | zero_bytes(w ^ (LO * u64::from(b'\\'))) | ctrl
}

/// The eight bytes at `i` as one little-endian word, if there are eight left.
#[inline]
fn word_at(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..)
        .and_then(<[u8]>::first_chunk::<8>)
        .map(|w| u64::from_le_bytes(*w))
}

/// One bit a byte of a 64-byte block, bit `k` for byte `k`.
struct Masks {
    quote: u64,
    backslash: u64,
    /// `{`, `}`, `[` and `]`.
    bracket: u64,
    /// Bytes below 0x20.
    control: u64,
}

impl Masks {
    /// Sixteen bytes at a time with `wide`'s vectors (SSE2 compares and move masks on
    /// x86-64, NEON on aarch64).
    #[inline]
    fn of(block: &[u8; 64]) -> Masks {
        use wide::u8x16;
        let mut m = Masks {
            quote: 0,
            backslash: 0,
            bracket: 0,
            control: 0,
        };
        let quote = u8x16::splat(b'"');
        let backslash = u8x16::splat(b'\\');
        let fold = u8x16::splat(0x20);
        let open = u8x16::splat(b'{');
        let close = u8x16::splat(b'}');
        let below_space = u8x16::splat(0x1F);
        for (k, chunk) in block.chunks_exact(16).enumerate() {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(chunk);
            let v = u8x16::new(bytes);
            let shift = 16 * k;
            m.quote |= u64::from(v.simd_eq(quote).to_bitmask()) << shift;
            m.backslash |= u64::from(v.simd_eq(backslash).to_bitmask()) << shift;
            // `[` and `]` are `{` and `}` without bit 5: folded, two compares find all four.
            let folded = v | fold;
            let brackets = folded.simd_eq(open) | folded.simd_eq(close);
            m.bracket |= u64::from(brackets.to_bitmask()) << shift;
            // Below 0x20 (unsigned): the byte is its own minimum with 0x1F.
            m.control |= u64::from(v.min(below_space).simd_eq(v).to_bitmask()) << shift;
        }
        m
    }
}

/// Bit `k` of the result is the xor of bits `0..=k` of `x`.
#[inline]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
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

    /// With the cursor on the bracket that opens `d`: when the message ends with the closing
    /// bracket of the same kind, then the envelope's `}` (whitespace around both allowed),
    /// takes everything up to that bracket as `d`, unread, and moves the cursor past it.
    /// False, and the cursor unmoved, otherwise.
    fn take_tail(&mut self, open: u8) -> bool {
        let close = if open == b'{' { b'}' } else { b']' };
        let trimmed = self.b.trim_ascii_end();
        let Some((b'}', inner)) = trimmed.split_last() else {
            return false;
        };
        let inner = inner.trim_ascii_end();
        if inner.len() < self.i + 2 || inner.last() != Some(&close) {
            return false;
        }
        self.i = inner.len();
        true
    }

    /// Skips from the opening quote past the closing one; returns whether escapes were seen.
    #[inline]
    fn skip_string(&mut self) -> Result<bool, ScanError> {
        self.i += 1;
        let mut escaped = false;
        loop {
            // Eight bytes at a time up to the first that needs a look.
            loop {
                match word_at(self.b, self.i) {
                    Some(w) => {
                        let m = stop_mask(w);
                        if m != 0 {
                            self.i += (m.trailing_zeros() / 8) as usize;
                            break;
                        }
                        self.i += 8;
                    }
                    None => {
                        while let Some(&b) = self.b.get(self.i) {
                            if STOP[b as usize] {
                                break;
                            }
                            self.i += 1;
                        }
                        break;
                    }
                }
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

    /// Where the string at the cursor lies, and the cursor past it.
    fn string_at(&mut self) -> Result<StrAt, ScanError> {
        let start = self.i;
        let escaped = self.skip_string()?;
        Ok(StrAt {
            range: start + 1..self.i - 1,
            escaped,
        })
    }

    /// The envelope key at the cursor's opening quote, and the cursor past its closing one.
    /// The four names as Discord writes them are matched in place; any other key (or one
    /// written with escapes) is read as a string.
    #[inline]
    fn envelope_key(&mut self) -> Result<Key, ScanError> {
        let name = self.b.get(self.i + 1..).unwrap_or_default();
        let plain = if name.starts_with(b"op\"") {
            Some((Key::Op, 4))
        } else if name.starts_with(b"s\"") {
            Some((Key::S, 3))
        } else if name.starts_with(b"t\"") {
            Some((Key::T, 3))
        } else if name.starts_with(b"d\"") {
            Some((Key::D, 3))
        } else {
            None
        };
        if let Some((key, len)) = plain {
            self.i += len;
            return Ok(key);
        }
        let at = self.string_at()?;
        if !at.escaped {
            return Ok(Key::Other);
        }
        Ok(match decode_str(self.b, &at)?.as_ref() {
            "op" => Key::Op,
            "s" => Key::S,
            "t" => Key::T,
            "d" => Key::D,
            _ => Key::Other,
        })
    }

    /// `null` or an unsigned integer.
    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, ScanError> {
        if self.literal(b"null") {
            return Ok(None);
        }
        let start = self.i;
        // Digits alone, without a leading zero, a fraction or an exponent, and within u64, in
        // one pass; anything else by the number grammar below.
        let mut v: u64 = 0;
        let mut i = start;
        while let Some(&digit @ b'0'..=b'9') = self.b.get(i) {
            match v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(digit - b'0')))
            {
                Some(next) => v = next,
                None => break,
            }
            i += 1;
        }
        let digits = i - start;
        if digits > 0
            && (digits == 1 || self.b[start] != b'0')
            && !matches!(self.b.get(i), Some(b'0'..=b'9' | b'.' | b'e' | b'E'))
        {
            self.i = i;
            return Ok(Some(v));
        }
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

    /// Skips one object or array from its opening bracket, checking structure only: strings
    /// closed, with valid escapes and no control characters, no backslash outside a string,
    /// brackets balanced and matched by kind, any depth. Bytes outside strings other than
    /// brackets are passed over unread.
    ///
    /// It reads 64 bytes at a time as bit masks (one bit a byte, built sixteen bytes at a time
    /// with vector compares): quotes, backslashes, brackets, control characters. Which bytes are
    /// inside strings follows from the unescaped quotes by a prefix xor, so a block's strings
    /// cost no branch; only backslashes (rare) and brackets outside strings (a few per event)
    /// are visited one by one.
    fn skip_structural(&mut self) -> Result<(), ScanError> {
        let mut stack = Brackets::default();
        // Whether the previous block ended inside a string (all ones) or not, and whether its
        // last byte was a backslash that escapes the first byte of this block.
        let mut in_string_carry: u64 = 0;
        let mut escape_carry = false;
        let mut base = self.i;
        loop {
            let Some(rest) = self.b.get(base..).filter(|r| !r.is_empty()) else {
                self.i = self.b.len();
                return Err(if in_string_carry != 0 {
                    self.err("EOF while parsing a string")
                } else {
                    self.err("EOF while parsing a value")
                });
            };
            let masks = match rest.first_chunk::<64>() {
                Some(block) => Masks::of(block),
                None => {
                    // The last, short block, padded with spaces (which match no mask).
                    let mut block = [b' '; 64];
                    block[..rest.len()].copy_from_slice(rest);
                    Masks::of(&block)
                }
            };
            // Escaped bytes: each backslash not itself escaped escapes the next byte.
            let mut escaped = u64::from(escape_carry);
            escape_carry = false;
            let mut unescaped_backslashes = 0;
            let mut bs = masks.backslash;
            while bs != 0 {
                let p = bs.trailing_zeros();
                bs &= bs - 1;
                if (escaped >> p) & 1 == 1 {
                    continue;
                }
                unescaped_backslashes |= 1 << p;
                self.i = base + p as usize;
                self.escape()?;
                if p == 63 {
                    escape_carry = true;
                } else {
                    escaped |= 1 << (p + 1);
                }
            }
            let quotes = masks.quote & !escaped;
            let in_string = prefix_xor(quotes) ^ in_string_carry;
            in_string_carry = 0u64.wrapping_sub(in_string >> 63);
            let bad = (masks.control & in_string) | (unescaped_backslashes & !in_string);
            let mut brackets = masks.bracket & !in_string;
            // The first bad byte counts only if it comes before the end of `d`.
            let mut end_of_d = None;
            while brackets != 0 {
                let p = brackets.trailing_zeros() as usize;
                brackets &= brackets - 1;
                // Bits past the end of `rest` are padding, which matches no mask.
                match rest.get(p).copied() {
                    Some(b'{') => stack.push(true),
                    Some(b'[') => stack.push(false),
                    close => {
                        if stack.top() != Some(close == Some(b'}')) {
                            self.i = base + p;
                            self.check_bad(base, bad, p)?;
                            return Err(self.err("mismatched closing bracket"));
                        }
                        stack.pop();
                        if stack.top().is_none() {
                            end_of_d = Some(p);
                            break;
                        }
                    }
                }
            }
            if let Some(p) = end_of_d {
                self.check_bad(base, bad, p)?;
                self.i = base + p + 1;
                return Ok(());
            }
            self.check_bad(base, bad, 63)?;
            base += 64;
        }
    }

    /// Fails at the first byte flagged in `bad` at or before bit `last` of the block at `base`.
    fn check_bad(&mut self, base: usize, bad: u64, last: usize) -> Result<(), ScanError> {
        let upto = if last >= 63 {
            u64::MAX
        } else {
            (1u64 << (last + 1)) - 1
        };
        let bad = bad & upto;
        if bad == 0 {
            return Ok(());
        }
        self.i = base + bad.trailing_zeros() as usize;
        Err(if self.peek() == Some(b'\\') {
            self.err("backslash outside a string")
        } else {
            self.err("control character in string")
        })
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

/// The text of the string at `at` in `b`: checked as UTF-8 (the one step that needs it for a
/// message taken as checked by its transport, without `unsafe`), its escapes decoded.
pub(crate) fn decode_str<'a>(b: &'a [u8], at: &StrAt) -> Result<Cow<'a, str>, ScanError> {
    let raw = std::str::from_utf8(b.get(at.range.clone()).unwrap_or_default()).map_err(|e| {
        ScanError::Syntax {
            at: at.range.start + e.valid_up_to(),
            what: "invalid utf-8 in string",
        }
    })?;
    if !at.escaped {
        return Ok(Cow::Borrowed(raw));
    }
    unescape(raw).map(Cow::Owned).ok_or(ScanError::Syntax {
        at: at.range.start.saturating_sub(1),
        what: "lone surrogate in escape",
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The compact path takes the envelopes Discord and the mock write, and whatever it takes
    /// of a mutated envelope, the general loop reads the same (what it leaves, the general
    /// loop reads alone, so only agreement needs checking).
    #[test]
    fn the_compact_path_agrees_with_the_general_loop() {
        let seeds: [&[u8]; 4] = [
            br#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"id":"1","content":"hi"}}"#,
            br#"{"op":0,"t":"GUILD_CREATE","s":7,"d":{"x":[1,{"y":"}"}]}}"#,
            br#"{"s":18446744073709551615,"op":0,"t":"AB","d":[1,2]}"#,
            br#"{"op":0,"s":1,"t":"READY","d":{}}"#,
        ];
        for seed in seeds {
            let want = scan_general(seed, Depth::Tail).expect("a valid envelope");
            assert_eq!(
                compact_tail(seed),
                Some(want),
                "{}",
                String::from_utf8_lossy(seed)
            );
        }
        let tricky: [&[u8]; 16] = [
            br#"{"op":0,"op":0,"s":1,"t":"A","d":{}}"#,
            br#"{"op":0,"s":1,"s":2,"t":"A","d":{}}"#,
            br#"{"op":0,"s":1,"t":"A","t":"B","d":{}}"#,
            br#"{"op":01,"s":1,"t":"A","d":{}}"#,
            br#"{"op":1.0,"s":1,"t":"A","d":{}}"#,
            br#"{"op":0,"s":null,"t":"A","d":{}}"#,
            br#"{"op":0,"s":1,"t":null,"d":{}}"#,
            br#" {"op":0,"s":1,"t":"A","d":{}}"#,
            br#"{"op":0,"s":1,"d":{},"t":"A"}"#,
            br#"{"op":0,"s":1,"t":"A","d":{}}x"#,
            br#"{"op":0,"s":1,"t":"A","d":{},"x":1}"#,
            b"{\"op\":0,\"s\":1,\"t\":\"A\x01\",\"d\":{}}",
            br#"{"s":1,"t":"A","d":{}}"#,
            br#"{"op":0,"s":1,"t":"A","d":"x"}"#,
            br#"{"op":0,"s":1,"t":"A","d":[}"#,
            br#"{"op":0,"s":99999999999999999999,"t":"A","d":{}}"#,
        ];
        for m in tricky {
            if let Some(fast) = compact_tail(m) {
                assert_eq!(
                    scan_general(m, Depth::Tail),
                    Ok(fast),
                    "{}",
                    String::from_utf8_lossy(m)
                );
            }
        }
        let alphabet: &[u8] = b" \t\n\"\\{}[],:0123456789.eE-+nulopstd";
        let mut rng = fastrand::Rng::with_seed(0xc0de);
        let (mut taken, mut left) = (0, 0);
        for _ in 0..40_000 {
            let mut m = seeds[rng.usize(..seeds.len())].to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..=m.len());
                match rng.u8(..4) {
                    0 if at < m.len() => {
                        m.remove(at);
                    }
                    // A piece of an envelope spliced in: repeated keys, members out of place.
                    3 => {
                        let from = seeds[rng.usize(..seeds.len())];
                        let start = rng.usize(..from.len());
                        let end = rng.usize(start..=from.len().min(start + 24));
                        m.splice(at..at, from[start..end].iter().copied());
                    }
                    1 if at < m.len() => m[at] = alphabet[rng.usize(..alphabet.len())],
                    _ => m.insert(at, alphabet[rng.usize(..alphabet.len())]),
                }
            }
            match compact_tail(&m) {
                Some(fast) => {
                    taken += 1;
                    assert_eq!(
                        scan_general(&m, Depth::Tail),
                        Ok(fast),
                        "{}",
                        String::from_utf8_lossy(&m)
                    );
                }
                None => left += 1,
            }
        }
        // Both sides of the branch were exercised.
        assert!(taken > 1_000 && left > 1_000, "taken {taken}, left {left}");
    }

    /// The mask builders against a byte-by-byte reference, on words that mix every class.
    #[test]
    fn masks_match_the_bytes() {
        let mut rng = fastrand::Rng::with_seed(0x5ca1);
        let alphabet = [
            b'"', b'\\', b'{', b'}', b'[', b']', b';', b'=', 0, 0x1f, 0x20, 0x7f, 0x80, 0xfb, 0xdd,
            b'a',
        ];
        for _ in 0..2_000 {
            let mut block = [0u8; 64];
            for b in &mut block {
                *b = if rng.bool() {
                    alphabet[rng.usize(..alphabet.len())]
                } else {
                    rng.u8(..)
                };
            }
            let m = Masks::of(&block);
            let want = |f: &dyn Fn(u8) -> bool| {
                block
                    .iter()
                    .enumerate()
                    .fold(0u64, |acc, (k, &b)| acc | (u64::from(f(b)) << k))
            };
            assert_eq!(m.quote, want(&|b| b == b'"'));
            assert_eq!(m.backslash, want(&|b| b == b'\\'));
            assert_eq!(m.bracket, want(&|b| matches!(b, b'{' | b'}' | b'[' | b']')));
            assert_eq!(m.control, want(&|b| b < 0x20));
            let x = rng.u64(..);
            let mut acc = 0;
            let mut px = 0;
            for k in 0..64 {
                acc ^= (x >> k) & 1;
                px |= acc << k;
            }
            assert_eq!(prefix_xor(x), px);
        }
    }
}
