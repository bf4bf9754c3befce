//! The documents `validate` checks besides bodies: the query string and the headers as
//! objects, with their string values coerced to the types their schema names.

use serde_json::{Map, Value};

use super::schema::Schema;

/// The query as an object: names once → a string, names repeated → an array of strings;
/// `+` is a space, `%XX` decoded. `None` when it does not decode to UTF-8.
pub(crate) fn query_object(query: &str) -> Option<Map<String, Value>> {
    let mut m: Map<String, Value> = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| -> Option<String> {
            let plus = s.replace('+', " ");
            let bytes: Vec<u8> = percent_encoding::percent_decode_str(&plus).collect();
            String::from_utf8(bytes).ok()
        };
        let (name, value) = (decode(name)?, Value::String(decode(value)?));
        match m.get_mut(&name) {
            None => {
                m.insert(name, value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(first) => {
                let first = std::mem::take(first);
                m.insert(name, Value::Array(vec![first, value]));
            }
        }
    }
    Some(m)
}

/// The headers as an object: lower-case names, several fields of a name joined with `, `.
pub(crate) fn header_object(headers: &http::HeaderMap) -> Map<String, Value> {
    let mut m = Map::new();
    for name in headers.keys() {
        let joined: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        m.insert(name.as_str().to_string(), Value::String(joined.join(", ")));
    }
    m
}

/// Converts the string values of `object` to the types its schema's properties name
/// (`transform.md` §3.8, coercion); the values of names `split_commas` says are lists
/// written with commas (headers, `explode: false`) when their type is `array`.
pub(crate) fn coerce(
    object: &mut Map<String, Value>,
    schema: &Schema,
    split_commas: impl Fn(&str) -> bool,
) {
    let props = resolve(&schema.doc, &schema.doc)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    let Some(props) = props else { return };
    for (name, value) in object.iter_mut() {
        if let Some(prop) = props.get(name).and_then(|p| resolve(&schema.doc, p)) {
            coerce_value(value, prop, &schema.doc, split_commas(name));
        }
    }
}

/// A schema with its top-level `$ref` (a local `#/…` pointer) followed.
fn resolve<'a>(doc: &'a Value, s: &'a Value) -> Option<&'a Value> {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#')?;
            let decoded = percent_encoding::percent_decode_str(pointer)
                .decode_utf8()
                .ok()?;
            doc.pointer(&decoded)
        }
        None => Some(s),
    }
}

/// The listed types of a schema.
fn types(s: &Value) -> Vec<&str> {
    match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn coerce_value(value: &mut Value, prop: &Value, doc: &Value, split_commas: bool) {
    let listed = types(prop);
    if listed.is_empty() {
        return;
    }
    if listed.contains(&"array") {
        let items: Vec<Value> = match std::mem::take(value) {
            Value::Array(items) => items,
            Value::String(s) if split_commas => s
                .split(',')
                .map(|p| Value::String(p.trim().to_string()))
                .collect(),
            single => vec![single],
        };
        let item_schema = prop.get("items").and_then(|i| resolve(doc, i));
        *value = Value::Array(
            items
                .into_iter()
                .map(|mut i| {
                    if let Some(s) = item_schema {
                        coerce_scalar(&mut i, &types(s));
                    }
                    i
                })
                .collect(),
        );
        return;
    }
    coerce_scalar(value, &listed);
}

/// The string as the first listed type its text fits.
fn coerce_scalar(value: &mut Value, listed: &[&str]) {
    let Value::String(text) = value else { return };
    for t in listed {
        let fits = match *t {
            "integer" => is_integer(text),
            "number" => crate::json::Value::number(text).is_some(),
            "boolean" => text == "true" || text == "false",
            "string" => return,
            _ => false,
        };
        if fits {
            *value = match *t {
                "boolean" => Value::Bool(text == "true"),
                _ => match text.parse::<serde_json::Number>() {
                    Ok(n) => Value::Number(n),
                    Err(_) => return,
                },
            };
            return;
        }
    }
}

/// `-?(0|[1-9][0-9]*)`
fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_query_reads_as_an_object() {
        let q = query_object("a=1&b=x+y&a=2&c&d=%C3%A9&=e").unwrap();
        assert_eq!(
            Value::Object(q),
            json!({"a": ["1", "2"], "b": "x y", "c": "", "d": "é", "": "e"})
        );
        assert!(query_object("a=%FF").is_none(), "not UTF-8");
    }

    #[test]
    fn values_take_the_first_type_they_fit() {
        let schema = Schema::compile(json!({
            "type": "object",
            "$defs": {"lim": {"type": ["integer", "string"]}},
            "properties": {
                "limit": {"$ref": "#/$defs/lim"},
                "ratio": {"type": "number"},
                "on": {"type": "boolean"},
                "ids": {"type": "array", "items": {"type": "integer"}},
                "n": {"type": "integer"},
                "free": {}
            }
        }))
        .unwrap();
        let mut q = query_object("limit=10&ratio=1.5&on=true&ids=1&n=01&free=7").unwrap();
        coerce(&mut q, &schema, |_| false);
        assert_eq!(
            Value::Object(q),
            json!({"limit": 10, "ratio": 1.5, "on": true, "ids": [1], "n": "01", "free": "7"})
        );
        let mut h = Map::new();
        h.insert("ids".into(), json!("1, 2 ,x"));
        coerce(&mut h, &schema, |_| true);
        assert_eq!(h["ids"], json!([1, 2, "x"]));
    }
}
