//! OpenAPI 3.0 / 3.1 documents for `validate` (`transform.md` §3.8, OpenAPI mode): the
//! document read (JSON or YAML), 3.0 schemas read as 3.0 defines them, and each
//! operation turned into the same [`Rules`] as a `methods` table, its parameters into
//! one object schema per location.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::schema::{self, pointer_push, Schema};
use super::{BodyRule, Responses, Rules};

/// One path of the document: its segments and its operations.
#[derive(Debug)]
pub(crate) struct PathTemplate {
    segments: Vec<Option<String>>,
    pub(crate) ops: Vec<(http::Method, usize)>,
    /// The `{name}`s, by segment index.
    params: Vec<(usize, String)>,
}

impl PathTemplate {
    /// The path parameters of `path` (its segments) when this template matches it.
    pub(crate) fn matches(&self, segs: &[&str]) -> Option<Map<String, Value>> {
        if segs.len() != self.segments.len() {
            return None;
        }
        for (want, got) in self.segments.iter().zip(segs) {
            match want {
                Some(lit) if lit != got => return None,
                None if got.is_empty() => return None,
                _ => {}
            }
        }
        let mut m = Map::new();
        for (i, name) in &self.params {
            let decoded = percent_encoding::percent_decode_str(segs[*i]).decode_utf8_lossy();
            m.insert(name.clone(), Value::String(decoded.into_owned()));
        }
        Some(m)
    }

    /// Whether `self` is more specific than `other` (a literal where the other has a
    /// template, at the first place they differ).
    pub(crate) fn beats(&self, other: &Self) -> bool {
        for (a, b) in self.segments.iter().zip(&other.segments) {
            match (a.is_some(), b.is_some()) {
                (true, false) => return true,
                (false, true) => return false,
                _ => {}
            }
        }
        false
    }
}

/// What a document compiles to.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) paths: Vec<PathTemplate>,
    pub(crate) rules: Vec<Rules>,
}

/// Reads `file` (`.json`, `.yaml`, `.yml`) relative to `dir`.
fn read(dir: &Path, file: &str) -> Result<Value, String> {
    let yaml = file.ends_with(".yaml") || file.ends_with(".yml");
    if !yaml && !file.ends_with(".json") {
        return Err(format!(
            "OpenAPI document {file:?} must be .json, .yaml or .yml"
        ));
    }
    let text = std::fs::read_to_string(dir.join(file))
        .map_err(|e| format!("cannot read OpenAPI document {file:?}: {e}"))?;
    if !yaml {
        return serde_json::from_str(&text)
            .map_err(|e| format!("{file}:{}:{}: {e}", e.line(), e.column()));
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).map_err(|e| {
        let m = e.marker();
        format!("{file}:{}:{}: {}", m.line(), m.col() + 1, e.info())
    })?;
    let first = docs
        .into_iter()
        .next()
        .ok_or(format!("{file}: the document is empty"))?;
    from_yaml(&first).map_err(|e| format!("{file}: {e}"))
}

/// A YAML value as JSON (keys as strings, reals with their text).
fn from_yaml(y: &yaml_rust2::Yaml) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => r
            .parse::<serde_json::Number>()
            .map_or_else(|_| Value::String(r.clone()), Value::Number),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(from_yaml).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => return Err("a mapping key that is not a scalar".into()),
                };
                m.insert(key, from_yaml(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err("an unresolved alias or a bad value".into()),
    })
}

/// A 3.0 schema object read as 2020-12: `nullable`, boolean exclusive bounds, and the
/// annotations 3.0 adds.
fn convert_30(s: &mut Value) {
    let Value::Object(m) = s else { return };
    if m.remove("nullable") == Some(Value::Bool(true)) {
        match m.get_mut("type") {
            Some(Value::String(t)) => {
                let t = std::mem::take(t);
                m.insert("type".into(), json!([t, "null"]));
            }
            Some(Value::Array(ts)) if !ts.contains(&json!("null")) => ts.push(json!("null")),
            _ => {}
        }
        if let Some(Value::Array(options)) = m.get_mut("enum") {
            if !options.contains(&Value::Null) {
                options.push(Value::Null);
            }
        }
    }
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        if let Some(Value::Bool(on)) = m.get(flag).cloned() {
            m.remove(flag);
            if on {
                if let Some(b) = m.remove(bound) {
                    m.insert(flag.into(), b);
                }
            }
        }
    }
    m.retain(|k, _| {
        !matches!(
            k.as_str(),
            "example" | "discriminator" | "xml" | "externalDocs" | "readOnly" | "writeOnly"
        ) && !k.starts_with("x-")
    });
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(ps)) = m.get_mut(key) {
            ps.values_mut().for_each(convert_30);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = m.get_mut(key) {
            convert_30(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = m.get_mut(key) {
            subs.iter_mut().for_each(convert_30);
        }
    }
}

/// Every place of the document that holds a schema, as pointers (`#/…` without `#`).
fn schema_places(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let params = |base: &str, v: &Value, out: &mut Vec<String>| {
        if let Some(ps) = v.get("parameters").and_then(Value::as_array) {
            for (i, p) in ps.iter().enumerate() {
                if p.get("schema").is_some() {
                    out.push(format!("{base}/parameters/{i}/schema"));
                }
            }
        }
    };
    let content = |base: &str, v: &Value, out: &mut Vec<String>| {
        if let Some(c) = v.get("content").and_then(Value::as_object) {
            for (media, entry) in c {
                if entry.get("schema").is_some() {
                    out.push(format!(
                        "{}/schema",
                        pointer_push(&format!("{base}/content"), media)
                    ));
                }
            }
        }
    };
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (p, item) in paths {
            let base = pointer_push("/paths", p);
            params(&base, item, &mut out);
            for (m, op) in item.as_object().into_iter().flatten() {
                if !is_method(m) {
                    continue;
                }
                let ob = pointer_push(&base, m);
                params(&ob, op, &mut out);
                if let Some(rb) = op.get("requestBody") {
                    content(&format!("{ob}/requestBody"), rb, &mut out);
                }
                for (status, r) in op
                    .get("responses")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    content(
                        &pointer_push(&format!("{ob}/responses"), status),
                        r,
                        &mut out,
                    );
                }
            }
        }
    }
    let components = doc.get("components");
    for (name, _) in components
        .and_then(|c| c.get("schemas"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        out.push(pointer_push("/components/schemas", name));
    }
    for (name, p) in components
        .and_then(|c| c.get("parameters"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if p.get("schema").is_some() {
            out.push(format!(
                "{}/schema",
                pointer_push("/components/parameters", name)
            ));
        }
    }
    for kind in ["requestBodies", "responses"] {
        for (name, v) in components
            .and_then(|c| c.get(kind))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            content(
                &pointer_push(&format!("/components/{kind}"), name),
                v,
                &mut out,
            );
        }
    }
    out
}

fn is_method(m: &str) -> bool {
    matches!(
        m,
        "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
    )
}

/// An object the document points to with a `$ref` (parameters, bodies, responses), or
/// the object itself.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
    {
        Some(p) => doc.pointer(p).unwrap_or(v),
        None => v,
    }
}

/// Loads and compiles `file`; every problem is an error message (the document and the
/// place in it).
pub(crate) fn load(dir: &Path, file: &str) -> Result<Document, Vec<String>> {
    let mut doc = read(dir, file).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let version = doc
        .get("openapi")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let v30 = version.starts_with("3.0.");
    if !v30 && !version.starts_with("3.1.") {
        return Err(vec![format!(
            "{file}#/openapi: {version:?} is not 3.0.x or 3.1.x"
        )]);
    }
    if let Some(d) = doc.get("jsonSchemaDialect") {
        if d.as_str() != Some("https://json-schema.org/draft/2020-12/schema") {
            errors.push(format!(
                "{file}#/jsonSchemaDialect: {d} is not draft 2020-12"
            ));
        }
    }
    let places = schema_places(&doc);
    if v30 {
        for p in &places {
            if let Some(s) = doc.pointer_mut(p) {
                convert_30(s);
            }
        }
    }
    for p in &places {
        if let Some(s) = doc.pointer(p) {
            for problem in schema::problems(s) {
                // `#/x` of the schema becomes `#<place>/x` of the document
                errors.push(format!("{file}#{p}{}", &problem[1..]));
            }
        }
    }
    let mut out = Document {
        paths: Vec::new(),
        rules: Vec::new(),
    };
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (p, item) in &paths {
        let at = pointer_push("#/paths", p);
        let mut segments = Vec::new();
        let mut params = Vec::new();
        let mut whole = true;
        for (i, seg) in p.split('/').filter(|s| !s.is_empty()).enumerate() {
            match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if !name.contains(['{', '}']) && !name.is_empty() => {
                    params.push((i, name.to_string()));
                    segments.push(None);
                }
                _ if seg.contains(['{', '}']) => whole = false,
                _ => segments.push(Some(seg.to_string())),
            }
        }
        if !whole {
            errors.push(format!(
                "{file}{at}: a path template must be a whole segment ({p:?})"
            ));
            continue;
        }
        if out.paths.iter().any(|t| t.segments == segments) {
            errors.push(format!(
                "{file}{at}: {p:?} equals another path but for parameter names"
            ));
            continue;
        }
        let mut ops = Vec::new();
        for (m, op) in item.as_object().into_iter().flatten() {
            if !is_method(m) {
                continue;
            }
            let op_at = pointer_push(&at, m);
            match operation(&doc, item, op, &op_at, file, &at) {
                Ok(rules) => {
                    let method = http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .unwrap_or(http::Method::GET);
                    ops.push((method, out.rules.len()));
                    out.rules.push(rules);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        out.paths.push(PathTemplate {
            segments,
            ops,
            params,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The style a parameter may have in its location (§3.8: `form` for query, `simple`
/// for path and header).
fn style_ok(location: &str, style: Option<&str>) -> bool {
    match location {
        "query" => style.is_none_or(|s| s == "form"),
        _ => style.is_none_or(|s| s == "simple"),
    }
}

/// A compiled schema whose root is the whole document (its `$ref`s resolve there) with
/// `extra` keywords on top.
fn rooted(doc: &Value, extra: Map<String, Value>) -> Result<Schema, String> {
    let mut root = doc.clone();
    if let Value::Object(m) = &mut root {
        // the document's own keys are not keywords of 2020-12: they are ignored
        m.extend(extra);
    }
    Schema::compile(root)
}

fn operation(
    doc: &Value,
    item: &Value,
    op: &Value,
    at: &str,
    file: &str,
    item_at: &str,
) -> Result<Rules, Vec<String>> {
    let mut errors = Vec::new();
    // the operation's entry wins over the path's for the same name and location
    let mut params: Vec<(String, String, &Value, String)> = Vec::new();
    for (list, base) in [
        (op.get("parameters"), at),
        (item.get("parameters"), item_at),
    ] {
        for (i, p) in list
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let p = deref(doc, p);
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let location = p
                .get("in")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if params
                .iter()
                .any(|(n, l, _, _)| *n == name && *l == location)
            {
                continue;
            }
            params.push((name, location, p, format!("{base}/parameters/{i}")));
        }
    }
    let mut objects: [(&str, Map<String, Value>, Vec<Value>); 3] = [
        ("path", Map::new(), Vec::new()),
        ("query", Map::new(), Vec::new()),
        ("header", Map::new(), Vec::new()),
    ];
    let mut comma = Vec::new();
    for (name, location, p, p_at) in &params {
        if location == "cookie" {
            continue;
        }
        let name = if location == "header" {
            let lower = name.to_ascii_lowercase();
            if matches!(lower.as_str(), "accept" | "content-type" | "authorization") {
                continue;
            }
            lower
        } else {
            name.clone()
        };
        if p.get("content").is_some() {
            errors.push(format!(
                "{file}{p_at}: a parameter with content instead of schema is not supported"
            ));
            continue;
        }
        let style = p.get("style").and_then(Value::as_str);
        if !style_ok(location, style) {
            errors.push(format!("{file}{p_at}/style: {:?} is not supported in {location} (form for query, simple for path and header)", style.unwrap_or_default()));
            continue;
        }
        if location == "query" && p.get("explode") == Some(&Value::Bool(false)) {
            comma.push(name.clone());
        }
        let Some((_, props, required)) = objects.iter_mut().find(|(l, _, _)| l == location) else {
            continue;
        };
        props.insert(name.clone(), p.get("schema").cloned().unwrap_or(json!({})));
        let must = location == "path" || p.get("required") == Some(&Value::Bool(true));
        if must {
            required.push(Value::String(name));
        }
    }
    let mut compile = |props: Map<String, Value>, required: Vec<Value>| -> Option<Schema> {
        if props.is_empty() {
            return None;
        }
        let mut extra = Map::new();
        extra.insert("type".into(), json!("object"));
        extra.insert("properties".into(), Value::Object(props));
        extra.insert("required".into(), Value::Array(required));
        rooted(doc, extra)
            .map_err(|e| errors.push(format!("{file}{at}: {e}")))
            .ok()
    };
    let [(_, pp, pr), (_, qp, qr), (_, hp, hr)] = objects;
    let path = compile(pp, pr);
    let query = compile(qp, qr);
    let headers = compile(hp, hr);
    let by_ref = |pointer: &str| -> Result<Schema, String> {
        // a URI fragment: `{`, `}`, `%` and the like percent-encoded
        const FRAGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'%')
            .add(b'<')
            .add(b'>')
            .add(b'[')
            .add(b'\\')
            .add(b']')
            .add(b'^')
            .add(b'`')
            .add(b'{')
            .add(b'|')
            .add(b'}');
        let fragment = percent_encoding::utf8_percent_encode(pointer, FRAGMENT);
        let mut extra = Map::new();
        extra.insert("$ref".into(), Value::String(format!("#{fragment}")));
        rooted(doc, extra)
    };
    let content =
        |v: &Value, base: &str, errors: &mut Vec<String>| -> Vec<(String, Option<Schema>)> {
            let mut out = Vec::new();
            for (media, entry) in v
                .get("content")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let json = crate::media::is_json(&media.to_ascii_lowercase());
                let schema = match (json, entry.get("schema")) {
                    (true, Some(_)) => {
                        let pointer =
                            format!("{}/schema", pointer_push(&format!("{base}/content"), media));
                        match by_ref(&pointer) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                errors.push(format!("{file}#{pointer}: {e}"));
                                None
                            }
                        }
                    }
                    _ => None,
                };
                out.push((media.to_ascii_lowercase(), schema));
            }
            out
        };
    let op_pointer = at.trim_start_matches('#');
    let body = op.get("requestBody").map(|rb| {
        let (rb, base) = match rb
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            Some(p) => (doc.pointer(p).unwrap_or(rb), p.to_string()),
            None => (rb, format!("{op_pointer}/requestBody")),
        };
        BodyRule::OpenApi {
            required: rb.get("required") == Some(&Value::Bool(true)),
            content: content(rb, &base, &mut errors),
        }
    });
    let mut statuses = Vec::new();
    for (status, r) in op
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let (r, base) = match r
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|x| x.strip_prefix('#'))
        {
            Some(p) => (doc.pointer(p).unwrap_or(r), p.to_string()),
            None => (r, pointer_push(&format!("{op_pointer}/responses"), status)),
        };
        statuses.push((status.to_ascii_uppercase(), content(r, &base, &mut errors)));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Rules {
        path,
        query,
        headers,
        body,
        responses: Responses::ByStatus(statuses),
        comma,
    })
}

/// The index of the entry of `content` for media type `essence`: exact, then
/// `type/*`, then `*/*`.
pub(crate) fn pick<T>(content: &[(String, T)], essence: &str) -> Option<usize> {
    let kind = essence.split('/').next().unwrap_or_default();
    let wildcard = format!("{kind}/*");
    [essence, wildcard.as_str(), "*/*"]
        .iter()
        .find_map(|want| content.iter().position(|(m, _)| m == want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_30_schemas_read_as_30_defines_them() {
        let mut s = json!({
            "type": "string", "nullable": true, "enum": ["a"], "example": "a", "x-internal": 1,
            "properties": {"n": {"type": "number", "minimum": 1, "exclusiveMinimum": true, "maximum": 5, "exclusiveMaximum": false, "readOnly": true}}
        });
        convert_30(&mut s);
        assert_eq!(
            s,
            json!({"type": ["string", "null"], "enum": ["a", null],
                   "properties": {"n": {"type": "number", "exclusiveMinimum": 1, "maximum": 5}}})
        );
    }

    #[test]
    fn templates_match_whole_segments_and_literals_win() {
        let t = |p: &str| PathTemplate {
            segments: p
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                .collect(),
            ops: Vec::new(),
            params: p
                .split('/')
                .filter(|s| !s.is_empty())
                .enumerate()
                .filter(|(_, s)| s.starts_with('{'))
                .map(|(i, s)| (i, s.trim_matches(['{', '}']).to_string()))
                .collect(),
        };
        let by_id = t("/pets/{id}");
        let mine = t("/pets/mine");
        assert_eq!(by_id.matches(&["pets", "a%20b"]).unwrap()["id"], "a b");
        assert!(
            by_id.matches(&["pets", ""]).is_none(),
            "a template matches a non-empty segment"
        );
        assert!(by_id.matches(&["pets", "1", "x"]).is_none());
        assert!(mine.beats(&by_id) && !by_id.beats(&mine));
    }

    #[test]
    fn media_types_pick_exact_then_type_wildcard_then_any() {
        let c = vec![
            ("*/*".to_string(), 1),
            ("text/*".to_string(), 2),
            ("application/json".to_string(), 3),
        ];
        assert_eq!(pick(&c, "application/json").map(|i| c[i].1), Some(3));
        assert_eq!(pick(&c, "text/csv").map(|i| c[i].1), Some(2));
        assert_eq!(pick(&c, "image/png").map(|i| c[i].1), Some(1));
        assert!(pick(&c[2..], "text/csv").is_none());
    }
}
