//! `request_body` and `response_body`: edit JSON bodies on their way through
//! (`transform.md` §3.2 to §3.6).
//!
//! # Config
//!
//! ```toml
//! [routes.orders.policies.request_body]
//! keep   = ["/id", "/items/*/sku"]          # allow-list; default [] = keep everything
//! remove = ["/debug", "/items/*/internal"]  # default []
//! rename = { "/customer/id" = "/customer_id" }   # FROM = TO
//! set    = { "/meta/consumer" = "${consumer}", "/version" = 2 }
//! add    = { "/tags" = [] }                 # like set, only where absent
//! content_types = ["application/json", "application/*+json"]   # the default
//! strict = false                            # true: a body of another type is 415
//! on_error = "reject"                       # reject (400) | pass (forward unmodified)
//! max_body = "1MiB"                         # at most "64MiB"; larger bodies get 413
//! max_depth = 64                            # 1..=128
//!
//! [routes.orders.policies.response_body]
//! remove = ["/internal"]                    # the same five operations
//! set    = { "/request_id" = "${request_id}" }
//! etag = "remove"                           # remove | weaken
//! max_body = "1MiB"                         # larger responses pass unmodified
//! ```
//!
//! The operations run in the fixed order keep → remove → rename → set → add on bodies
//! that are valid JSON under the strict rules of [`crate::json`]. A body the operations
//! leave unchanged is forwarded byte for byte; one that cannot be transformed whole is
//! forwarded as it came, never cut.

mod request;
mod response;

pub use request::{RequestBody, RequestBodyConfig};
pub use response::{ResponseBody, ResponseBodyConfig};

use indexmap::IndexMap;

use crate::compress::MediaPattern;
use crate::json::{Edit, Edits, Pointer, Value};
use crate::media::MediaType;
use crate::policy::template::{Facts, TemplateValue};
use crate::policy::{BuildCtx, BuildError, CounterVec};
use crate::units::ConfigSize;

/// The largest `max_body` a body policy takes.
pub(crate) const MAX_BODY: u64 = 64 << 20;

/// The default `max_body`.
pub(crate) const DEFAULT_BODY: u64 = 1 << 20;

/// The operations as written in a policy table.
pub(crate) struct OpsFile<'a> {
    pub(crate) keep: &'a [String],
    pub(crate) remove: &'a [String],
    pub(crate) rename: &'a IndexMap<String, String>,
    pub(crate) set: &'a IndexMap<String, toml::Value>,
    pub(crate) add: &'a IndexMap<String, toml::Value>,
}

/// The operations, checked, with their values' templates.
#[derive(Debug)]
pub(crate) struct Ops {
    edits: Edits,
    set: Vec<TemplateValue>,
    add: Vec<TemplateValue>,
}

/// The values of `set` and `add` for one request.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    set: Vec<Value>,
    add: Vec<Value>,
}

/// A pointer of the table, at its key path.
fn pointer(at: &str, text: &str, errors: &mut Vec<BuildError>) -> Option<Pointer> {
    Pointer::parse(text)
        .map_err(|e| errors.push(BuildError::field(at, e.to_string())))
        .ok()
}

/// The key path of a map entry (`set."/a"`).
fn entry(map: &str, key: &str) -> String {
    format!("{map}.{key:?}")
}

impl Ops {
    /// Checks the operations (`transform.md` §4), collecting every error.
    pub(crate) fn build(
        file: OpsFile<'_>,
        cx: &BuildCtx<'_>,
        errors: &mut Vec<BuildError>,
    ) -> Self {
        let mut edits = Vec::new();
        let mut keep = Vec::new();
        for (i, k) in file.keep.iter().enumerate() {
            let at = format!("keep[{i}]");
            let Some(p) = pointer(&at, k, errors) else {
                continue;
            };
            if p.segments().iter().any(|s| s.index().is_some()) {
                errors.push(BuildError::field(
                    at,
                    format!("JSON Pointer {k:?}: numeric segments are not allowed in keep"),
                ));
                continue;
            }
            keep.push(p);
        }
        if !keep.is_empty() {
            edits.push(Edit::Keep(keep));
        }
        // every pointer a value lands on, for the overlap checks
        let mut targets: Vec<(String, &'static str, Pointer)> = Vec::new();
        for (i, r) in file.remove.iter().enumerate() {
            let at = format!("remove[{i}]");
            if let Some(p) = pointer(&at, r, errors) {
                targets.push((at, "remove", p.clone()));
                edits.push(Edit::Remove(p));
            }
        }
        for (from, to) in file.rename {
            let at = entry("rename", from);
            let (Some(f), Some(t)) = (pointer(&at, from, errors), pointer(&at, to, errors)) else {
                continue;
            };
            if f.starts_with(&t) || t.starts_with(&f) {
                errors.push(BuildError::field(
                    at,
                    format!("rename {from:?} = {to:?}: FROM and TO must differ and neither may contain the other"),
                ));
                continue;
            }
            let last_star = |p: &Pointer| p.segments().iter().rposition(|s| s.is_star());
            let aligned = match (last_star(&f), last_star(&t)) {
                (None, None) => true,
                (Some(a), Some(b)) => a == b && f.segments()[..=a] == t.segments()[..=b],
                _ => false,
            };
            if !aligned {
                errors.push(BuildError::field(
                    at,
                    format!("rename {from:?} = {to:?}: \"*\" must be in the same place, after the same segments, in FROM and TO"),
                ));
                continue;
            }
            targets.push((entry("rename", from), "rename", t.clone()));
            edits.push(Edit::Rename(f, t));
        }
        let params = cx.route_path_params();
        let mut values =
            |map: &str,
             entries: &IndexMap<String, toml::Value>,
             edits: &mut Vec<Edit>,
             targets: &mut Vec<(String, &'static str, Pointer)>| {
                let mut out = Vec::new();
                for (p, v) in entries {
                    let at = entry(map, p);
                    let Some(ptr) = pointer(&at, p, errors) else {
                        continue;
                    };
                    let value = match TemplateValue::from_toml(v) {
                        Ok(value) => value,
                        Err(e) => {
                            errors.push(BuildError::field(at, e.to_string()));
                            continue;
                        }
                    };
                    if let Some(known) = params {
                        for name in value.params() {
                            if !known.iter().any(|k| k == name) {
                                errors.push(BuildError::field(
                                at.clone(),
                                format!("template name \"param.{name}\": no path of this route has {{{name}}}"),
                            ));
                            }
                        }
                    }
                    targets.push((at, if map == "set" { "set" } else { "add" }, ptr.clone()));
                    edits.push(if map == "set" {
                        Edit::Set(ptr)
                    } else {
                        Edit::Add(ptr)
                    });
                    out.push(value);
                }
                out
            };
        let set = values("set", file.set, &mut edits, &mut targets);
        let add = values("add", file.add, &mut edits, &mut targets);
        for (i, (at, op, p)) in targets.iter().enumerate() {
            for (other_at, other_op, q) in &targets[..i] {
                let placing = |o: &str| o == "set" || o == "add";
                let clash = if p == q {
                    op != other_op || *op != "remove"
                } else {
                    placing(op) && placing(other_op) && (p.starts_with(q) || q.starts_with(p))
                };
                if clash {
                    errors.push(BuildError::field(
                        at.clone(),
                        format!(
                            "JSON Pointer {:?} overlaps {other_at} ({:?})",
                            p.as_str(),
                            q.as_str()
                        ),
                    ));
                }
            }
        }
        Self {
            edits: Edits::new(edits),
            set,
            add,
        }
    }

    /// The values of `set` and `add` for the request of `facts`.
    pub(crate) fn render(&self, facts: Facts<'_>) -> Rendered {
        Rendered {
            set: self.set.iter().map(|v| v.render(facts)).collect(),
            add: self.add.iter().map(|v| v.render(facts)).collect(),
        }
    }

    /// Applies the operations; true when `doc` changed.
    pub(crate) fn apply(&self, doc: &mut Value, values: &Rendered) -> bool {
        self.edits.apply(doc, &values.set, &values.add)
    }
}

/// What both policies read besides the operations.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) types: Vec<MediaPattern>,
    pub(crate) max_body: usize,
    pub(crate) max_depth: usize,
}

impl Limits {
    /// Checks `content_types`, `max_body` and `max_depth`, collecting every error.
    pub(crate) fn build(
        content_types: Option<&[String]>,
        max_body: Option<ConfigSize>,
        max_depth: Option<i64>,
        errors: &mut Vec<BuildError>,
    ) -> Self {
        let default = [
            "application/json".to_string(),
            "application/*+json".to_string(),
        ];
        let mut types = Vec::new();
        for (i, t) in content_types.unwrap_or(&default).iter().enumerate() {
            match MediaPattern::parse(t).filter(|_| t.trim() != "*/*") {
                Some(p) => types.push(p),
                None => errors.push(BuildError::field(
                    format!("content_types[{i}]"),
                    format!("malformed media type {t:?} (type/subtype, type/* or type/*+suffix; not */*)"),
                )),
            }
        }
        Self {
            types,
            max_body: max_body_of(max_body, errors),
            max_depth: max_depth_of(max_depth, errors),
        }
    }

    /// Whether a head with these headers carries a JSON candidate (§3.2): its media
    /// type matches, its charset is absent or UTF-8.
    pub(crate) fn matches_type(&self, headers: &http::HeaderMap) -> bool {
        MediaType::of(headers)
            .is_some_and(|m| m.is_utf8() && self.types.iter().any(|p| p.matches(&m.essence)))
    }
}

/// The 413 of a request whose `Content-Length` says its body is over `max_body` (a body
/// policy refuses it before reading a byte).
pub(crate) fn declared_over(req: &http::HeaderMap, max_body: usize) -> Option<crate::reply::Reply> {
    crate::media::content_length(req)
        .filter(|&n| n > max_body)
        .map(|_| {
            crate::reply::Reply::refuse_with(
                crate::reply::ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {max_body} bytes"),
            )
        })
}

/// `max_body`: 1 byte to 64 MiB, default 1 MiB.
pub(crate) fn max_body_of(v: Option<ConfigSize>, errors: &mut Vec<BuildError>) -> usize {
    let n = v.map_or(DEFAULT_BODY, |s| s.bytes());
    if n == 0 || n > MAX_BODY {
        errors.push(BuildError::field(
            "max_body",
            format!("max_body {n} is out of range (1 byte to \"64MiB\")"),
        ));
    }
    usize::try_from(n.min(MAX_BODY)).unwrap_or(usize::MAX)
}

/// `max_depth`: 1..=128, default 64.
pub(crate) fn max_depth_of(v: Option<i64>, errors: &mut Vec<BuildError>) -> usize {
    let n = v.unwrap_or(64);
    if !(1..=128).contains(&n) {
        errors.push(BuildError::field(
            "max_depth",
            format!("max_depth {n} is out of range (1..=128)"),
        ));
    }
    usize::try_from(n.clamp(1, 128)).unwrap_or(64)
}

/// `tollgate_body_transforms_total`.
pub(crate) fn transforms(cx: &BuildCtx<'_>) -> CounterVec {
    cx.metrics().counter(
        "tollgate_body_transforms_total",
        "Bodies seen by request_body and response_body, by outcome",
        &["route", "direction", "outcome"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(table: &str) -> Vec<String> {
        let file: RequestBodyConfig = toml::from_str(table).unwrap();
        use crate::policy::PolicyConfig;
        match file.build(&BuildCtx::new(std::path::Path::new("."), "p")) {
            Ok(_) => Vec::new(),
            Err(e) => e.each().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_error_of_a_table_is_reported() {
        let errors = check(
            r#"
            keep = ["/a/0", "b"]
            remove = ["/x", "/items/-"]
            rename = { "/r" = "/r/s", "/i/*/a" = "/j/*/a", "/m" = "/n" }
            set = { "/x" = 1, "/s" = "${consumr}", "/d" = 1979-05-27, "/n" = { a = "${}" } }
            add = { "/x/y" = [], "/n" = 1, "/f" = nan }
            content_types = ["application/json", "*/*", "json"]
            max_body = 0
            max_depth = 129
            "#,
        );
        let want = [
            "keep[0]: JSON Pointer \"/a/0\": numeric segments are not allowed in keep",
            "keep[1]: malformed JSON Pointer \"b\" (must start with \"/\")",
            "remove[1]: JSON Pointer \"/items/-\": the \"-\" segment is not allowed",
            "rename.\"/r\": rename \"/r\" = \"/r/s\": FROM and TO must differ and neither may contain the other",
            "rename.\"/i/*/a\": rename \"/i/*/a\" = \"/j/*/a\": \"*\" must be in the same place, after the same segments, in FROM and TO",
            "set.\"/s\": unknown template name \"consumr\" in \"${consumr}\"",
            "set.\"/d\": the date/time 1979-05-27 has no JSON form (write it as a string)",
            "set.\"/n\": empty template name \"\" in \"${}\"",
            "add.\"/f\": the float NaN has no JSON form (inf and nan are not allowed)",
            "set.\"/x\": JSON Pointer \"/x\" overlaps remove[0] (\"/x\")",
            "add.\"/x/y\": JSON Pointer \"/x/y\" overlaps set.\"/x\" (\"/x\")",
            "content_types[1]: malformed media type \"*/*\" (type/subtype, type/* or type/*+suffix; not */*)",
            "content_types[2]: malformed media type \"json\" (type/subtype, type/* or type/*+suffix; not */*)",
            "max_body: max_body 0 is out of range (1 byte to \"64MiB\")",
            "max_depth: max_depth 129 is out of range (1..=128)",
        ];
        for w in want {
            assert!(errors.iter().any(|e| e == w), "missing {w}\nin {errors:#?}");
        }
    }

    #[test]
    fn a_clean_table_builds() {
        assert!(check(
            r#"remove = ["/a", "/a"]
            set = { "/b/c" = "${header.x-tag}", "/d" = 1.5 }
            add = { "/e" = [1, 2] }
            rename = { "/items/*/old" = "/items/*/new" }"#
        )
        .is_empty());
    }
}
