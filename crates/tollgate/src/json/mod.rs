//! Strict JSON for the body policies (`transform.md` §3.2): one reading that the gateway
//! and every upstream agree on.
//!
//! [`parse`] accepts exactly RFC 8259 UTF-8 text holding one value, and refuses what
//! general-purpose parsers resolve silently: a duplicate member name (which member wins
//! differs between parsers), an unpaired surrogate escape, nesting deeper than the
//! caller's limit (refused before the stack grows with it). Numbers keep their exact
//! text, objects their member order, so that [`Value::write`] gives back what it read:
//! `1.0` stays `1.0` and `12345678901234567890` is never rounded through a float.
//!
//! No parser of the ecosystem has all four properties (serde_json resolves duplicates
//! to the last member and needs process-wide features for exact numbers and order), so
//! this is the gateway's own, fuzzed by the `json_body` target.

mod edit;
mod parse;
mod pointer;
mod write;

pub use edit::{Edit, Edits};
pub use parse::{parse, ParseError};
pub use pointer::{Pointer, PointerError, Segment};

use indexmap::IndexMap;

/// The members of an object, in document order.
pub type Map = IndexMap<String, Value>;

/// A JSON value as the body held it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as its exact text (`-1.50e+3`).
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, members in order.
    Object(Map),
}

impl Value {
    /// The compact text of this value (no insignificant whitespace, minimal escaping,
    /// numbers as they were read).
    pub fn write(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write::value(self, &mut out);
        out
    }

    /// Appends the compact text of this value to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write::value(self, out);
    }

    /// A number from its text, when the text is a JSON number.
    pub fn number(text: &str) -> Option<Self> {
        parse::is_number(text.as_bytes()).then(|| Self::Number(text.to_string()))
    }

    /// The same value as a `serde_json::Value` (numbers keep their exact text: the
    /// crate is built with serde_json's `arbitrary_precision`).
    pub fn to_serde(&self) -> serde_json::Value {
        match self {
            Self::Null => serde_json::Value::Null,
            Self::Bool(b) => serde_json::Value::Bool(*b),
            Self::Number(n) => n
                .parse::<serde_json::Number>()
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Self::String(s) => serde_json::Value::String(s.clone()),
            Self::Array(a) => serde_json::Value::Array(a.iter().map(Self::to_serde).collect()),
            Self::Object(o) => serde_json::Value::Object(
                o.iter().map(|(k, v)| (k.clone(), v.to_serde())).collect(),
            ),
        }
    }

    /// The nesting depth: 0 for a scalar, 1 for an array or object of scalars.
    pub fn depth(&self) -> usize {
        match self {
            Self::Array(a) => 1 + a.iter().map(Self::depth).max().unwrap_or(0),
            Self::Object(o) => 1 + o.values().map(Self::depth).max().unwrap_or(0),
            _ => 0,
        }
    }
}
