//! A small, strict reader of the Prometheus text exposition format (0.0.4).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};

use crate::util::parse_value;

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The metric name, e.g. `vt_ms_bucket`.
    pub name: String,
    /// Labels by name (unescaped values).
    pub labels: BTreeMap<String, String>,
    /// The sample value.
    pub value: f64,
}

impl Series {
    /// The series as `name{k="v",…}` with labels sorted by name (always with braces).
    pub fn key(&self) -> String {
        render_key(&self.name, &self.labels)
    }
}

/// Renders `name{k="v",…}` with labels sorted by name and values escaped as in the exposition
/// (`\\`, `\"`, `\n`); an empty label set gives `name{}`.
pub fn render_key(name: &str, labels: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(name.len() + 16);
    out.push_str(name);
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Parses every sample line (lines starting with `#` and blank lines are skipped).
pub fn parse(text: &str) -> Result<Vec<Series>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| parse_line(l).with_context(|| format!("exposition line {}: {l:?}", i + 1)))
        .collect()
}

/// Parses the exposition into `key → value` (see [`Series::key`]); a key seen twice is an error.
pub fn series_map(text: &str) -> Result<BTreeMap<String, f64>> {
    let mut map = BTreeMap::new();
    for s in parse(text)? {
        let key = s.key();
        if map.insert(key.clone(), s.value).is_some() {
            bail!("series {key} appears twice in the exposition");
        }
    }
    Ok(map)
}

/// The `# TYPE family type` lines, in order.
pub fn type_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|rest| {
            let mut parts = rest.split_whitespace();
            let family = parts.next().unwrap_or_default().to_owned();
            let kind = parts.next().unwrap_or_default().to_owned();
            (family, kind)
        })
        .collect()
}

/// Families with more than one `# TYPE` line (should be none).
pub fn duplicate_type_families(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (family, _) in type_lines(text) {
        *seen.entry(family).or_default() += 1;
    }
    let mut dups: Vec<String> = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(f, _)| f)
        .collect();
    dups.sort();
    dups
}

/// Parses one sample line: `name[{labels}] value [timestamp]`.
pub fn parse_line(line: &str) -> Result<Series> {
    let line = line.trim_end_matches('\r');
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    anyhow::ensure!(!name.is_empty(), "missing metric name");
    anyhow::ensure!(
        name.chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphabetic()
                || c == '_'
                || c == ':'
                || (i > 0 && c.is_ascii_digit())),
        "invalid metric name {name:?}"
    );
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if rest.starts_with('{') {
        rest = parse_labels(&rest[1..], &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().context("missing value")?;
    let value = parse_value(value)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .with_context(|| format!("bad timestamp {ts:?}"))?;
    }
    anyhow::ensure!(fields.next().is_none(), "trailing text after the timestamp");
    Ok(Series {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",…}` (after the `{`); returns the text after the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').context("label without `=`")?;
        let name = s[..eq].trim();
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .enumerate()
                    .all(|(i, c)| c.is_ascii_alphabetic()
                        || c == '_'
                        || (i > 0 && c.is_ascii_digit())),
            "invalid label name {name:?}"
        );
        s = s[eq + 1..].trim_start();
        s = s
            .strip_prefix('"')
            .context("label value does not start with a quote")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next().context("unterminated label value")?;
            match c {
                '"' => break i,
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => bail!("invalid escape in label value: {other:?}"),
                },
                '\n' => bail!("raw newline in label value"),
                c => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            bail!("label {name:?} appears twice");
        }
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            bail!("expected `,` or `}}` after a label value");
        }
    }
}

/// Parses `text` with the official Python client's text parser (`tests/py/parse_exposition.py`,
/// `prometheus_client.parser`): an independent check of the escaping.
///
/// That parser names counter samples `<family>_total` even when the line has no suffix.
pub fn parse_with_python_client(text: &str) -> Result<Vec<Series>> {
    #[derive(serde::Deserialize)]
    struct PySample {
        name: String,
        labels: BTreeMap<String, String>,
        value: String,
    }

    let stdout = run_python_parser("py/parse_exposition.py", text, "prometheus_client")?;
    let samples: Vec<PySample> =
        serde_json::from_slice(&stdout).context("parsing parse_exposition.py output")?;
    samples
        .into_iter()
        .map(|s| {
            Ok(Series {
                name: s.name,
                labels: s.labels,
                value: parse_value(&s.value)?,
            })
        })
        .collect()
}

/// A metric family as the OpenMetrics parser reports it.
#[derive(Debug, Clone)]
pub struct OmFamily {
    /// The family name (for counters, without `_total`).
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `summary`, `unknown`…
    pub kind: String,
    /// Its samples, with their full names (`x_total`, `h_bucket`…).
    pub samples: Vec<Series>,
}

/// Parses `text` with the official Python client's strict OpenMetrics 1.0 parser
/// (`tests/py/parse_openmetrics.py`, `prometheus_client.openmetrics.parser`); an error carries
/// the parser's complaint.
pub fn parse_openmetrics_with_python_client(text: &str) -> Result<Vec<OmFamily>> {
    #[derive(serde::Deserialize)]
    struct PySample {
        name: String,
        labels: BTreeMap<String, String>,
        value: String,
    }
    #[derive(serde::Deserialize)]
    struct PyFamily {
        name: String,
        #[serde(rename = "type")]
        kind: String,
        samples: Vec<PySample>,
    }

    let stdout = run_python_parser("py/parse_openmetrics.py", text, "the OpenMetrics parser")?;
    let families: Vec<PyFamily> =
        serde_json::from_slice(&stdout).context("parsing parse_openmetrics.py output")?;
    families
        .into_iter()
        .map(|f| {
            let samples = f
                .samples
                .into_iter()
                .map(|s| {
                    Ok(Series {
                        name: s.name,
                        labels: s.labels,
                        value: parse_value(&s.value)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(OmFamily {
                name: f.name,
                kind: f.kind,
                samples,
            })
        })
        .collect()
}

/// Runs a parser script under `tests/` with `text` on stdin and returns its stdout; an error
/// (with its stderr) unless it exits 0.
fn run_python_parser(script: &str, text: &str, what: &str) -> Result<Vec<u8>> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let script = crate::util::tests_dir().join(script);
    let mut child = Command::new(crate::util::python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let mut stdin = child.stdin.take().context("parser stdin")?;
    let input = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", script.display()))?;
    let _ = writer.join();
    anyhow::ensure!(
        output.status.success(),
        "{what} rejected the exposition ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escapes_and_renders_sorted_keys() {
        let text = "# HELP x h\n# TYPE x counter\nx{b=\"q\\\"uo\\\\te\\n\",a=\"Zürich\"} 1.5\ny 2 1700000000\nz{} NaN\n";
        let series = parse(text).unwrap();
        assert_eq!(series.len(), 3);
        assert_eq!(series[0].labels["b"], "q\"uo\\te\n");
        assert_eq!(series[0].key(), "x{a=\"Zürich\",b=\"q\\\"uo\\\\te\\n\"}");
        assert_eq!(series[1].key(), "y{}");
        assert!(series[2].value.is_nan());
        assert_eq!(
            type_lines(text),
            vec![("x".to_owned(), "counter".to_owned())]
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "x{a=\"1} 1",
            "x{a=1} 1",
            "x 1 2 3",
            "1x 1",
            "x{a=\"1\",a=\"2\"} 1",
            "x abc",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_duplicate_type_lines() {
        let text = "# TYPE a counter\na 1\n# TYPE b gauge\nb 1\n# TYPE a counter\na{x=\"1\"} 1\n";
        assert_eq!(duplicate_type_families(text), vec!["a".to_owned()]);
    }
}
