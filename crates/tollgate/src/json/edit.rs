//! The five operations of `request_body` and `response_body` (`transform.md` §3.4),
//! applied in their fixed order: keep → remove → rename → set → add.

use std::collections::HashMap;

use super::{Map, Pointer, Segment, Value};

/// The operations of one policy, checked and ready to apply.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    keep: Option<Keep>,
    remove: Vec<Pointer>,
    rename: Vec<(Pointer, Pointer)>,
    set: Vec<Pointer>,
    add: Vec<Pointer>,
}

/// One operation, for [`Edits::new`].
#[derive(Debug, Clone)]
pub enum Edit {
    /// Reduce the document to what these pointers reach (all `keep` entries together).
    Keep(Vec<Pointer>),
    /// Remove what the pointer reaches.
    Remove(Pointer),
    /// Move what FROM reaches to TO.
    Rename(Pointer, Pointer),
    /// Place the `n`th set value at the pointer.
    Set(Pointer),
    /// Place the `n`th add value at the pointer, where nothing is.
    Add(Pointer),
}

/// The pointers of `keep` as a tree of segments.
#[derive(Debug, Clone, Default)]
struct Keep {
    /// The value here is kept whole.
    whole: bool,
    next: HashMap<String, Keep>,
}

impl Edits {
    /// The operations, in any order (they apply in the fixed order; `remove`, `rename`,
    /// `set` and `add` entries among themselves in the order given). Pointers are
    /// assumed checked (`keep` without numeric segments, rename stars aligned).
    pub fn new(edits: impl IntoIterator<Item = Edit>) -> Self {
        let mut out = Self::default();
        for e in edits {
            match e {
                Edit::Keep(ps) => {
                    let keep = out.keep.get_or_insert_with(Keep::default);
                    for p in ps {
                        let mut node = &mut *keep;
                        for s in p.segments() {
                            node = node.next.entry(s.as_str().to_string()).or_default();
                        }
                        node.whole = true;
                    }
                }
                Edit::Remove(p) => out.remove.push(p),
                Edit::Rename(from, to) => out.rename.push((from, to)),
                Edit::Set(p) => out.set.push(p),
                Edit::Add(p) => out.add.push(p),
            }
        }
        out
    }

    /// Applies the operations to `doc`, `set[i]` and `add[i]` being the values of the
    /// `i`th set and add entries; true when the document changed.
    pub fn apply(&self, doc: &mut Value, set: &[Value], add: &[Value]) -> bool {
        let mut changed = false;
        if let Some(keep) = &self.keep {
            if matches!(doc, Value::Object(_) | Value::Array(_)) && !reduce(doc, keep, &mut changed)
            {
                // the root is always reached: an array met by a member name keeps nothing
                *doc = Value::Array(Vec::new());
                changed = true;
            }
        }
        for p in &self.remove {
            let (last, parents) = split(p);
            each(doc, parents, &mut |parent| {
                changed |= remove_at(parent, last).is_some()
            });
        }
        for (from, to) in &self.rename {
            // the part up to the last `*`, the same in both (checked)
            let common = from
                .segments()
                .iter()
                .rposition(Segment::is_star)
                .map_or(0, |i| i + 1);
            let prefix = &from.segments()[..common];
            let (from, to) = (&from.segments()[common..], &to.segments()[common..]);
            each(doc, prefix, &mut |v| changed |= rename(v, from, to));
        }
        for (p, value) in self.set.iter().zip(set) {
            changed |= place(doc, p.segments(), value, false);
        }
        for (p, value) in self.add.iter().zip(add) {
            changed |= place(doc, p.segments(), value, true);
        }
        changed
    }
}

fn split(p: &Pointer) -> (&Segment, &[Segment]) {
    let (last, parents) = p.segments().split_last().expect("pointers are not empty");
    (last, parents)
}

/// Reduces `v` to what `node` reaches; false when `v` itself is dropped.
fn reduce(v: &mut Value, node: &Keep, changed: &mut bool) -> bool {
    if node.whole {
        return true;
    }
    match v {
        Value::Object(members) => {
            let before = members.len();
            members.retain(|name, child| match node.next.get(name) {
                Some(n) => reduce(child, n, changed),
                None => false,
            });
            *changed |= members.len() != before;
            true
        }
        Value::Array(items) => match node.next.get("*") {
            Some(n) => {
                let before = items.len();
                items.retain_mut(|item| reduce(item, n, changed));
                *changed |= items.len() != before;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// Calls `f` on every value `segs` reaches from `v` (`*`: every element of an array).
fn each(v: &mut Value, segs: &[Segment], f: &mut dyn FnMut(&mut Value)) {
    let Some((seg, rest)) = segs.split_first() else {
        f(v);
        return;
    };
    match v {
        Value::Object(members) => {
            if let Some(child) = members.get_mut(seg.as_str()) {
                each(child, rest, f);
            }
        }
        Value::Array(items) if seg.is_star() => {
            for item in items {
                each(item, rest, f);
            }
        }
        Value::Array(items) => {
            if let Some(item) = seg.index().and_then(|i| items.get_mut(i)) {
                each(item, rest, f);
            }
        }
        _ => {}
    }
}

/// Removes what `seg` names in `parent`: a member, an element, or (`*`) every element.
fn remove_at(parent: &mut Value, seg: &Segment) -> Option<Value> {
    match parent {
        Value::Object(members) => members.shift_remove(seg.as_str()),
        Value::Array(items) if seg.is_star() => {
            (!items.is_empty()).then(|| Value::Array(std::mem::take(items)))
        }
        Value::Array(items) => {
            let i = seg.index().filter(|&i| i < items.len())?;
            Some(items.remove(i))
        }
        _ => None,
    }
}

/// Moves the value at `from` to `to` (both relative to `v`, without `*`).
fn rename(v: &mut Value, from: &[Segment], to: &[Segment]) -> bool {
    let Some((last, parents)) = from.split_last() else {
        return false;
    };
    if !can_place(v, to) {
        // moving it would lose it: TO's parent cannot hold it
        return false;
    }
    let mut taken = None;
    each(v, parents, &mut |parent| taken = remove_at(parent, last));
    match taken {
        Some(value) => {
            place(v, to, &value, false);
            true
        }
        None => false,
    }
}

/// Whether a value can be placed at `segs` (no `*`): every parent exists or can be
/// created as an object, and the last one can hold the last segment.
fn can_place(v: &Value, segs: &[Segment]) -> bool {
    let Some((seg, rest)) = segs.split_first() else {
        return false;
    };
    match v {
        Value::Object(members) => match members.get(seg.as_str()) {
            Some(child) if !rest.is_empty() => can_place(child, rest),
            _ => true,
        },
        Value::Array(items) => match seg.index().and_then(|i| items.get(i)) {
            Some(item) if !rest.is_empty() => can_place(item, rest),
            Some(_) => true,
            None => false,
        },
        _ => false,
    }
}

/// Places `value` at `segs` (creating missing parent objects; through `*` in every
/// element); with `only_absent`, only where nothing is. True when something changed.
fn place(v: &mut Value, segs: &[Segment], value: &Value, only_absent: bool) -> bool {
    let Some((seg, rest)) = segs.split_first() else {
        return false;
    };
    match v {
        Value::Object(members) if rest.is_empty() => match members.get_mut(seg.as_str()) {
            Some(_) if only_absent => false,
            Some(old) if old == value => false,
            Some(old) => {
                *old = value.clone();
                true
            }
            None => {
                members.insert(seg.as_str().to_string(), value.clone());
                true
            }
        },
        Value::Object(members) => {
            let created = !members.contains_key(seg.as_str());
            let child = members
                .entry(seg.as_str().to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            place(child, rest, value, only_absent) || created
        }
        Value::Array(items) => {
            let mut changed = false;
            let targets: Box<dyn Iterator<Item = &mut Value>> = if seg.is_star() {
                Box::new(items.iter_mut())
            } else {
                match seg.index().and_then(|i| items.get_mut(i)) {
                    Some(item) => Box::new(std::iter::once(item)),
                    None => Box::new(std::iter::empty()),
                }
            };
            for item in targets {
                if rest.is_empty() {
                    if !only_absent && item != value {
                        *item = value.clone();
                        changed = true;
                    }
                } else {
                    changed |= place(item, rest, value, only_absent);
                }
            }
            changed
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn p(s: &str) -> Pointer {
        Pointer::parse(s).unwrap()
    }

    fn run(doc: &str, edits: Vec<Edit>, set: &[&str], add: &[&str]) -> (String, bool) {
        let mut v = parse(doc.as_bytes(), 64).unwrap();
        let vals = |xs: &[&str]| -> Vec<Value> {
            xs.iter()
                .map(|x| parse(x.as_bytes(), 64).unwrap())
                .collect()
        };
        let changed = Edits::new(edits).apply(&mut v, &vals(set), &vals(add));
        (String::from_utf8(v.write()).unwrap(), changed)
    }

    #[test]
    fn keep_reduces_to_what_the_pointers_reach() {
        let doc = r#"{"id":1,"secret":2,"items":[{"sku":"a","cost":3},{"cost":4},5],"meta":{"x":1},"list":[1,2],"s":"x"}"#;
        let (out, changed) = run(
            doc,
            vec![Edit::Keep(vec![
                p("/id"),
                p("/items/*/sku"),
                p("/meta/none"),
                p("/list/a"),
                p("/s/deeper"),
            ])],
            &[],
            &[],
        );
        assert!(changed);
        // a scalar element before the end is dropped; an object reached stays, even empty;
        // an array met by a member name and a scalar before the end are dropped
        assert_eq!(out, r#"{"id":1,"items":[{"sku":"a"},{}],"meta":{}}"#);
        let (out, _) = run("[1,{\"a\":1}]", vec![Edit::Keep(vec![p("/a")])], &[], &[]);
        assert_eq!(out, "[]", "a root array met by a member name keeps nothing");
        let (out, changed) = run("\"x\"", vec![Edit::Keep(vec![p("/a")])], &[], &[]);
        assert_eq!(
            (out.as_str(), changed),
            ("\"x\"", false),
            "a scalar root stays"
        );
        let (out, _) = run(
            r#"{"*":1,"b":2}"#,
            vec![Edit::Keep(vec![p("/*")])],
            &[],
            &[],
        );
        assert_eq!(out, r#"{"*":1}"#, "on an object, * is the member named *");
    }

    #[test]
    fn remove_applies_in_order_and_elements_move_down() {
        let doc = r#"{"a":[10,11,12],"b":{"c":1},"items":[{"i":1,"k":2},{"k":3}]}"#;
        let (out, changed) = run(
            doc,
            vec![
                Edit::Remove(p("/a/0")),
                Edit::Remove(p("/a/0")),
                Edit::Remove(p("/items/*/k")),
                Edit::Remove(p("/nothing/here")),
                Edit::Remove(p("/b/c/d")),
            ],
            &[],
            &[],
        );
        assert!(changed);
        assert_eq!(out, r#"{"a":[12],"b":{"c":1},"items":[{"i":1},{}]}"#);
        let (out, changed) = run(r#"{"a":1}"#, vec![Edit::Remove(p("/b"))], &[], &[]);
        assert_eq!((out.as_str(), changed), (r#"{"a":1}"#, false));
        let (out, _) = run(r#"{"a":[1,2]}"#, vec![Edit::Remove(p("/a/*"))], &[], &[]);
        assert_eq!(out, r#"{"a":[]}"#);
    }

    #[test]
    fn rename_moves_creating_parents_and_works_inside_elements() {
        let doc = r#"{"customer":{"id":7,"n":1},"customer_id":0,"items":[{"old":1},{"x":2}]}"#;
        let (out, _) = run(
            doc,
            vec![
                Edit::Rename(p("/customer/id"), p("/customer_id")),
                Edit::Rename(p("/items/*/old"), p("/items/*/new/deep")),
                Edit::Rename(p("/absent"), p("/customer")),
            ],
            &[],
            &[],
        );
        // replaces in place; the absent FROM leaves TO untouched
        assert_eq!(
            out,
            r#"{"customer":{"n":1},"customer_id":7,"items":[{"new":{"deep":1}},{"x":2}]}"#
        );
        let (out, changed) = run(
            r#"{"a":1,"s":"x"}"#,
            vec![Edit::Rename(p("/a"), p("/s/t"))],
            &[],
            &[],
        );
        assert_eq!(
            (out.as_str(), changed),
            (r#"{"a":1,"s":"x"}"#, false),
            "a value is never lost"
        );
    }

    #[test]
    fn set_and_add_place_values_appending_new_members() {
        let doc = r#"{"version":1,"meta":null,"tags":["a"],"s":"x","items":[{"a":1},{"b":2}],"empty":[]}"#;
        let (out, changed) = run(
            doc,
            vec![
                Edit::Set(p("/new/deep")),
                Edit::Set(p("/version")),
                Edit::Set(p("/s/under")),
                Edit::Set(p("/items/*/a")),
                Edit::Set(p("/tags/5")),
                Edit::Set(p("/empty/*/x")),
                Edit::Add(p("/meta")),
                Edit::Add(p("/tags")),
                Edit::Add(p("/items/*/b")),
                Edit::Add(p("/added")),
            ],
            &["1", "2", "3", "0", "9", "1"],
            &["{}", "[]", "true", "\"z\""],
        );
        assert!(changed);
        // null counts as present for add; a scalar parent, a missing index and an empty
        // array skip their placement; new members go at the end, in order
        assert_eq!(
            out,
            r#"{"version":2,"meta":null,"tags":["a"],"s":"x","items":[{"a":0,"b":true},{"b":2,"a":0}],"empty":[],"new":{"deep":1},"added":"z"}"#
        );
        let (out, changed) = run(r#"{"v":2}"#, vec![Edit::Set(p("/v"))], &["2"], &[]);
        assert_eq!(
            (out.as_str(), changed),
            (r#"{"v":2}"#, false),
            "same value: no change"
        );
    }
}
