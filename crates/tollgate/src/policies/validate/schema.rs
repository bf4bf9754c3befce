//! JSON Schemas (draft 2020-12) as `validate` uses them: loaded from a file or an inline
//! table, checked at `check` (meta-schema, local `$ref`s only, linear-time patterns),
//! compiled with the `jsonschema` crate, and failures turned into `details` that name
//! the rule and the schema's limit, never the value received.

use std::path::Path;

use serde_json::Value;

/// The 2020-12 meta-schema's URI, the only `$schema` accepted.
const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The most details one location reports (the contract's largest `max_details`).
pub(crate) const MAX_DETAILS: usize = 100;

/// The largest compiled pattern.
const PATTERN_LIMIT: usize = 1 << 20;

/// The formats that are checked; the others are annotations.
const CHECKED_FORMATS: [&str; 8] = [
    "date-time",
    "date",
    "time",
    "email",
    "uuid",
    "ipv4",
    "ipv6",
    "uri",
];

/// A compiled schema, with the document it came from (for coercion, which follows a
/// property's top-level `$ref`).
#[derive(Debug)]
pub(crate) struct Schema {
    pub(crate) doc: Value,
    validator: jsonschema::Validator,
}

/// One failure of a request (or response) against its schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Detail {
    pub(crate) location: &'static str,
    pub(crate) path: String,
    pub(crate) message: String,
}

impl Detail {
    pub(crate) fn new(
        location: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            location,
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::json!({"location": self.location, "path": self.path, "message": self.message})
    }
}

/// Reads a schema value: `.json` files relative to `dir`, or an inline TOML table.
///
/// # Errors
/// The file is missing, unreadable, not `.json` or not JSON (with its line and column).
pub(crate) fn load(dir: &Path, v: &toml::Value) -> Result<(Value, Option<String>), String> {
    match v {
        toml::Value::String(file) => {
            if !file.ends_with(".json") {
                return Err(format!("schema file {file:?} must be a .json file"));
            }
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read schema file {file:?}: {e}"))?;
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{file}:{}:{}: {e}", e.line(), e.column()))?;
            Ok((doc, Some(file.clone())))
        }
        toml::Value::Table(_) => Ok((from_toml(v)?, None)),
        other => Err(format!(
            "a schema is a file name or an inline table, not a {}",
            other.type_str()
        )),
    }
}

/// A TOML value as JSON (a schema written inline).
pub(crate) fn from_toml(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => {
            let n: serde_json::Number = format!("{f:?}")
                .parse()
                .map_err(|_| format!("the float {f} has no JSON form"))?;
            Value::Number(n)
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => return Err(format!("the date/time {d} has no JSON form")),
        toml::Value::Array(a) => Value::Array(a.iter().map(from_toml).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), from_toml(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// `/a~1b` from segments.
pub(crate) fn pointer_push(base: &str, seg: &str) -> String {
    format!("{base}/{}", seg.replace('~', "~0").replace('/', "~1"))
}

/// Every static problem of `doc` as a schema: boolean top, `$schema`, remote `$ref`s,
/// patterns, and the 2020-12 meta-schema. Each is `POINTER: message`, the pointer into
/// `doc` starting at `#`.
pub(crate) fn problems(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if doc.is_boolean() {
        out.push("#: a schema must be an object, not a boolean".into());
        return out;
    }
    if let Some(s) = doc.get("$schema") {
        if s.as_str() != Some(DRAFT) {
            out.push(format!(
                "#/$schema: {s} is not {DRAFT:?} (only draft 2020-12 is supported)"
            ));
        }
    }
    walk(doc, "#", &mut out);
    let meta = jsonschema::draft202012::meta::validator();
    for e in meta.iter_errors(doc) {
        out.push(format!("#{}: {e}", e.instance_path().as_str()));
        if out.len() >= 20 {
            break;
        }
    }
    out
}

/// Remote references and patterns, anywhere in the document.
fn walk(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let here = pointer_push(at, k);
                match (k.as_str(), child) {
                    ("$ref" | "$dynamicRef", Value::String(r)) if !r.starts_with('#') => {
                        out.push(format!("{here}: {r:?} is not a local reference (only \"#…\" references are allowed; nothing is fetched)"));
                    }
                    ("pattern", Value::String(p)) => {
                        if let Err(e) = pattern(p) {
                            out.push(format!("{here}: {e}"));
                        }
                    }
                    ("patternProperties", Value::Object(ps)) => {
                        for p in ps.keys() {
                            if let Err(e) = pattern(p) {
                                out.push(format!("{}: {e}", pointer_push(&here, p)));
                            }
                        }
                    }
                    _ => {}
                }
                walk(child, &here, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Checks a pattern compiles to a linear-time regex within the size limit.
fn pattern(p: &str) -> Result<(), String> {
    let rust = jsonschema_regex::to_rust_regex(p)
        .map_err(|()| format!("pattern {p:?} is not a valid regular expression"))?;
    regex::RegexBuilder::new(&rust)
        .size_limit(PATTERN_LIMIT)
        .build()
        .map(drop)
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => {
                format!("pattern {p:?} compiles to more than 1 MiB")
            }
            _ => format!(
                "pattern {p:?} is not allowed: backreferences and look-around are refused (patterns must run in linear time), as is invalid syntax"
            ),
        })
}

impl Schema {
    /// Compiles a checked schema document.
    ///
    /// # Errors
    /// A reference that does not resolve, or another error of the validator's build.
    pub(crate) fn compile(doc: Value) -> Result<Self, String> {
        let mut options = jsonschema::draft202012::options()
            .with_pattern_options(jsonschema::PatternOptions::regex().size_limit(PATTERN_LIMIT))
            .with_retriever(NoFetch)
            .should_validate_formats(true)
            .should_ignore_unknown_formats(true);
        for f in [
            "hostname",
            "idn-hostname",
            "idn-email",
            "iri",
            "iri-reference",
            "uri-reference",
            "uri-template",
            "json-pointer",
            "relative-json-pointer",
            "regex",
            "duration",
        ] {
            debug_assert!(!CHECKED_FORMATS.contains(&f));
            options = options.with_format(f, |_: &str| true);
        }
        let validator = options.build(&doc).map_err(|e| e.to_string())?;
        Ok(Self { doc, validator })
    }

    /// The failures of `instance`, at most one per place and at most [`MAX_DETAILS`],
    /// in the validator's order.
    pub(crate) fn check(&self, instance: &Value, location: &'static str) -> Vec<Detail> {
        let mut out: Vec<Detail> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in self.validator.iter_errors(instance) {
            if out.len() >= MAX_DETAILS {
                // a hostile body can fail at every element: what is reported is bounded
                break;
            }
            let base = e.instance_path().as_str().to_string();
            use jsonschema::error::ValidationErrorKind as K;
            let mut push = |path: String, message: String| {
                if out.len() < MAX_DETAILS && seen.insert(path.clone()) {
                    out.push(Detail::new(location, path, message));
                }
            };
            match e.kind() {
                K::Required { property } => {
                    let name = property.as_str().unwrap_or_default();
                    push(pointer_push(&base, name), "is required".into());
                }
                K::AdditionalProperties { unexpected }
                | K::UnevaluatedProperties { unexpected } => {
                    for m in unexpected {
                        push(pointer_push(&base, m), "is not allowed".into());
                    }
                }
                kind => push(base, message(kind)),
            }
        }
        out
    }
}

/// What a failed rule says: the rule and the schema's limit, never the value.
fn message(kind: &jsonschema::error::ValidationErrorKind) -> String {
    use jsonschema::error::{TypeKind, ValidationErrorKind as K};
    match kind {
        K::Type { kind } => match kind {
            TypeKind::Single(t) => format!("must be of type {t}"),
            TypeKind::Multiple(ts) => {
                let names: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
                format!("must be of type {}", names.join(" or "))
            }
        },
        K::Minimum { limit } => format!("must be >= {limit}"),
        K::Maximum { limit } => format!("must be <= {limit}"),
        K::ExclusiveMinimum { limit } => format!("must be > {limit}"),
        K::ExclusiveMaximum { limit } => format!("must be < {limit}"),
        K::MinLength { limit } => format!("must be at least {limit} characters long"),
        K::MaxLength { limit } => format!("must be at most {limit} characters long"),
        K::MinItems { limit } => format!("must have at least {limit} items"),
        K::MaxItems { limit } => format!("must have at most {limit} items"),
        K::MinProperties { limit } => format!("must have at least {limit} properties"),
        K::MaxProperties { limit } => format!("must have at most {limit} properties"),
        K::Pattern { pattern } => format!("must match the pattern {pattern:?}"),
        K::Enum { options } => format!("must be one of {options}"),
        K::Constant { expected_value } => format!("must be {expected_value}"),
        K::Format { format } => format!("must be a valid {format}"),
        K::MultipleOf { multiple_of, .. } => format!("must be a multiple of {multiple_of}"),
        K::UniqueItems => "must not have duplicate items".into(),
        K::Contains => "must contain an item matching the contains schema".into(),
        K::AnyOf { .. } => "must match at least one schema of anyOf".into(),
        K::OneOfNotValid { .. } => "must match exactly one schema of oneOf (matches none)".into(),
        K::OneOfMultipleValid { .. } => {
            "must match exactly one schema of oneOf (matches several)".into()
        }
        K::Not { .. } => "must not match the schema of not".into(),
        K::FalseSchema => "is not allowed".into(),
        K::PropertyNames { .. } => "has a property name that does not match propertyNames".into(),
        K::AdditionalItems { limit } => format!("must have at most {limit} items"),
        K::UnevaluatedItems { .. } => "has items that are not allowed".into(),
        _ => "does not match the schema".into(),
    }
}

/// Refuses every remote reference (none should reach it: `check` refuses them).
struct NoFetch;

impl jsonschema::Retrieve for NoFetch {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("{uri} is not fetched: only local references are allowed").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(doc: Value) -> Schema {
        assert_eq!(problems(&doc), Vec::<String>::new());
        Schema::compile(doc).unwrap()
    }

    #[test]
    fn details_name_the_place_and_the_rule_never_the_value() {
        let s = schema(json!({
            "type": "object",
            "required": ["name", "a/b"],
            "properties": {
                "price": {"type": "number", "maximum": 100},
                "tags": {"type": "array", "items": {"enum": ["x", "y"]}},
                "kind": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}
            },
            "additionalProperties": false
        }));
        let instance: Value = serde_json::from_str(
            r#"{"price": 1e400, "tags": ["x", "secret-value"], "kind": "s3cr3t", "extra": 1, "more": 2}"#,
        )
        .unwrap();
        let d = s.check(&instance, "body");
        let got: Vec<(String, String)> = d
            .iter()
            .map(|d| (d.path.clone(), d.message.clone()))
            .collect();
        for want in [
            ("/name", "is required"),
            ("/a~1b", "is required"),
            ("/price", "must be <= 100"),
            ("/tags/1", "must be one of [\"x\",\"y\"]"),
            ("/kind", "must match at least one schema of anyOf"),
            ("/extra", "is not allowed"),
            ("/more", "is not allowed"),
        ] {
            assert!(
                got.iter().any(|(p, m)| p == want.0 && m == want.1),
                "missing {want:?} in {got:?}"
            );
        }
        assert!(!format!("{got:?}").contains("secret") && !format!("{got:?}").contains("s3cr3t"));
        assert_eq!(d.len(), 7, "one entry per place: {got:?}");
    }

    #[test]
    fn numbers_compare_exactly() {
        let s = schema(json!({"maximum": 100, "minimum": 0.1}));
        let big: Value = serde_json::from_str("1e400").unwrap();
        assert_eq!(s.check(&big, "body").len(), 1, "1e400 is above 100");
        let tiny: Value = serde_json::from_str("0.1000000000000000000001").unwrap();
        assert!(s.check(&tiny, "body").is_empty());
        let below: Value = serde_json::from_str("0.0999999999999999999999").unwrap();
        assert_eq!(s.check(&below, "body").len(), 1);
    }

    #[test]
    fn check_refuses_what_the_contract_refuses() {
        let p = |doc: Value| problems(&doc).join("\n");
        assert!(p(json!(true)).contains("not a boolean"));
        assert!(
            p(json!({"$schema": "http://json-schema.org/draft-07/schema#"})).contains("#/$schema")
        );
        assert!(
            p(json!({"properties": {"a": {"$ref": "https://evil.example/x.json"}}})).contains(
                "#/properties/a/$ref: \"https://evil.example/x.json\" is not a local reference"
            )
        );
        assert!(p(json!({"properties": {"price": {"type": "integr"}}}))
            .contains("#/properties/price/type"));
        assert!(p(json!({"pattern": "(a)\\1"})).contains("#/pattern: pattern"));
        assert!(
            p(json!({"patternProperties": {"(?=x)": {}}})).contains("#/patternProperties/(?=x)")
        );
        assert!(p(json!({"pattern": "a{1000}{1000}"})).contains("more than 1 MiB"));
        assert!(
            Schema::compile(json!({"$ref": "#/$defs/missing"})).is_err(),
            "a local reference that does not resolve"
        );
    }

    #[test]
    fn ecma_classes_are_ascii_and_formats_are_the_listed_ones() {
        let s = schema(json!({"properties": {
            "d": {"pattern": "^\\d+$"},
            "f": {"format": "date"},
            "h": {"format": "hostname"}
        }}));
        assert!(s.check(&json!({"d": "12"}), "body").is_empty());
        assert_eq!(
            s.check(&json!({"d": "١٢"}), "body").len(),
            1,
            "Arabic-Indic digits are not \\d"
        );
        assert_eq!(s.check(&json!({"f": "2024-13-01"}), "body").len(), 1);
        assert!(
            s.check(&json!({"h": "not a host!"}), "body").is_empty(),
            "hostname is an annotation"
        );
    }
}
