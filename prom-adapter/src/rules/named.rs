//! Named queries: one PromQL expression each, refreshed in the background and served as an
//! external metric under its name (`[[adapter.queries]]`, `externalQueries` in the YAML, or a
//! `PrometheusMetric` object). The Datadog Cluster Agent's DatadogMetric, for PromQL.

use std::path::Path;
use std::time::Duration;

use common::config::ConfigError;
use serde::Deserialize;

use super::RuleOrigin;

/// A value older than this is stale unless the query says otherwise.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);
/// How often a query runs unless it says otherwise.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(15);
/// The longest name served: a path segment of the external metrics API.
const MAX_NAME_LEN: usize = 253;

/// A named query as written (TOML keys or the YAML's camelCase ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedQuerySpec {
    /// The external metric's name.
    pub name: String,
    /// The PromQL expression; a vector (one item per series) or a scalar.
    pub query: String,
    /// How old a value may be and still be served (default 2m).
    #[serde(default, alias = "maxAge")]
    pub max_age: Option<common::units::Duration>,
    /// How often the query runs (default 15s, jittered).
    #[serde(default)]
    pub refresh: Option<common::units::Duration>,
    /// Serve it only to HPAs of this namespace; absent: every namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The backend it runs on (default: the first).
    #[serde(default)]
    pub backend: Option<String>,
}

/// Where a named query came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuerySource {
    /// A config file.
    Config(RuleOrigin),
    /// A `PrometheusMetric` object (`namespace/name`), whose status the adapter writes.
    Object {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl QuerySource {
    /// `rules.yaml:12:3 (externalQueries[0])` or `PrometheusMetric default/queue`.
    pub fn describe(&self) -> String {
        match self {
            Self::Config(o) => format!(
                "{}:{}:{} ({})",
                o.path.display(),
                o.position.0,
                o.position.1,
                o.field
            ),
            Self::Object { namespace, name } => format!("PrometheusMetric {namespace}/{name}"),
        }
    }
}

/// A validated named query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedQuery {
    /// The external metric's name.
    pub name: String,
    /// The PromQL.
    pub query: String,
    /// Older values are stale: 503, never the old value.
    pub max_age: Duration,
    /// The refresh period.
    pub refresh: Duration,
    /// The only namespace it is served to, if any.
    pub namespace: Option<String>,
    /// The backend; `None`: the first.
    pub backend: Option<String>,
    /// Where it was written.
    pub source: QuerySource,
}

impl NamedQuery {
    /// Whether an HPA in `namespace` asking for `metric` gets this query.
    pub fn serves(&self, metric: &str, namespace: &str) -> bool {
        self.name == metric && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }

    /// The same question (so a reload keeps its last value): everything but where it was
    /// written.
    pub fn same_question(&self, other: &NamedQuery) -> bool {
        self.name == other.name
            && self.query == other.query
            && self.namespace == other.namespace
            && self.backend == other.backend
    }
}

/// Why a named query is invalid: the field under the query and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `name`, `query`, `maxAge`, …
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// Whether `s` is a DNS-1123 label (a namespace name).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a spec and fills in the defaults.
pub fn compile(spec: NamedQuerySpec, source: QuerySource) -> Result<NamedQuery, Invalid> {
    let name = spec.name.trim();
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("is {} bytes; at most {MAX_NAME_LEN}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(invalid(
            "name",
            format!("`{name}` has {c:?}; use letters, digits, `_`, `.`, `:` and `-`"),
        ));
    }
    if spec.query.trim().is_empty() {
        return Err(invalid("query", "must not be empty"));
    }
    let max_age = spec.max_age.map_or(DEFAULT_MAX_AGE, |d| d.0);
    let refresh = spec.refresh.map_or(DEFAULT_REFRESH, |d| d.0);
    if refresh < Duration::from_millis(100) {
        return Err(invalid("refresh", "must be at least 100ms"));
    }
    if max_age < refresh {
        return Err(invalid(
            "maxAge",
            format!(
                "{}s is shorter than refresh ({}s): every value would go stale before the next one",
                max_age.as_secs_f64(),
                refresh.as_secs_f64()
            ),
        ));
    }
    if let Some(ns) = &spec.namespace
        && !is_dns_label(ns)
    {
        return Err(invalid(
            "namespace",
            format!("`{ns}` is not a namespace name"),
        ));
    }
    Ok(NamedQuery {
        name: name.to_owned(),
        query: spec.query,
        max_age,
        refresh,
        namespace: spec.namespace,
        backend: spec.backend,
        source,
    })
}

/// Compiles a config file's list (`field` is its key there, e.g. `externalQueries`) and
/// refuses two queries served under one name to one namespace, also against `existing`
/// (another file's).
pub fn compile_list(
    specs: Vec<(NamedQuerySpec, (usize, usize))>,
    path: &Path,
    field: &str,
    existing: &[NamedQuery],
) -> Result<Vec<NamedQuery>, ConfigError> {
    let mut out: Vec<NamedQuery> = Vec::with_capacity(specs.len());
    for (i, (spec, position)) in specs.into_iter().enumerate() {
        let origin = RuleOrigin {
            path: path.to_path_buf(),
            position,
            field: format!("{field}[{i}]"),
        };
        let q = compile(spec, QuerySource::Config(origin.clone()))
            .map_err(|e| origin.error(e.field, e.message))?;
        if let Some(twin) = existing
            .iter()
            .chain(&out)
            .find(|o| o.name == q.name && o.namespace == q.namespace)
        {
            return Err(origin.error(
                "name",
                format!(
                    "`{}` is already served by {}",
                    q.name,
                    twin.source.describe()
                ),
            ));
        }
        out.push(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, query: &str) -> NamedQuerySpec {
        NamedQuerySpec {
            name: name.into(),
            query: query.into(),
            max_age: None,
            refresh: None,
            namespace: None,
            backend: None,
        }
    }

    fn source() -> QuerySource {
        QuerySource::Object {
            namespace: "default".into(),
            name: "q".into(),
        }
    }

    #[test]
    fn defaults_are_two_minutes_and_fifteen_seconds() {
        let q = compile(spec("queue_depth", "sum(jobs)"), source()).unwrap();
        assert_eq!(q.max_age, Duration::from_secs(120));
        assert_eq!(q.refresh, Duration::from_secs(15));
        assert!(q.serves("queue_depth", "any"));
        assert!(!q.serves("queue", "any"));
    }

    #[test]
    fn a_namespace_scope_serves_that_namespace_only() {
        let mut s = spec("queue_depth", "sum(jobs)");
        s.namespace = Some("prod".into());
        let q = compile(s, source()).unwrap();
        assert!(q.serves("queue_depth", "prod"));
        assert!(!q.serves("queue_depth", "dev"));
    }

    #[test]
    fn invalid_specs_name_their_field() {
        let cases: Vec<(NamedQuerySpec, &str, &str)> = vec![
            (spec("", "x"), "name", "empty"),
            (spec("a/b", "x"), "name", "'/'"),
            (spec(&"a".repeat(254), "x"), "name", "at most 253"),
            (spec("a", "  "), "query", "empty"),
            (
                NamedQuerySpec {
                    max_age: Some(common::units::Duration(Duration::from_secs(10))),
                    ..spec("a", "x")
                },
                "maxAge",
                "shorter than refresh",
            ),
            (
                NamedQuerySpec {
                    refresh: Some(common::units::Duration(Duration::from_millis(10))),
                    ..spec("a", "x")
                },
                "refresh",
                "at least 100ms",
            ),
            (
                NamedQuerySpec {
                    namespace: Some("Not_A_Namespace".into()),
                    ..spec("a", "x")
                },
                "namespace",
                "not a namespace",
            ),
        ];
        for (s, field, needle) in cases {
            let e = compile(s, source()).unwrap_err();
            assert_eq!(e.field, field, "{e:?}");
            assert!(e.message.contains(needle), "{e:?} lacks {needle}");
        }
    }

    #[test]
    fn a_list_refuses_one_name_twice_in_one_scope() {
        let path = Path::new("rules.yaml");
        let mut scoped = spec("q", "2");
        scoped.namespace = Some("prod".into());
        let ok = compile_list(
            vec![(spec("q", "1"), (2, 3)), (scoped, (5, 3))],
            path,
            "externalQueries",
            &[],
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        let e = compile_list(
            vec![(spec("q", "1"), (2, 3)), (spec("q", "2"), (5, 3))],
            path,
            "externalQueries",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rules.yaml:5:3"), "{e}");
        assert!(e.contains("externalQueries[1].name"), "{e}");
        assert!(e.contains("rules.yaml:2:3 (externalQueries[0])"), "{e}");
    }

    #[test]
    fn same_question_ignores_where_it_was_written() {
        let a = compile(spec("q", "sum(x)"), source()).unwrap();
        let mut b = a.clone();
        b.source = QuerySource::Object {
            namespace: "other".into(),
            name: "z".into(),
        };
        assert!(a.same_question(&b));
        b.query = "sum(y)".into();
        assert!(!a.same_question(&b));
    }
}
