//! The strict reader.

use std::fmt;

use super::{Map, Value};

/// Why a body is not valid JSON: the rule it breaks and the byte where it was found.
/// The message never quotes the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong.
    pub kind: ParseErrorKind,
    /// The byte offset where it was found.
    pub offset: usize,
}

/// The rule a body breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// Not UTF-8.
    NotUtf8,
    /// Starts with a byte-order mark.
    ByteOrderMark,
    /// Nothing but whitespace.
    Empty,
    /// A character that cannot start or continue the value here.
    Unexpected,
    /// The text ends inside a value.
    Truncated,
    /// More than one value, or something after the value.
    Trailing,
    /// An object has two members of the same name.
    DuplicateMember,
    /// A string holds an unpaired surrogate escape.
    UnpairedSurrogate,
    /// A malformed escape, or a control character in a string.
    BadString,
    /// A malformed number.
    BadNumber,
    /// Nested deeper than the limit.
    TooDeep,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ParseErrorKind::NotUtf8 => "the body is not UTF-8",
            ParseErrorKind::ByteOrderMark => "the body starts with a byte-order mark",
            ParseErrorKind::Empty => "the body holds no JSON value",
            ParseErrorKind::Unexpected => "unexpected character",
            ParseErrorKind::Truncated => "the body ends inside a value",
            ParseErrorKind::Trailing => "text after the JSON value",
            ParseErrorKind::DuplicateMember => "duplicate member name",
            ParseErrorKind::UnpairedSurrogate => "unpaired surrogate escape",
            ParseErrorKind::BadString => "malformed string",
            ParseErrorKind::BadNumber => "malformed number",
            ParseErrorKind::TooDeep => "nested deeper than the limit",
        };
        write!(f, "{what} at byte {}", self.offset)
    }
}

impl std::error::Error for ParseError {}

/// Reads `body` as one JSON value nested at most `max_depth` deep (the outermost array
/// or object is depth 1).
///
/// # Errors
/// The body is not valid JSON under `transform.md` §3.2.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Value, ParseError> {
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(ParseError {
            kind: ParseErrorKind::ByteOrderMark,
            offset: 0,
        });
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ParseError {
            kind: ParseErrorKind::NotUtf8,
            offset: e.valid_up_to(),
        });
    }
    let mut r = Reader {
        b: body,
        at: 0,
        max_depth,
    };
    r.skip_ws();
    if r.at == body.len() {
        return Err(r.fail(ParseErrorKind::Empty));
    }
    let v = r.value(0)?;
    r.skip_ws();
    if r.at != body.len() {
        return Err(r.fail(ParseErrorKind::Trailing));
    }
    Ok(v)
}

/// Whether `text` is exactly one JSON number.
pub(crate) fn is_number(text: &[u8]) -> bool {
    let mut r = Reader {
        b: text,
        at: 0,
        max_depth: 0,
    };
    r.number().is_ok() && r.at == text.len()
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    max_depth: usize,
}

impl Reader<'_> {
    fn fail(&self, kind: ParseErrorKind) -> ParseError {
        ParseError {
            kind,
            offset: self.at,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), ParseError> {
        match self.peek() {
            Some(x) if x == c => {
                self.at += 1;
                Ok(())
            }
            Some(_) => Err(self.fail(ParseErrorKind::Unexpected)),
            None => Err(self.fail(ParseErrorKind::Truncated)),
        }
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value, ParseError> {
        for &c in word {
            self.expect(c)?;
        }
        Ok(v)
    }

    /// A value at nesting `depth` (the containers around it).
    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        match self.peek() {
            None => Err(self.fail(ParseErrorKind::Truncated)),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                self.number()?;
                let text = &self.b[start..self.at];
                // digits, signs, '.', 'e': ASCII
                Ok(Value::Number(String::from_utf8_lossy(text).into_owned()))
            }
            Some(_) => Err(self.fail(ParseErrorKind::Unexpected)),
        }
    }

    fn enter(&self, depth: usize) -> Result<(), ParseError> {
        if depth > self.max_depth {
            return Err(self.fail(ParseErrorKind::TooDeep));
        }
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.enter(depth)?;
        self.at += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                Some(_) => return Err(self.fail(ParseErrorKind::Unexpected)),
                None => return Err(self.fail(ParseErrorKind::Truncated)),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.enter(depth)?;
        self.at += 1;
        let mut members = Map::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.fail(if self.peek().is_none() {
                    ParseErrorKind::Truncated
                } else {
                    ParseErrorKind::Unexpected
                }));
            }
            let at = self.at;
            let name = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let v = self.value(depth)?;
            if members.insert(name, v).is_some() {
                return Err(ParseError {
                    kind: ParseErrorKind::DuplicateMember,
                    offset: at,
                });
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(members));
                }
                Some(_) => return Err(self.fail(ParseErrorKind::Unexpected)),
                None => return Err(self.fail(ParseErrorKind::Truncated)),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let Some(digits) = self.b.get(self.at..self.at + 4) else {
            return Err(self.fail(ParseErrorKind::Truncated));
        };
        let mut n = 0;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.fail(ParseErrorKind::BadString)),
            };
            n = n * 16 + u32::from(v);
        }
        self.at += 4;
        Ok(n)
    }

    /// A string at `"`; the input is known to be UTF-8.
    fn string(&mut self) -> Result<String, ParseError> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            // the run up to the next quote, backslash or control character
            let run = self.b[self.at..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            let Some(n) = run else {
                self.at = self.b.len();
                return Err(self.fail(ParseErrorKind::Truncated));
            };
            out.extend_from_slice(&self.b[self.at..self.at + n]);
            self.at += n;
            match self.b[self.at] {
                b'"' => {
                    self.at += 1;
                    // runs end at ASCII bytes and escapes write whole characters
                    return String::from_utf8(out)
                        .map_err(|_| self.fail(ParseErrorKind::BadString));
                }
                b'\\' => {
                    self.at += 1;
                    let Some(c) = self.peek() else {
                        return Err(self.fail(ParseErrorKind::Truncated));
                    };
                    self.at += 1;
                    let ch = match c {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => {
                            self.at -= 1;
                            return Err(self.fail(ParseErrorKind::BadString));
                        }
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => return Err(self.fail(ParseErrorKind::BadString)),
            }
        }
    }

    /// The character of `\uXXXX` (after `\u`), with its low surrogate when it is a
    /// high one.
    fn unicode_escape(&mut self) -> Result<char, ParseError> {
        let start = self.at - 2;
        let unpaired = ParseError {
            kind: ParseErrorKind::UnpairedSurrogate,
            offset: start,
        };
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if self.b.get(self.at..self.at + 2) != Some(b"\\u") {
                    return Err(unpaired);
                }
                self.at += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(unpaired);
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(unpaired),
            n => n,
        };
        char::from_u32(code).ok_or(unpaired)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), ParseError> {
        let digits = |r: &mut Self| {
            let n = r.b[r.at..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            r.at += n;
            n
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.fail(ParseErrorKind::BadNumber)),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return Err(self.fail(ParseErrorKind::BadNumber));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(self.fail(ParseErrorKind::BadNumber));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &[u8], depth: usize) -> ParseErrorKind {
        parse(s, depth).unwrap_err().kind
    }

    #[test]
    fn reads_and_writes_back_exactly() {
        let text = r#"{"a":1.0,"b":12345678901234567890,"c":1e400,"d":[true,false,null],"e":"x\"\\\n\u00e9","f":{}}"#;
        let v = parse(text.as_bytes(), 64).unwrap();
        let out = String::from_utf8(v.write()).unwrap();
        assert_eq!(out, "{\"a\":1.0,\"b\":12345678901234567890,\"c\":1e400,\"d\":[true,false,null],\"e\":\"x\\\"\\\\\\n\u{e9}\",\"f\":{}}");
        let spaced = parse(b" [ 1 , { \"z\" : -0.5E-3 } ] \n", 64).unwrap();
        assert_eq!(spaced.write(), b"[1,{\"z\":-0.5E-3}]");
    }

    #[test]
    fn duplicates_are_refused_after_unescaping() {
        assert_eq!(
            kind(br#"{"a":1,"a":2}"#, 64),
            ParseErrorKind::DuplicateMember
        );
        assert_eq!(
            kind(br#"{"a":1,"\u0061":2}"#, 64),
            ParseErrorKind::DuplicateMember
        );
        assert!(
            parse(br#"{"a":{"a":1}}"#, 64).is_ok(),
            "same name, other objects"
        );
    }

    #[test]
    fn surrogates_must_pair() {
        assert_eq!(kind(br#""\ud800""#, 64), ParseErrorKind::UnpairedSurrogate);
        assert_eq!(
            kind(br#""\udc00\ud800""#, 64),
            ParseErrorKind::UnpairedSurrogate
        );
        assert_eq!(
            kind(br#""\ud800\u0041""#, 64),
            ParseErrorKind::UnpairedSurrogate
        );
        let v = parse(br#""\ud83d\ude00""#, 64).unwrap();
        assert_eq!(v, Value::String("\u{1F600}".into()));
    }

    #[test]
    fn depth_is_counted_from_the_outermost_container() {
        assert!(parse(b"[[1]]", 2).is_ok());
        assert_eq!(kind(b"[[[1]]]", 2), ParseErrorKind::TooDeep);
        assert!(parse(b"1", 1).is_ok(), "scalars add nothing");
        // far deeper than any stack: refused at the limit, without recursing further
        let bomb = "[".repeat(10_000_000);
        assert_eq!(kind(bomb.as_bytes(), 128), ParseErrorKind::TooDeep);
        let ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(parse(ok.as_bytes(), 128).is_ok());
    }

    #[test]
    fn refuses_what_rfc_8259_does_not_allow() {
        assert_eq!(kind(b"\xEF\xBB\xBF{}", 64), ParseErrorKind::ByteOrderMark);
        assert_eq!(kind(b"\"\xff\"", 64), ParseErrorKind::NotUtf8);
        assert_eq!(kind(b"  ", 64), ParseErrorKind::Empty);
        assert_eq!(kind(b"{} {}", 64), ParseErrorKind::Trailing);
        assert_eq!(kind(b"[1,]", 64), ParseErrorKind::Unexpected);
        assert_eq!(kind(b"{\"a\":1", 64), ParseErrorKind::Truncated);
        assert_eq!(kind(b"01", 64), ParseErrorKind::Trailing);
        assert_eq!(kind(b"1.", 64), ParseErrorKind::BadNumber);
        assert_eq!(kind(b"-", 64), ParseErrorKind::BadNumber);
        assert_eq!(kind(b"+1", 64), ParseErrorKind::Unexpected);
        assert_eq!(kind(b"\"a\tb\"", 64), ParseErrorKind::BadString);
        assert_eq!(kind(b"\"\\x\"", 64), ParseErrorKind::BadString);
        assert_eq!(kind(b"NaN", 64), ParseErrorKind::Unexpected);
        assert_eq!(kind(b"tru", 64), ParseErrorKind::Truncated);
    }

    #[test]
    fn messages_never_quote_the_input() {
        let e = parse(br#"{"secret":"hunter2","secret":1}"#, 64).unwrap_err();
        let m = e.to_string();
        assert!(!m.contains("secret") && !m.contains("hunter2"), "{m}");
        assert_eq!(m, "duplicate member name at byte 20");
    }
}
