//! XML ⇄ JSON for `xml_json` (`transform.md` §3.7).
//!
//! Reading uses quick-xml, a pull parser that never reads a DTD, declares no entity and
//! opens nothing: a document type declaration is refused outright, and so is every
//! reference but the five predefined entities and character references to XML 1.0
//! characters. Depth is checked as elements open, before anything grows with it.

use std::fmt;

use indexmap::IndexMap;
use quick_xml::events::{BytesStart, Event};

use crate::json::{Map, Value};

/// Why an XML body is refused. The message never quotes the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// A `<!DOCTYPE` of any kind.
    DocType,
    /// A reference to an entity other than the five predefined ones, or to a
    /// character XML 1.0 does not allow.
    Reference,
    /// Not UTF-8 (a declared encoding, a UTF-16 byte-order mark, invalid bytes).
    NotUtf8,
    /// Elements nested deeper than the limit.
    TooDeep,
    /// Not well-formed: what is wrong, and where.
    Malformed(String),
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DocType => f.write_str("the XML body has a document type declaration"),
            Self::Reference => f.write_str(
                "the XML body references an entity that is not predefined, or a character XML does not allow",
            ),
            Self::NotUtf8 => f.write_str("the XML body is not UTF-8"),
            Self::TooDeep => f.write_str("the XML body nests elements deeper than the limit"),
            Self::Malformed(why) => write!(f, "the XML body is not well-formed: {why}"),
        }
    }
}

impl std::error::Error for XmlError {}

/// Whether `c` is a character of XML 1.0 (its `Char` production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// One open element.
struct Frame {
    name: String,
    attrs: Vec<(String, String)>,
    children: IndexMap<String, Vec<Value>>,
    text: String,
}

impl Frame {
    fn open(e: &BytesStart<'_>) -> Result<Self, XmlError> {
        let name = std::str::from_utf8(e.name().as_ref())
            .map_err(|_| XmlError::NotUtf8)?
            .to_string();
        let mut attrs = Vec::new();
        for a in e.attributes().with_checks(true) {
            let a =
                a.map_err(|_| XmlError::Malformed("a duplicate or malformed attribute".into()))?;
            let key = std::str::from_utf8(a.key.as_ref())
                .map_err(|_| XmlError::NotUtf8)?
                .to_string();
            let value = a.unescape_value().map_err(|_| XmlError::Reference)?;
            if !value.chars().all(is_xml_char) {
                return Err(XmlError::Reference);
            }
            attrs.push((key, value.into_owned()));
        }
        Ok(Self {
            name,
            attrs,
            children: IndexMap::new(),
            text: String::new(),
        })
    }

    fn close(self) -> (String, Value) {
        if self.attrs.is_empty() && self.children.is_empty() {
            return (self.name, Value::String(self.text));
        }
        let mut m = Map::new();
        for (k, v) in self.attrs {
            m.insert(format!("@{k}"), Value::String(v));
        }
        for (k, mut vs) in self.children {
            let v = if vs.len() == 1 {
                vs.pop().unwrap_or(Value::Null)
            } else {
                Value::Array(vs)
            };
            m.insert(k, v);
        }
        if !self.text.chars().all(char::is_whitespace) {
            m.insert("#text".into(), Value::String(self.text));
        }
        (self.name, Value::Object(m))
    }
}

/// Reads an XML document into its JSON form: `{root name: value}`, elements nested at
/// most `max_depth` deep (the root is depth 1).
///
/// # Errors
/// The document is refused (`transform.md` §3.7).
pub fn to_json(body: &[u8], max_depth: usize) -> Result<Value, XmlError> {
    if body.starts_with(b"\xFF\xFE") || body.starts_with(b"\xFE\xFF") {
        return Err(XmlError::NotUtf8);
    }
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?;
    let mut reader = quick_xml::Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.check_comments = true;
    config.expand_empty_elements = false;
    config.trim_text(false);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Value> = None;
    // quick-xml's own messages quote names from the document: only the place is told
    let malformed = |r: &quick_xml::Reader<&[u8]>, what: &dyn fmt::Display| {
        XmlError::Malformed(format!("{what} (at byte {})", r.buffer_position()))
    };
    let syntax = "a syntax error, a mismatched or unclosed tag, or a bad attribute";
    loop {
        let event = reader
            .read_event()
            .map_err(|_| malformed(&reader, &syntax))?;
        match event {
            Event::DocType(_) => return Err(XmlError::DocType),
            Event::Decl(d) => {
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|_| malformed(&reader, &syntax))?;
                    if !enc.eq_ignore_ascii_case(b"utf-8") {
                        return Err(XmlError::NotUtf8);
                    }
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(malformed(&reader, &"more than one root element"));
            }
            Event::Start(e) => {
                if stack.len() >= max_depth {
                    return Err(XmlError::TooDeep);
                }
                stack.push(Frame::open(&e)?);
            }
            Event::Empty(e) => {
                if stack.len() >= max_depth {
                    return Err(XmlError::TooDeep);
                }
                let done = Frame::open(&e)?.close();
                place(&mut stack, &mut root, done);
            }
            Event::End(_) => {
                let Some(frame) = stack.pop() else {
                    return Err(malformed(&reader, &"an end tag without its start"));
                };
                place(&mut stack, &mut root, frame.close());
            }
            Event::Text(t) => {
                let t = t.decode().map_err(|_| XmlError::NotUtf8)?;
                if !t.chars().all(is_xml_char) {
                    return Err(XmlError::Reference);
                }
                match stack.last_mut() {
                    Some(f) => f.text.push_str(&t),
                    None if t.chars().all(char::is_whitespace) => {}
                    None => return Err(malformed(&reader, &"text outside the root element")),
                }
            }
            Event::CData(c) => {
                let t = c.decode().map_err(|_| XmlError::NotUtf8)?;
                if !t.chars().all(is_xml_char) {
                    return Err(XmlError::Reference);
                }
                match stack.last_mut() {
                    Some(f) => f.text.push_str(&t),
                    None => return Err(malformed(&reader, &"text outside the root element")),
                }
            }
            Event::GeneralRef(r) => {
                let ch = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .ok()
                        .flatten()
                        .filter(|c| is_xml_char(*c))
                        .ok_or(XmlError::Reference)?
                        .to_string()
                } else {
                    let name = r.decode().map_err(|_| XmlError::NotUtf8)?;
                    quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or(XmlError::Reference)?
                        .to_string()
                };
                match stack.last_mut() {
                    Some(f) => f.text.push_str(&ch),
                    None => return Err(malformed(&reader, &"text outside the root element")),
                }
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed("an element is not closed".into()));
    }
    root.ok_or_else(|| XmlError::Malformed("no root element".into()))
}

/// Puts a closed element in its parent, or makes it the document.
fn place(stack: &mut [Frame], root: &mut Option<Value>, (name, value): (String, Value)) {
    match stack.last_mut() {
        Some(parent) => parent.children.entry(name).or_default().push(value),
        None => {
            let mut m = Map::new();
            m.insert(name, value);
            *root = Some(Value::Object(m));
        }
    }
}

/// The XML output would pass its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// Writes `doc` as an XML document whose element `root` holds it, at most `cap` bytes.
///
/// # Errors
/// The output would be larger than `cap`.
pub fn from_json(doc: &Value, root: &str, cap: usize) -> Result<Vec<u8>, TooLarge> {
    let mut w = Writer {
        out: b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>".to_vec(),
        cap,
    };
    w.element(&name_of(root), doc)?;
    Ok(w.out)
}

/// An element name from a JSON member name: characters other than ASCII letters,
/// digits, `-`, `.` and `_` become `_`; a name not starting with a letter or `_` gets a
/// `_` in front.
pub fn name_of(s: &str) -> String {
    let mut n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        n.insert(0, '_');
    }
    n
}

struct Writer {
    out: Vec<u8>,
    cap: usize,
}

impl Writer {
    fn push(&mut self, s: &[u8]) -> Result<(), TooLarge> {
        if self.out.len() + s.len() > self.cap {
            return Err(TooLarge);
        }
        self.out.extend_from_slice(s);
        Ok(())
    }

    fn escaped(&mut self, s: &str, attribute: bool) -> Result<(), TooLarge> {
        let mut buf = [0u8; 4];
        for c in s.chars() {
            let piece: &[u8] = match c {
                '&' => b"&amp;",
                '<' => b"&lt;",
                '>' => b"&gt;",
                '"' if attribute => b"&quot;",
                '\t' if attribute => b"&#9;",
                '\n' if attribute => b"&#10;",
                '\r' if attribute => b"&#13;",
                c if !is_xml_char(c) => "\u{FFFD}".as_bytes(),
                c => c.encode_utf8(&mut buf).as_bytes(),
            };
            self.push(piece)?;
        }
        Ok(())
    }

    fn scalar(&mut self, v: &Value) -> Result<(), TooLarge> {
        match v {
            Value::String(s) => self.escaped(s, false),
            Value::Number(n) => self.push(n.as_bytes()),
            Value::Bool(b) => self.push(if *b { b"true" } else { b"false" }),
            _ => Ok(()),
        }
    }

    fn element(&mut self, name: &str, v: &Value) -> Result<(), TooLarge> {
        self.push(b"<")?;
        self.push(name.as_bytes())?;
        match v {
            Value::Null => return self.push(b"/>"),
            Value::Array(items) => {
                self.push(b">")?;
                for item in items {
                    self.element("item", item)?;
                }
            }
            Value::Object(members) => {
                let mut written: Vec<String> = Vec::new();
                for (k, val) in members {
                    let Some(attr) = k.strip_prefix('@') else {
                        continue;
                    };
                    if matches!(val, Value::Array(_) | Value::Object(_) | Value::Null) {
                        continue;
                    }
                    let n = name_of(attr);
                    if written.contains(&n) {
                        continue;
                    }
                    self.push(b" ")?;
                    self.push(n.as_bytes())?;
                    self.push(b"=\"")?;
                    match val {
                        Value::String(s) => self.escaped(s, true)?,
                        other => self.scalar(other)?,
                    }
                    self.push(b"\"")?;
                    written.push(n);
                }
                let content = members.iter().any(|(k, val)| {
                    !is_attribute(k, val) && !matches!((k.as_str(), val), ("#text", Value::Null))
                });
                if !content {
                    return self.push(b"/>");
                }
                self.push(b">")?;
                for (k, val) in members {
                    if is_attribute(k, val) {
                        continue;
                    }
                    let scalar = !matches!(val, Value::Array(_) | Value::Object(_));
                    if k == "#text" && scalar {
                        self.scalar(val)?;
                        continue;
                    }
                    let child = name_of(k);
                    match val {
                        Value::Array(items) => {
                            for item in items {
                                self.element(&child, item)?;
                            }
                        }
                        other => self.element(&child, other)?,
                    }
                }
            }
            scalar => {
                self.push(b">")?;
                self.scalar(scalar)?;
            }
        }
        self.push(b"</")?;
        self.push(name.as_bytes())?;
        self.push(b">")
    }
}

/// Whether member `k` is written as an attribute (or, `null`, as nothing).
fn is_attribute(k: &str, v: &Value) -> bool {
    k.starts_with('@') && !matches!(v, Value::Array(_) | Value::Object(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(xml: &str) -> String {
        String::from_utf8(to_json(xml.as_bytes(), 64).unwrap().write()).unwrap()
    }

    #[test]
    fn the_contracts_example_reads() {
        assert_eq!(
            j(r#"<order id="7"><item sku="a"/><item sku="b">x</item><note>hi</note></order>"#),
            r##"{"order":{"@id":"7","item":[{"@sku":"a"},{"@sku":"b","#text":"x"}],"note":"hi"}}"##
        );
    }

    #[test]
    fn text_references_cdata_and_namespaces() {
        assert_eq!(j("<a/>"), r#"{"a":""}"#);
        assert_eq!(j("<a></a>"), r#"{"a":""}"#);
        assert_eq!(
            j("<?xml version=\"1.0\" encoding=\"utf-8\"?><!-- c --><a> x &amp; &#65;<![CDATA[<y>]]><?pi?> </a>"),
            r#"{"a":" x & A<y> "}"#
        );
        assert_eq!(
            j(
                r#"<soap:Env xmlns:soap="u"><soap:Body a="&lt;&quot;">t<b/>u</soap:Body></soap:Env>"#
            ),
            r##"{"soap:Env":{"@xmlns:soap":"u","soap:Body":{"@a":"<\"","b":"","#text":"tu"}}}"##
        );
        assert_eq!(
            j("\u{feff}<a>1</a>"),
            r#"{"a":"1"}"#,
            "a UTF-8 BOM is allowed"
        );
    }

    #[test]
    fn hostile_documents_are_refused() {
        let refuse = |xml: &[u8]| to_json(xml, 4).unwrap_err();
        assert_eq!(
            refuse(b"<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>"),
            XmlError::DocType
        );
        assert_eq!(
            refuse(b"<!DOCTYPE a SYSTEM \"file:///etc/passwd\"><a/>"),
            XmlError::DocType
        );
        assert_eq!(refuse(b"<a>&x;</a>"), XmlError::Reference);
        assert_eq!(refuse(b"<a>&#0;</a>"), XmlError::Reference);
        assert_eq!(refuse(b"<a b=\"&#1;\"/>"), XmlError::Reference);
        assert_eq!(
            refuse(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>"),
            XmlError::NotUtf8
        );
        assert_eq!(refuse(b"\xFF\xFE<\0a\0/\0>\0"), XmlError::NotUtf8);
        assert_eq!(refuse(b"<a>\xff</a>"), XmlError::NotUtf8);
        assert_eq!(
            refuse(b"<a><b><c><d><e/></d></c></b></a>"),
            XmlError::TooDeep
        );
        assert!(to_json(b"<a><b><c><d/></c></b></a>", 4).is_ok(), "depth 4");
        for bad in [
            &b"<a><b></a></b>"[..],
            b"<a>",
            b"<a/><b/>",
            b"x<a/>",
            b"<a/>x",
            b"",
            b"<a x=\"1\" x=\"2\"/>",
        ] {
            assert!(
                matches!(refuse(bad), XmlError::Malformed(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let e = refuse(b"<secret><b></secret>").to_string();
        assert!(!e.contains("secret"), "no name from the document: {e}");
        let deep = "<a>".repeat(1_000_000);
        assert_eq!(
            to_json(deep.as_bytes(), 128).unwrap_err(),
            XmlError::TooDeep
        );
    }

    fn x(json: &str, root: &str) -> String {
        let v = crate::json::parse(json.as_bytes(), 64).unwrap();
        String::from_utf8(from_json(&v, root, 1 << 20).unwrap()).unwrap()
    }

    #[test]
    fn json_writes_as_the_contract_says() {
        assert_eq!(
            x(
                r#"{"id":7,"@lang":"en","tags":["a","b"],"none":null}"#,
                "response"
            ),
            r#"<?xml version="1.0" encoding="UTF-8"?><response lang="en"><id>7</id><tags>a</tags><tags>b</tags><none/></response>"#
        );
        let decl = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
        assert_eq!(
            x("[1,[2,3],{}]", "r"),
            format!("{decl}<r><item>1</item><item><item>2</item><item>3</item></item><item/></r>")
        );
        assert_eq!(
            x(r##"{"k":[[1,2]],"@a":"x\"\t<","#text":"t&","2fa":1.50,"a b":true,"":"e","@o":{"z":1}}"##, "r"),
            format!("{decl}<r a=\"x&quot;&#9;&lt;\"><k><item>1</item><item>2</item></k>t&amp;<_2fa>1.50</_2fa><a_b>true</a_b><_>e</_><_o><z>1</z></_o></r>")
        );
        assert_eq!(
            x(r#"{"@b":null,"@c!":"1","@c?":"2"}"#, "r"),
            format!("{decl}<r c_=\"1\"/>"),
            "null: no attribute; a later same name is dropped"
        );
        assert_eq!(x("\"a\\u0001b\"", "r"), format!("{decl}<r>a\u{FFFD}b</r>"));
        let v = crate::json::parse(b"{\"a\":\"xxxxxxxxxx\"}", 8).unwrap();
        assert_eq!(from_json(&v, "r", 40), Err(TooLarge));
    }
}
