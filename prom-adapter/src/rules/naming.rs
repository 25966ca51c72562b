//! Series names → metric names: `seriesFilters` and `name: {matches, as}`.

use regex::Regex;

/// A compiled `seriesFilters` entry.
#[derive(Debug, Clone)]
pub enum SeriesFilter {
    /// Keep series whose name matches.
    Is(Regex),
    /// Drop series whose name matches.
    IsNot(Regex),
}

impl SeriesFilter {
    fn keeps(&self, series: &str) -> bool {
        match self {
            Self::Is(re) => re.is_match(series),
            Self::IsNot(re) => !re.is_match(series),
        }
    }
}

/// Why a naming section can't be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamingError {
    /// A regex doesn't compile.
    #[error("{field}: {reason}")]
    Regex {
        /// Which field.
        field: &'static str,
        /// The regex crate's message, first line.
        reason: String,
    },
    /// Two or more capture groups and no `as` to say which to use.
    #[error("name.matches has {0} capture groups: name.as must say how to use them")]
    AmbiguousAs(usize),
    /// A filter entry with both or neither of `is`, `isNot`.
    #[error("seriesFilters entry must have exactly one of `is` and `isNot`")]
    BadFilter,
}

/// Compiles a regex as Go's RE2 syntax reads it (the `regex` crate is RE2-compatible).
pub fn compile(field: &'static str, pattern: &str) -> Result<Regex, NamingError> {
    Regex::new(pattern).map_err(|e| NamingError::Regex {
        field,
        reason: e.to_string().lines().last().unwrap_or("invalid").to_owned(),
    })
}

/// The naming part of a rule: filters plus `matches`/`as`.
#[derive(Debug, Clone)]
pub struct Namer {
    filters: Vec<SeriesFilter>,
    matches: Regex,
    as_: String,
}

impl Namer {
    /// prometheus-adapter's defaults: `matches` `.*`; `as` `$0` without capture groups and
    /// `$1` with one; `matches` also acts as an `is` filter.
    pub fn new(
        filters: Vec<SeriesFilter>,
        matches: Option<&str>,
        as_: Option<&str>,
    ) -> Result<Self, NamingError> {
        let matches = compile(
            "name.matches",
            matches.filter(|m| !m.is_empty()).unwrap_or(".*"),
        )?;
        let as_ = match as_.filter(|a| !a.is_empty()) {
            Some(a) => a.to_owned(),
            None => match matches.captures_len() - 1 {
                0 => "$0".to_owned(),
                1 => "$1".to_owned(),
                n => return Err(NamingError::AmbiguousAs(n)),
            },
        };
        Ok(Self {
            filters,
            matches,
            as_,
        })
    }

    /// The metric name a series is served under, or `None` when the rule doesn't take it.
    pub fn metric_name(&self, series: &str) -> Option<String> {
        if !self.filters.iter().all(|f| f.keeps(series)) {
            return None;
        }
        let caps = self.matches.captures(series)?;
        let mut out = String::new();
        caps.expand(&self.as_, &mut out);
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namer(filters: &[(&str, bool)], matches: Option<&str>, as_: Option<&str>) -> Namer {
        let filters = filters
            .iter()
            .map(|(re, is)| {
                let re = Regex::new(re).unwrap();
                if *is {
                    SeriesFilter::Is(re)
                } else {
                    SeriesFilter::IsNot(re)
                }
            })
            .collect();
        Namer::new(filters, matches, as_).unwrap()
    }

    #[test]
    fn defaults_keep_the_name() {
        let n = namer(&[], None, None);
        assert_eq!(n.metric_name("up").as_deref(), Some("up"));
    }

    #[test]
    fn one_group_defaults_to_dollar_one() {
        let n = namer(&[], Some("^container_(.*)_seconds_total$"), None);
        assert_eq!(
            n.metric_name("container_cpu_usage_seconds_total")
                .as_deref(),
            Some("cpu_usage")
        );
        assert_eq!(n.metric_name("container_memory_bytes"), None);
    }

    #[test]
    fn as_with_braces_and_suffix() {
        let n = namer(&[], Some("^(.*)_total$"), Some("${1}_per_second"));
        assert_eq!(
            n.metric_name("http_requests_total").as_deref(),
            Some("http_requests_per_second")
        );
    }

    #[test]
    fn as_renames_a_single_series() {
        let n = namer(&[], None, Some("cheesy_goodness"));
        assert_eq!(n.metric_name("cheddar").as_deref(), Some("cheesy_goodness"));
    }

    #[test]
    fn filters_all_must_pass() {
        let n = namer(
            &[("^container_.*_seconds_total$", false)],
            Some("^container_(.*)_total$"),
            None,
        );
        assert_eq!(n.metric_name("container_cpu_usage_seconds_total"), None);
        assert_eq!(
            n.metric_name("container_network_receive_bytes_total")
                .as_deref(),
            Some("network_receive_bytes")
        );
    }

    #[test]
    fn two_groups_need_as() {
        let e = Namer::new(vec![], Some("^(a)_(b)$"), None).unwrap_err();
        assert_eq!(e, NamingError::AmbiguousAs(2));
    }

    #[test]
    fn bad_regex_names_the_field() {
        let e = compile("name.matches", "(").unwrap_err();
        assert!(e.to_string().starts_with("name.matches: "), "{e}");
    }
}
