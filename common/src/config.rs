//! Strict TOML config loading.
//!
//! Every error names the file, the line and column, and (where it can be told) the dotted
//! path of the field, so an operator can fix a config without reading the source.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config that could not be read, parsed or validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file the config came from.
    pub path: PathBuf,
    /// 1-based line and column of the offending text, when known.
    pub position: Option<(usize, usize)>,
    /// Dotted path of the field, e.g. `bridge.max_series`, when known.
    pub field: Option<String>,
    /// What is wrong, in lowercase.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigError {
    /// An error about the file as a whole (it can't be read, a rule spans several fields).
    pub fn whole_file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            position: None,
            field: None,
            message: message.into(),
        }
    }

    /// An error at a byte span of `src`; the field is derived from the span when not given.
    pub fn at(
        path: &Path,
        src: &str,
        span: Range<usize>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        let field = field
            .map(str::to_owned)
            .or_else(|| field_at(src, span.start));
        Self {
            path: path.to_path_buf(),
            position: Some(line_col(src, span.start)),
            field,
            message: message.into(),
        }
    }
}

/// Reads and parses a TOML config file into `T`; unknown keys are errors when `T` says so.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<(T, String), ConfigError> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::whole_file(path, format!("cannot read file: {e}")))?;
    let value = from_toml(&src, path)?;
    Ok((value, src))
}

/// Parses TOML text into `T`, mapping the error to a [`ConfigError`] at the right place.
pub fn from_toml<T: DeserializeOwned>(src: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(src).map_err(|e| {
        let message = e.message().trim_end_matches('.').to_owned();
        match e.span() {
            Some(span) => ConfigError::at(path, src, span, None, message),
            None => ConfigError::whole_file(path, message),
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// The dotted key path in effect at byte `offset`: the last `[table]` header before it plus
/// the key on its line. A best-effort reading for messages; it never fails.
pub fn field_at(src: &str, offset: usize) -> Option<String> {
    let offset = offset.min(src.len());
    let before = src.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = src
        .get(offset..)
        .and_then(|s| s.find('\n'))
        .map_or(src.len(), |i| offset + i);
    let line = src.get(line_start..line_end)?.trim();
    let table = before
        .get(..line_start)?
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        });
    if line.starts_with('[') {
        let header = line
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
            .trim();
        return (!header.is_empty()).then(|| header.to_owned());
    }
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && line.contains('='));
    match (table, key) {
        (Some(t), Some(k)) if !t.is_empty() => Some(format!("{t}.{}", k.trim_matches('"'))),
        (_, Some(k)) => Some(k.trim_matches('"').to_owned()),
        (Some(t), None) if !t.is_empty() => Some(t),
        _ => None,
    }
}

/// A YAML parser's message without its `error: line N column M:` prefix, for a
/// [`ConfigError`] that reports the position itself.
pub fn yaml_message(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((position, message)) if position.contains("column") => message.to_owned(),
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        version: u32,
        bridge: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        max_series: u64,
        #[serde(default)]
        name: String,
    }

    fn err(src: &str) -> String {
        from_toml::<Doc>(src, Path::new("pipeline.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_key_names_file_line_and_field() {
        let e = err("version = 1\n[bridge]\nmax_series = 5\nmax_seriez = 6\n");
        assert!(
            e.starts_with("pipeline.toml:4:1: field `bridge.max_seriez`: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = err("version = 1\n[bridge]\nmax_series = \"many\"\n");
        assert!(
            e.starts_with("pipeline.toml:3:14: field `bridge.max_series`: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let e = err("version = 1\n[bridge\n");
        assert!(e.starts_with("pipeline.toml:2:"), "{e}");
    }

    #[test]
    fn missing_file_is_an_error_not_a_panic() {
        let e = load::<Doc>(Path::new("/nonexistent/pipeline.toml")).unwrap_err();
        assert!(e.to_string().contains("cannot read file"));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé=x", 7), (2, 4));
        assert_eq!(line_col("", 10), (1, 1));
    }
}
