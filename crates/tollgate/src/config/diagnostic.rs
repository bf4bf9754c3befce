//! Configuration errors with file, line, column and dotted key path.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem found in a configuration file.
///
/// Displays as `FILE:LINE:COL: KEY.PATH: MESSAGE`, e.g.
/// `gateway.toml:14:12: routes.orders.upstream: unknown upstream "order" (known: orders, users)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in, as given by the caller.
    pub file: String,
    /// 1-based line, when the error has a location.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the error has a location.
    pub column: Option<usize>,
    /// Dotted key path (`routes.orders.upstream`); empty for file-level errors.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one configuration file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors, in file order.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors while a file is checked, turning byte spans into line:col.
pub(crate) struct Diagnostics<'a> {
    file: &'a str,
    src: &'a str,
    root: Option<&'a DeTable<'a>>,
    errors: Vec<(usize, ConfigError)>,
}

impl<'a> Diagnostics<'a> {
    pub(crate) fn new(file: &'a str, src: &'a str) -> Self {
        Self {
            file,
            src,
            root: None,
            errors: Vec::new(),
        }
    }

    pub(crate) fn set_root(&mut self, root: &'a DeTable<'a>) {
        self.root = Some(root);
    }

    /// `FILE:LINE:COL` of `span`.
    pub(crate) fn place(&self, span: &Range<usize>) -> String {
        let (line, column) = line_col(self.src, span.start);
        format!("{}:{line}:{column}", self.file)
    }

    /// An error at `span`, with an explicit key path.
    pub(crate) fn at(
        &mut self,
        span: Range<usize>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = line_col(self.src, span.start);
        self.errors.push((
            span.start,
            ConfigError {
                file: self.file.to_string(),
                line: Some(line),
                column: Some(column),
                path: path.into(),
                message: message.into(),
            },
        ));
    }

    /// An error from the TOML parser or from serde, whose key path is found from its span.
    pub(crate) fn toml(&mut self, err: &toml::de::Error, fallback_path: &str) {
        let msg = err.message().trim().to_string();
        match err.span() {
            Some(span) => {
                let path = self
                    .root
                    .and_then(|r| path_at(r, span.start))
                    .filter(|p| p.len() >= fallback_path.len())
                    .unwrap_or_else(|| fallback_path.to_string());
                self.at(span, path, msg)
            }
            None => self.errors.push((
                usize::MAX,
                ConfigError {
                    file: self.file.to_string(),
                    line: None,
                    column: None,
                    path: fallback_path.to_string(),
                    message: msg,
                },
            )),
        }
    }

    /// How many errors were reported so far.
    pub(crate) fn len(&self) -> usize {
        self.errors.len()
    }

    /// Ok when nothing was reported.
    pub(crate) fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.into_errors())
        }
    }

    /// The reported errors in file order.
    pub(crate) fn into_errors(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|(pos, _)| *pos);
        self.errors.dedup_by(|a, b| a.1 == b.1);
        ConfigErrors(self.errors.into_iter().map(|(_, e)| e).collect())
    }
}

/// 1-based line and character column of byte `offset` in `src`.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Renders one key of a dotted path, quoting it when it is not a bare TOML key.
pub(crate) fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        path.push_str(key);
    } else {
        path.push_str(&format!("{key:?}"));
    }
}

/// Joins a parent path and one key.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let mut p = parent.to_string();
    push_key(&mut p, key);
    p
}

/// The dotted path of the innermost key or value that contains byte `pos`.
///
/// A table's span covers only its `[header]`, not its contents, so every table is
/// searched; a hit on a key or a leaf value wins over a hit on a table header.
pub(crate) fn path_at(root: &DeTable<'_>, pos: usize) -> Option<String> {
    let mut best = None;
    search_table(root, pos, "", &mut best);
    best
}

fn contains(span: &Range<usize>, pos: usize) -> bool {
    span.start <= pos && pos < span.end.max(span.start + 1)
}

/// Returns true on an exact hit (a key or a leaf value); `best` keeps the last header hit.
fn search_table(table: &DeTable<'_>, pos: usize, prefix: &str, best: &mut Option<String>) -> bool {
    for (k, v) in table.iter() {
        let path = join(prefix, k.get_ref());
        if contains(&k.span(), pos) {
            *best = Some(path);
            return true;
        }
        if search_value(v, pos, path, best) {
            return true;
        }
    }
    false
}

fn search_value(
    v: &Spanned<DeValue<'_>>,
    pos: usize,
    path: String,
    best: &mut Option<String>,
) -> bool {
    match v.get_ref() {
        DeValue::Table(t) => {
            if contains(&v.span(), pos) {
                *best = Some(path.clone());
            }
            search_table(t, pos, &path, best)
        }
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                if search_value(item, pos, format!("{path}[{i}]"), best) {
                    return true;
                }
            }
            if contains(&v.span(), pos) {
                *best = Some(path);
                return true;
            }
            false
        }
        _ => {
            if contains(&v.span(), pos) {
                *best = Some(path);
                return true;
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, src.find('=').unwrap()), (1, 3));
        // 'é' is two bytes but one column
        assert_eq!(line_col(src, src.rfind('=').unwrap()), (2, 4));
    }

    #[test]
    fn path_at_finds_table_headers_and_nested_keys() {
        let src = "[routes.orders]\nupstream = \"x\"\n[routes.orders.policies.a]\nk = 1\n";
        let doc = DeTable::parse(src).unwrap();
        assert_eq!(path_at(doc.get_ref(), 0).as_deref(), Some("routes.orders"));
        let pos = src.find("k =").unwrap();
        assert_eq!(
            path_at(doc.get_ref(), pos).as_deref(),
            Some("routes.orders.policies.a.k")
        );
    }

    #[test]
    fn path_at_finds_innermost_key() {
        let src = "[routes.orders]\nupstream = \"x\"\nmethods = [\"GET\", \"PUT\"]\n";
        let doc = DeTable::parse(src).unwrap();
        let pos = src.find("\"x\"").unwrap();
        assert_eq!(
            path_at(doc.get_ref(), pos).as_deref(),
            Some("routes.orders.upstream")
        );
        let pos = src.find("\"PUT\"").unwrap();
        assert_eq!(
            path_at(doc.get_ref(), pos).as_deref(),
            Some("routes.orders.methods[1]")
        );
    }

    #[test]
    fn display_has_file_line_col_path_message() {
        let e = ConfigError {
            file: "gw.toml".into(),
            line: Some(14),
            column: Some(12),
            path: "routes.orders.upstream".into(),
            message: "unknown upstream \"order\" (known: orders, users)".into(),
        };
        assert_eq!(
            e.to_string(),
            "gw.toml:14:12: routes.orders.upstream: unknown upstream \"order\" (known: orders, users)"
        );
    }
}
