//! Kubernetes label selectors: parsing, matching, and PromQL label matchers.
//!
//! The HPA sends `metricSelector` / `labelSelector` as a query parameter in the string form of
//! apimachinery's `labels.Parse`. This module is a port of that parser (`pkg/labels/selector.go`),
//! including its quirks, so a selector means exactly what it means to kube-apiserver; plus the two
//! renderings the adapter needs: PromQL label matchers (as prometheus-adapter's `metrics_query.go`
//! builds `<<.LabelMatchers>>`) and the `metav1.LabelSelector` echoed in custom metric values.
//!
//! Deliberate differences from Go, all on hostile input only:
//! - a NUL byte is an ordinary character (Go's lexer reads it as end of input and silently
//!   ignores or mis-tokenises what follows), so it ends up in a key or value and is rejected;
//! - only the first validation problem of a requirement is reported, not an aggregate list.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// A parsed label selector: the AND of its requirements, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One `key op values` term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key, a Kubernetes qualified name (`[prefix/]name`).
    pub key: String,
    /// How the label's value is compared.
    pub op: Operator,
    /// Sorted and deduplicated, as apimachinery stores them; empty for `Exists`/`DoesNotExist`,
    /// exactly one for `=`, `==`, `!=`, `>` and `<`.
    pub values: Vec<String>,
}

/// A selector operator (apimachinery's `selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key=value`
    Equals,
    /// `key==value`
    DoubleEquals,
    /// `key!=value`; also matches when the key is absent.
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)`; also matches when the key is absent.
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>5`
    GreaterThan,
    /// `key<5`
    LessThan,
}

impl Operator {
    /// The `selection.Operator` string, which is what apimachinery's error messages name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a selector string was rejected or cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Longer than [`MAX_SELECTOR_LEN`]: no HPA writes such a selector, and parsing and
    /// matching it would cost every request.
    #[error("the selector is {len} bytes; at most {MAX_SELECTOR_LEN} are accepted")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The grammar does not allow this token here.
    #[error(
        "unable to parse requirement: found {} at byte {position}, expected: {expected}",
        describe_found(found)
    )]
    UnexpectedToken {
        /// The offending token's text; empty at the end of the input.
        found: String,
        /// Byte offset of the token in the selector string.
        position: usize,
        /// What the grammar would have accepted, in apimachinery's words.
        expected: &'static str,
    },
    /// The key is not a qualified name.
    #[error("invalid label key '{key}': {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// The first rule it breaks.
        reason: &'static str,
    },
    /// A value is not a valid label value.
    #[error("invalid label value '{value}' for key '{key}': {reason}")]
    InvalidValue {
        /// The requirement's key.
        key: String,
        /// The rejected value.
        value: String,
        /// The first rule it breaks.
        reason: &'static str,
    },
    /// `gt`/`lt` take a 64-bit integer.
    #[error("invalid value '{value}' for key '{key}': the 'gt' and 'lt' operators need an integer")]
    NotAnInteger {
        /// The requirement's key.
        key: String,
        /// The rejected value.
        value: String,
    },
    /// prometheus-adapter has no PromQL form for `gt`/`lt`, and neither do we.
    #[error("operator '{operator}' on key '{key}' cannot be expressed as a PromQL label matcher")]
    UnsupportedInPromql {
        /// The requirement's key.
        key: String,
        /// The operator without a PromQL form.
        operator: Operator,
    },
    /// `metav1.LabelSelector` has no `gt`/`lt`.
    #[error("operator '{operator}' on key '{key}' isn't supported in label selectors")]
    UnsupportedInLabelSelector {
        /// The requirement's key.
        key: String,
        /// The operator without a `LabelSelector` form.
        operator: Operator,
    },
    /// Keys such as `app.kubernetes.io/name` are fine for Kubernetes but would make invalid PromQL.
    #[error("label key '{key}' is not a valid Prometheus label name")]
    InvalidPromLabel {
        /// The rejected key.
        key: String,
    },
}

fn describe_found(found: &str) -> String {
    if found.is_empty() {
        "end of string".to_owned()
    } else {
        format!("'{found}'")
    }
}

/// The longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 8 * 1024;

impl Selector {
    /// Parse the `labels.Parse` string form; the empty string selects everything.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        if s.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong { len: s.len() });
        }
        let mut parser = Parser {
            items: lex(s),
            next: 0,
            end: Item {
                tok: Tok::End,
                lit: "",
                pos: s.len(),
            },
        };
        let mut requirements = parser.parse()?;
        // `sort.Sort(ByKey)` in Go; a stable sort keeps duplicate keys in input order.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Selector { requirements })
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a label set satisfies every requirement (apimachinery semantics: NotIn / != match
    /// when the key is absent; gt/lt compare integers and fail when the value isn't one).
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(&label))
    }

    /// PromQL label matchers in prometheus-adapter's order and syntax: `=`/`==` → `l="v"`,
    /// `!=` → `l!="v"`, `in (v)` → `l=~"v"`, `in (a,b)` → `l=~"a|b"`, `notin` → `l!~"a|b"`,
    /// exists → `l!=""`, `!l` → `l=""`. Values quoted like Go's `%q`. gt/lt → Err
    /// (prometheus-adapter doesn't support them). A key that isn't a valid Prometheus label name
    /// (`[a-zA-Z_][a-zA-Z0-9_]*`) → Err naming it (a query with it would be invalid PromQL).
    ///
    /// Like prometheus-adapter, `in`/`notin` values are not regex-escaped: a `.` in a value matches
    /// any character. Users rely on this as a regex pass-through.
    pub fn to_prom_matchers(&self) -> Result<Vec<String>, SelectorError> {
        self.requirements
            .iter()
            .map(Requirement::to_prom_matcher)
            .collect()
    }

    /// The metav1.LabelSelector that metav1.ParseToLabelSelector gives for this selector (=,== →
    /// matchLabels; in/notin/exists/!key → matchExpressions with operators
    /// In/NotIn/Exists/DoesNotExist; `!=` → `NotIn [v]`); what custom metrics echo as `selector`.
    /// gt/lt → Err.
    ///
    /// Empty `matchLabels`, `matchExpressions` and `values` are `None`, so the JSON is what Go's
    /// `omitempty` produces. A repeated `=` key keeps the last value, as Go's map assignment does.
    /// Go's `ParseToLabelSelector` rejects `!=` outright; mapping it to the equivalent `NotIn`
    /// keeps a selector the HPA accepted from failing only when echoed.
    pub fn to_label_selector(&self) -> Result<LabelSelector, SelectorError> {
        let mut match_labels = BTreeMap::new();
        let mut match_expressions = Vec::new();
        for r in &self.requirements {
            let operator = match r.op {
                Operator::Equals | Operator::DoubleEquals => {
                    let value = r.values.first().cloned().unwrap_or_default();
                    match_labels.insert(r.key.clone(), value);
                    continue;
                }
                Operator::In => "In",
                Operator::NotIn | Operator::NotEquals => "NotIn",
                Operator::Exists => "Exists",
                Operator::DoesNotExist => "DoesNotExist",
                Operator::GreaterThan | Operator::LessThan => {
                    return Err(SelectorError::UnsupportedInLabelSelector {
                        key: r.key.clone(),
                        operator: r.op,
                    });
                }
            };
            match_expressions.push(LabelSelectorRequirement {
                key: r.key.clone(),
                operator: operator.to_owned(),
                values: (!r.values.is_empty()).then(|| r.values.clone()),
            });
        }
        Ok(LabelSelector {
            match_expressions: (!match_expressions.is_empty()).then_some(match_expressions),
            match_labels: (!match_labels.is_empty()).then_some(match_labels),
        })
    }
}

/// apimachinery's `String()`: requirements joined by `,`, no spaces except around `in`/`notin`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Operator::Exists => return f.write_str(&self.key),
            Operator::DoesNotExist => return write!(f, "!{}", self.key),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
        };
        let values = self.values.join(",");
        match self.op {
            Operator::In | Operator::NotIn => write!(f, "{}{op}({values})", self.key),
            _ => write!(f, "{}{op}{values}", self.key),
        }
    }
}

impl Requirement {
    fn matches<'a>(&self, label: &impl Fn(&str) -> Option<&'a str>) -> bool {
        let value = label(&self.key);
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.op {
            Operator::In | Operator::Equals | Operator::DoubleEquals => value.is_some_and(has),
            Operator::NotIn | Operator::NotEquals => !value.is_some_and(has),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(actual) = value.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let Some(bound) = self.single_value().and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    actual > bound
                } else {
                    actual < bound
                }
            }
        }
    }

    fn single_value(&self) -> Option<&str> {
        match self.values.as_slice() {
            [v] => Some(v),
            _ => None,
        }
    }

    fn to_prom_matcher(&self) -> Result<String, SelectorError> {
        let (op, value) = match self.op {
            Operator::Equals | Operator::DoubleEquals => ("=", self.values.join("|")),
            Operator::NotEquals => ("!=", self.values.join("|")),
            Operator::In => ("=~", self.values.join("|")),
            Operator::NotIn => ("!~", self.values.join("|")),
            Operator::Exists => ("!=", String::new()),
            Operator::DoesNotExist => ("=", String::new()),
            Operator::GreaterThan | Operator::LessThan => {
                return Err(SelectorError::UnsupportedInPromql {
                    key: self.key.clone(),
                    operator: self.op,
                });
            }
        };
        if !is_prom_label_name(&self.key) {
            return Err(SelectorError::InvalidPromLabel {
                key: self.key.clone(),
            });
        }
        Ok(format!("{}{op}{}", self.key, go_quote(&value)))
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
fn is_prom_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Go's `%q`, which PromQL string literals accept. Validated label values never need escaping;
/// this only keeps the output well-formed if that ever changes.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Lexer: a port of apimachinery's `Lexer`. Tokens are split on whitespace and on the special
// characters `= ! ( ) , > <`; `!=` and `==` are the only two-character operators.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    tok: Tok,
    lit: &'a str,
    pos: usize,
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Every token of `s`, ending with exactly one `End`.
fn lex(s: &str) -> Vec<Item<'_>> {
    let bytes = s.as_bytes();
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        while bytes.get(i).copied().is_some_and(is_whitespace) {
            i += 1;
        }
        let Some(&b) = bytes.get(i) else {
            items.push(Item {
                tok: Tok::End,
                lit: "",
                pos: s.len(),
            });
            return items;
        };
        let start = i;
        let tok = if is_special(b) {
            let then_equals = bytes.get(i + 1) == Some(&b'=');
            let (tok, len) = match b {
                b'!' if then_equals => (Tok::NotEquals, 2),
                b'=' if then_equals => (Tok::DoubleEquals, 2),
                b'!' => (Tok::DoesNotExist, 1),
                b'=' => (Tok::Equals, 1),
                b'(' => (Tok::OpenPar, 1),
                b')' => (Tok::ClosedPar, 1),
                b',' => (Tok::Comma, 1),
                b'>' => (Tok::GreaterThan, 1),
                _ => (Tok::LessThan, 1),
            };
            i += len;
            tok
        } else {
            while bytes
                .get(i)
                .copied()
                .is_some_and(|b| !is_special(b) && !is_whitespace(b))
            {
                i += 1;
            }
            Tok::Identifier
        };
        // Token boundaries are ASCII bytes, hence char boundaries.
        let lit = s.get(start..i).unwrap_or_default();
        let tok = match (tok, lit) {
            (Tok::Identifier, "in") => Tok::In,
            (Tok::Identifier, "notin") => Tok::NotIn,
            (tok, _) => tok,
        };
        items.push(Item {
            tok,
            lit,
            pos: start,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Parser: a port of apimachinery's recursive-descent `Parser`, same structure and error points.

/// Whether `in`/`notin` are keywords (operator position) or plain identifiers (keys, values).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser<'a> {
    items: Vec<Item<'a>>,
    next: usize,
    end: Item<'a>,
}

fn unexpected(item: Item<'_>, expected: &'static str) -> SelectorError {
    SelectorError::UnexpectedToken {
        found: item.lit.to_owned(),
        position: item.pos,
        expected,
    }
}

impl<'a> Parser<'a> {
    fn lookahead(&self, ctx: Context) -> Item<'a> {
        let mut item = self.items.get(self.next).copied().unwrap_or(self.end);
        if ctx == Context::Values && matches!(item.tok, Tok::In | Tok::NotIn) {
            item.tok = Tok::Identifier;
        }
        item
    }

    fn consume(&mut self, ctx: Context) -> Item<'a> {
        let item = self.lookahead(ctx);
        self.next += 1;
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let item = self.lookahead(Context::Values);
            match item.tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    requirements.push(self.parse_requirement()?);
                    let after = self.consume(Context::Values);
                    match after.tok {
                        Tok::End => return Ok(requirements),
                        Tok::Comma => {
                            let next = self.lookahead(Context::Values);
                            if !matches!(next.tok, Tok::Identifier | Tok::DoesNotExist) {
                                return Err(unexpected(next, "identifier after ','"));
                            }
                        }
                        _ => return Err(unexpected(after, "',' or 'end of string'")),
                    }
                }
                Tok::End => return Ok(requirements),
                _ => return Err(unexpected(item, "!, identifier, or 'end of string'")),
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, unary) = self.parse_key_and_infer_operator()?;
        if let Some(op) = unary {
            return Ok(Requirement {
                key: key.to_owned(),
                op,
                values: Vec::new(),
            });
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        new_requirement(key, op, values)
    }

    /// The key, and `Exists`/`DoesNotExist` when no binary operator follows.
    fn parse_key_and_infer_operator(
        &mut self,
    ) -> Result<(&'a str, Option<Operator>), SelectorError> {
        let mut item = self.consume(Context::Values);
        let negated = item.tok == Tok::DoesNotExist;
        if negated {
            item = self.consume(Context::Values);
        }
        if item.tok != Tok::Identifier {
            return Err(unexpected(item, "identifier"));
        }
        validate_key(item.lit)?;
        let next = self.lookahead(Context::Values).tok;
        let op = if negated {
            // `!key=v` returns here too; the caller then trips over the `=`.
            Some(Operator::DoesNotExist)
        } else if matches!(next, Tok::End | Tok::Comma) {
            Some(Operator::Exists)
        } else {
            None
        };
        Ok((item.lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, SelectorError> {
        let item = self.consume(Context::KeyAndOperator);
        Ok(match item.tok {
            Tok::In => Operator::In,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            Tok::NotIn => Operator::NotIn,
            Tok::NotEquals => Operator::NotEquals,
            _ => return Err(unexpected(item, "in, notin, =, ==, !=, gt, lt")),
        })
    }

    /// `( v1, v2 )`; `()` is the set holding only the empty value.
    fn parse_values(&mut self) -> Result<BTreeSet<&'a str>, SelectorError> {
        let open = self.consume(Context::Values);
        if open.tok != Tok::OpenPar {
            return Err(unexpected(open, "'('"));
        }
        let next = self.lookahead(Context::Values);
        match next.tok {
            Tok::Identifier | Tok::Comma => {
                let values = self.parse_identifiers_list()?;
                let close = self.consume(Context::Values);
                if close.tok != Tok::ClosedPar {
                    return Err(unexpected(close, "')'"));
                }
                Ok(values)
            }
            Tok::ClosedPar => {
                self.consume(Context::Values);
                Ok(BTreeSet::from([""]))
            }
            _ => Err(unexpected(next, "',', ')' or identifier")),
        }
    }

    /// A comma-separated list where an omitted value is the empty value. Leaves the `)` unconsumed.
    /// Go quirk kept: `(a,,)` is an error while `(a,,b)`, `(,a)` and `(a,)` are not.
    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<&'a str>, SelectorError> {
        let mut values = BTreeSet::new();
        loop {
            let item = self.consume(Context::Values);
            match item.tok {
                Tok::Identifier => {
                    values.insert(item.lit);
                    let next = self.lookahead(Context::Values);
                    match next.tok {
                        Tok::Comma => {}
                        Tok::ClosedPar => return Ok(values),
                        _ => return Err(unexpected(next, "',' or ')'")),
                    }
                }
                Tok::Comma => {
                    if values.is_empty() {
                        values.insert("");
                    }
                    match self.lookahead(Context::Values).tok {
                        Tok::ClosedPar => {
                            values.insert("");
                            return Ok(values);
                        }
                        Tok::Comma => {
                            self.consume(Context::Values);
                            values.insert("");
                        }
                        _ => {}
                    }
                }
                _ => return Err(unexpected(item, "',', or identifier")),
            }
        }
    }

    /// The single value after `=`, `==`, `!=`, `>` or `<`; nothing at all means the empty value.
    fn parse_exact_value(&mut self) -> Result<BTreeSet<&'a str>, SelectorError> {
        if matches!(self.lookahead(Context::Values).tok, Tok::End | Tok::Comma) {
            return Ok(BTreeSet::from([""]));
        }
        let item = self.consume(Context::Values);
        if item.tok != Tok::Identifier {
            return Err(unexpected(item, "identifier"));
        }
        Ok(BTreeSet::from([item.lit]))
    }
}

/// `NewRequirement`'s checks that the grammar does not already guarantee.
fn new_requirement(
    key: &str,
    op: Operator,
    values: BTreeSet<&str>,
) -> Result<Requirement, SelectorError> {
    if matches!(op, Operator::GreaterThan | Operator::LessThan) {
        for v in &values {
            if v.parse::<i64>().is_err() {
                return Err(SelectorError::NotAnInteger {
                    key: key.to_owned(),
                    value: (*v).to_owned(),
                });
            }
        }
    }
    for v in &values {
        if let Err(reason) = check_label_value(v) {
            return Err(SelectorError::InvalidValue {
                key: key.to_owned(),
                value: (*v).to_owned(),
                reason,
            });
        }
    }
    Ok(Requirement {
        key: key.to_owned(),
        op,
        values: values.into_iter().map(str::to_owned).collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// Validation: `validation.IsQualifiedName` and `validation.IsValidLabelValue`.

const NAME_MAX_LEN: usize = 63;
const PREFIX_MAX_LEN: usize = 253;
const NAME_CHARSET: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

fn validate_key(key: &str) -> Result<(), SelectorError> {
    check_qualified_name(key).map_err(|reason| SelectorError::InvalidKey {
        key: key.to_owned(),
        reason,
    })
}

/// `[dns-subdomain/]name`, name being 1..=63 of `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn check_qualified_name(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        None => key,
        Some((_, name)) if name.contains('/') => {
            return Err("must be a name with an optional DNS subdomain prefix and one '/'");
        }
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Err("prefix part must be non-empty");
            }
            if prefix.len() > PREFIX_MAX_LEN {
                return Err("prefix part must be no more than 253 characters");
            }
            if !is_dns1123_subdomain(prefix) {
                return Err(
                    "prefix part must be a lowercase RFC 1123 subdomain (lower case alphanumeric characters, '-' or '.', starting and ending with an alphanumeric character)",
                );
            }
            name
        }
    };
    if name.is_empty() {
        return Err("name part must be non-empty");
    }
    if name.len() > NAME_MAX_LEN {
        return Err("name part must be no more than 63 characters");
    }
    if !is_label_charset(name) {
        return Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// Empty, or up to 63 of `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn check_label_value(value: &str) -> Result<(), &'static str> {
    if value.len() > NAME_MAX_LEN {
        return Err("must be no more than 63 characters");
    }
    if !value.is_empty() && !is_label_charset(value) {
        return Err(NAME_CHARSET);
    }
    Ok(())
}

fn is_label_charset(s: &str) -> bool {
    let bytes = s.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`, with no per-label length
/// limit (apimachinery checks only the 253 total).
fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let bytes = label.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Parse and render: `ok: <canonical form>` or `error: <message>`.
    fn render(input: &str) -> String {
        match Selector::parse(input) {
            Ok(sel) => format!("ok: {sel}"),
            Err(err) => format!("error: {err}"),
        }
    }

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(render(input), expected, "input: {input:?}");
    }

    #[track_caller]
    fn check_ok(input: &str) -> Selector {
        match Selector::parse(input) {
            Ok(sel) => sel,
            Err(err) => panic!("{input:?} should parse: {err}"),
        }
    }

    #[test]
    fn selectors_longer_than_the_cap_are_refused_before_parsing() {
        let one = "app in (a,b)";
        let mut long = String::new();
        while long.len() + one.len() < MAX_SELECTOR_LEN {
            if !long.is_empty() {
                long.push(',');
            }
            long.push_str(one);
        }
        assert!(Selector::parse(&long).is_ok(), "{} bytes", long.len());
        long.push_str(",x=yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy");
        let e = Selector::parse(&long).unwrap_err();
        assert!(matches!(e, SelectorError::TooLong { .. }), "{e}");
        assert!(e.to_string().contains("at most 8192"), "{e}");
    }

    /// apimachinery `TestSelectorParse`: good strings re-render as the input without spaces.
    #[test]
    fn selector_parse_good_strings_restring() {
        let good = [
            "x=a,y=b,z=c",
            "",
            "x!=a,y=b",
            "x=",
            "x= ",
            "x=,z= ",
            "x= ,z= ",
            "!x",
            "x>1",
            "x>1,z<5",
        ];
        for input in good {
            assert_eq!(
                check_ok(input).to_string(),
                input.replace(' ', ""),
                "input: {input:?}"
            );
        }
    }

    /// apimachinery `TestSelectorParse` bad strings.
    #[test]
    fn selector_parse_bad_strings() {
        for input in ["x=a||y=b", "x==a==b", "!x=a", "x<a"] {
            assert!(Selector::parse(input).is_err(), "input: {input:?}");
        }
    }

    /// apimachinery `TestSetSelectorParser` (valid and invalid), `TestRequirementConstructor`
    /// (where the string grammar can express it), plus error-message and edge cases of our own.
    const PARSE_CASES: &[(&str, &str)] = &[
        // TestSetSelectorParser
        ("", "ok: "),
        ("\rx", "ok: x"),
        (
            "this-is-a-dns.domain.com/key-with-dash",
            "ok: this-is-a-dns.domain.com/key-with-dash",
        ),
        (
            "this-is-another-dns.domain.com/key-with-dash in (so,what)",
            "ok: this-is-another-dns.domain.com/key-with-dash in (so,what)",
        ),
        (
            "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
            "ok: 0.1.2.domain/99 notin (10.10.100.1,tick.tack.clock)",
        ),
        ("foo  in\t (abc)", "ok: foo in (abc)"),
        ("x notin\n (abc)", "ok: x notin (abc)"),
        ("x  notin\t\t\t(abc,def)", "ok: x notin (abc,def)"),
        ("x in (abc,def)", "ok: x in (abc,def)"),
        ("x in (abc,)", "ok: x in (,abc)"),
        ("x in ()", "ok: x in ()"),
        (
            "x notin (abc,,def),bar,z in (),w",
            "ok: bar,w,x notin (,abc,def),z in ()",
        ),
        ("x,y in (a)", "ok: x,y in (a)"),
        ("x=a", "ok: x=a"),
        ("x>1", "ok: x>1"),
        ("x<7", "ok: x<7"),
        ("x=a,y!=b", "ok: x=a,y!=b"),
        ("x=a,y!=b,z in (h,i,j)", "ok: x=a,y!=b,z in (h,i,j)"),
        (
            "x=a||y=b",
            "error: invalid label value 'a||y' for key 'x': must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
        (
            "x,,y",
            "error: unable to parse requirement: found ',' at byte 2, expected: identifier after ','",
        ),
        (
            ",x,y",
            "error: unable to parse requirement: found ',' at byte 0, expected: !, identifier, or 'end of string'",
        ),
        (
            "x nott in (y)",
            "error: unable to parse requirement: found 'nott' at byte 2, expected: in, notin, =, ==, !=, gt, lt",
        ),
        ("x notin ( )", "ok: x notin ()"),
        ("x notin (, a)", "ok: x notin (,a)"),
        (
            "a in (xyz),",
            "error: unable to parse requirement: found end of string at byte 11, expected: identifier after ','",
        ),
        (
            "a in (xyz)b notin ()",
            "error: unable to parse requirement: found 'b' at byte 10, expected: ',' or 'end of string'",
        ),
        ("a ", "ok: a"),
        ("a in (x,y,notin, z,in)", "ok: a in (in,notin,x,y,z)"),
        (
            "a in (xyz abc)",
            "error: unable to parse requirement: found 'abc' at byte 10, expected: ',' or ')'",
        ),
        (
            "a notin(",
            "error: unable to parse requirement: found end of string at byte 8, expected: ',', ')' or identifier",
        ),
        (
            "a (",
            "error: unable to parse requirement: found '(' at byte 2, expected: in, notin, =, ==, !=, gt, lt",
        ),
        (
            "(",
            "error: unable to parse requirement: found '(' at byte 0, expected: !, identifier, or 'end of string'",
        ),
        // TestSelectorParse bad strings, with their messages
        (
            "x==a==b",
            "error: unable to parse requirement: found '==' at byte 4, expected: ',' or 'end of string'",
        ),
        (
            "!x=a",
            "error: unable to parse requirement: found '=' at byte 2, expected: ',' or 'end of string'",
        ),
        (
            "x<a",
            "error: invalid value 'a' for key 'x': the 'gt' and 'lt' operators need an integer",
        ),
        // TestRequirementConstructor, through the string grammar
        ("1foo in (bar)", "ok: 1foo in (bar)"),
        ("1234 in (bar)", "ok: 1234 in (bar)"),
        ("y>1", "ok: y>1"),
        ("z<6", "ok: z<6"),
        (
            "foo>bar",
            "error: invalid value 'bar' for key 'foo': the 'gt' and 'lt' operators need an integer",
        ),
        (
            "barz<blah",
            "error: invalid value 'blah' for key 'barz': the 'gt' and 'lt' operators need an integer",
        ),
        (
            "x13>",
            "error: invalid value '' for key 'x13': the 'gt' and 'lt' operators need an integer",
        ),
        (
            "x17=a b",
            "error: unable to parse requirement: found 'b' at byte 6, expected: ',' or 'end of string'",
        ),
        // TestSelectorMatches / TestLexer: `in` and `notin` are identifiers outside operator position
        ("notin=in", "ok: notin=in"),
        ("in in (in)", "ok: in in (in)"),
        ("!notin", "ok: !notin"),
        // TestDeterministicParse / TestToString: sorted by key, stable for equal keys
        ("x=a,a=x", "ok: a=x,x=a"),
        ("z,z!=a,y==jkl,x=abc", "ok: x=abc,y==jkl,z,z!=a"),
        ("z!=a,z", "ok: z!=a,z"),
        ("x in (def,abc,abc)", "ok: x in (abc,def)"),
        // operators and whitespace
        ("x == a", "ok: x==a"),
        ("x!=", "ok: x!="),
        ("x==,y", "ok: x==,y"),
        (
            "x > 10 , y < -0",
            "error: invalid label value '-0' for key 'y': must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
        ("x>9223372036854775807", "ok: x>9223372036854775807"),
        (
            "x>9223372036854775808",
            "error: invalid value '9223372036854775808' for key 'x': the 'gt' and 'lt' operators need an integer",
        ),
        (
            "x>+5",
            "error: invalid label value '+5' for key 'x': must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
        (" \t\r\n", "ok: "),
        // Go quirk: an empty value between two commas right before `)` is an error
        (
            "x in (a,,)",
            "error: unable to parse requirement: found ')' at byte 9, expected: ',', or identifier",
        ),
        ("x in (a,,b)", "ok: x in (,a,b)"),
        ("x in (,)", "ok: x in ()"),
        // structural errors
        (
            "!",
            "error: unable to parse requirement: found end of string at byte 1, expected: identifier",
        ),
        (
            "!!x",
            "error: unable to parse requirement: found '!' at byte 1, expected: identifier",
        ),
        (
            "x in a",
            "error: unable to parse requirement: found 'a' at byte 5, expected: '('",
        ),
        (
            "x in (a",
            "error: unable to parse requirement: found end of string at byte 7, expected: ',' or ')'",
        ),
        (
            "x in (=)",
            "error: unable to parse requirement: found '=' at byte 6, expected: ',', ')' or identifier",
        ),
        (
            "x in (a,=)",
            "error: unable to parse requirement: found '=' at byte 8, expected: ',', or identifier",
        ),
        (
            "x=(",
            "error: unable to parse requirement: found '(' at byte 2, expected: identifier",
        ),
        (
            "x,",
            "error: unable to parse requirement: found end of string at byte 2, expected: identifier after ','",
        ),
        (
            "=a",
            "error: unable to parse requirement: found '=' at byte 0, expected: !, identifier, or 'end of string'",
        ),
        (
            "x<=5",
            "error: unable to parse requirement: found '=' at byte 2, expected: identifier",
        ),
        // key validation
        (
            "Bad-Key-=x",
            "error: invalid label key 'Bad-Key-': name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
        (
            "a/b/c",
            "error: invalid label key 'a/b/c': must be a name with an optional DNS subdomain prefix and one '/'",
        ),
        (
            "Example.com/abc=x",
            "error: invalid label key 'Example.com/abc': prefix part must be a lowercase RFC 1123 subdomain (lower case alphanumeric characters, '-' or '.', starting and ending with an alphanumeric character)",
        ),
        (
            "/x",
            "error: invalid label key '/x': prefix part must be non-empty",
        ),
        (
            "x/",
            "error: invalid label key 'x/': name part must be non-empty",
        ),
        (
            "app.kubernetes.io/name in (web)",
            "ok: app.kubernetes.io/name in (web)",
        ),
        // multibyte and NUL never panic and are rejected by validation
        (
            "é=x",
            "error: invalid label key 'é': name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
        (
            "x=ü",
            "error: invalid label value 'ü' for key 'x': must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
        (
            "x\0",
            "error: invalid label key 'x\0': name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
    ];

    #[test]
    fn parse_cases() {
        for (input, expected) in PARSE_CASES {
            check(input, expected);
        }
    }

    #[test]
    fn long_keys_and_values() {
        let a = |n| "a".repeat(n);
        // TestRequirementConstructor: a 254-character key breaks the 63-character name rule.
        check(
            &a(254),
            &format!(
                "error: invalid label key '{}': name part must be no more than 63 characters",
                a(254)
            ),
        );
        check(
            &format!("x16={}", a(64)),
            &format!(
                "error: invalid label value '{}' for key 'x16': must be no more than 63 characters",
                a(64)
            ),
        );
        check(&format!("x={}", a(63)), &format!("ok: x={}", a(63)));
        let long_prefix = format!("{}/{}", a(253), "b".repeat(63));
        check(&long_prefix, &format!("ok: {long_prefix}"));
        check(
            &format!("{}/abc", a(254)),
            &format!(
                "error: invalid label key '{}/abc': prefix part must be no more than 253 characters",
                a(254)
            ),
        );
    }

    /// apimachinery `TestIsQualifiedName` and `TestIsValidLabelValue`.
    #[test]
    fn qualified_names_and_label_values() {
        let good_keys = [
            "simple".to_owned(),
            "now-with-dashes".to_owned(),
            "1-starts-with-num".to_owned(),
            "1234".to_owned(),
            "simple/simple".to_owned(),
            "now-with-dashes/simple".to_owned(),
            "now-with-dashes/now-with-dashes".to_owned(),
            "now.with.dots/simple".to_owned(),
            "now-with.dashes-and.dots/simple".to_owned(),
            "1-num.2-num/3-num".to_owned(),
            "1234/5678".to_owned(),
            "1.2.3.4/5678".to_owned(),
            "Uppercase_Is_OK_123".to_owned(),
            "example.com/Uppercase_Is_OK_123".to_owned(),
            "requests.storage-foo".to_owned(),
            "a".repeat(63),
            format!("{}/{}", "a".repeat(253), "b".repeat(63)),
        ];
        for key in &good_keys {
            assert_eq!(check_qualified_name(key), Ok(()), "key: {key:?}");
        }
        let bad_keys = [
            "nospecialchars%^=@".to_owned(),
            "cantendwithadash-".to_owned(),
            "-cantstartwithadash-".to_owned(),
            "only/one/slash".to_owned(),
            "Example.com/abc".to_owned(),
            "example_com/abc".to_owned(),
            "example.com/".to_owned(),
            "/simple".to_owned(),
            "a".repeat(64),
            format!("{}/abc", "a".repeat(254)),
        ];
        for key in &bad_keys {
            assert!(check_qualified_name(key).is_err(), "key: {key:?}");
        }
        let good_values = [
            "simple".to_owned(),
            "now-with-dashes".to_owned(),
            "1-starts-with-num".to_owned(),
            "end-with-num-1".to_owned(),
            "1234".to_owned(),
            "a".repeat(63),
            String::new(),
        ];
        for value in &good_values {
            assert_eq!(check_label_value(value), Ok(()), "value: {value:?}");
        }
        let bad_values = [
            "nospecialchars%^=@".to_owned(),
            "Tama-nui-te-rā.is.Māori.sun".to_owned(),
            "\\backslashes\\are\\bad".to_owned(),
            "-starts-with-dash".to_owned(),
            "ends-with-dash-".to_owned(),
            ".starts.with.dot".to_owned(),
            "ends.with.dot.".to_owned(),
            "a".repeat(64),
        ];
        for value in &bad_values {
            assert!(check_label_value(value).is_err(), "value: {value:?}");
        }
    }

    /// apimachinery `TestLexer`.
    #[test]
    fn lexer_single_tokens() {
        let cases = [
            ("", Tok::End),
            (",", Tok::Comma),
            ("notin", Tok::NotIn),
            ("in", Tok::In),
            ("=", Tok::Equals),
            ("==", Tok::DoubleEquals),
            (">", Tok::GreaterThan),
            ("<", Tok::LessThan),
            ("!", Tok::DoesNotExist),
            ("!=", Tok::NotEquals),
            ("(", Tok::OpenPar),
            (")", Tok::ClosedPar),
            ("~", Tok::Identifier),
            ("||", Tok::Identifier),
        ];
        for (input, tok) in cases {
            let items = lex(input);
            let first = items.first().expect("lex always yields End");
            assert_eq!(first.tok, tok, "input: {input:?}");
            assert_eq!(first.lit, input, "input: {input:?}");
        }
    }

    /// apimachinery `TestLexerSequence` / `TestParserLookahead`.
    #[test]
    fn lexer_sequences() {
        use Tok::*;
        let cases: &[(&str, &[Tok])] = &[
            (
                "key in ( value )",
                &[Identifier, In, OpenPar, Identifier, ClosedPar, End],
            ),
            (
                "key notin ( value )",
                &[Identifier, NotIn, OpenPar, Identifier, ClosedPar, End],
            ),
            (
                "key in ( value1, value2 )",
                &[
                    Identifier, In, OpenPar, Identifier, Comma, Identifier, ClosedPar, End,
                ],
            ),
            ("key", &[Identifier, End]),
            ("!key", &[DoesNotExist, Identifier, End]),
            ("()", &[OpenPar, ClosedPar, End]),
            ("", &[End]),
            (
                "x in (),y",
                &[Identifier, In, OpenPar, ClosedPar, Comma, Identifier, End],
            ),
            (
                "== != (), = notin",
                &[
                    DoubleEquals,
                    NotEquals,
                    OpenPar,
                    ClosedPar,
                    Comma,
                    Equals,
                    NotIn,
                    End,
                ],
            ),
            ("key>2", &[Identifier, GreaterThan, Identifier, End]),
            ("key<1", &[Identifier, LessThan, Identifier, End]),
            ("!==", &[NotEquals, Equals, End]),
            ("=!=", &[Equals, NotEquals, End]),
            ("<=>", &[LessThan, Equals, GreaterThan, End]),
        ];
        for (input, expected) in cases {
            let got: Vec<Tok> = lex(input).iter().map(|i| i.tok).collect();
            assert_eq!(&got, expected, "input: {input:?}");
        }
    }

    /// Selector, label set, whether it matches.
    type MatchCase = (&'static str, &'static [(&'static str, &'static str)], bool);

    /// apimachinery `TestSelectorMatches`, `TestRequirementSelectorMatching` and
    /// `TestSetMatches`, plus absent-key and integer edge cases.
    const MATCH_CASES: &[MatchCase] = &[
        ("", &[("x", "y")], true),
        ("x=y", &[("x", "y")], true),
        ("x=y,z=w", &[("x", "y"), ("z", "w")], true),
        ("x!=y,z!=w", &[("x", "z"), ("z", "a")], true),
        ("notin=in", &[("notin", "in")], true),
        ("x", &[("x", "z")], true),
        ("!x", &[("y", "z")], true),
        ("x>1", &[("x", "2")], true),
        ("x<1", &[("x", "0")], true),
        ("x=z", &[], false),
        ("x=y", &[("x", "z")], false),
        ("x=y,z=w", &[("x", "w"), ("z", "w")], false),
        ("x!=y,z!=w", &[("x", "z"), ("z", "w")], false),
        ("x", &[("y", "z")], false),
        ("!x", &[("x", "z")], false),
        ("x>1", &[("x", "0")], false),
        ("x<1", &[("x", "2")], false),
        ("foo=bar", &[("foo", "bar"), ("baz", "blah")], true),
        ("baz=blah", &[("foo", "bar"), ("baz", "blah")], true),
        ("foo=bar,baz=blah", &[("foo", "bar"), ("baz", "blah")], true),
        ("foo=blah", &[("foo", "bar"), ("baz", "blah")], false),
        ("baz=bar", &[("foo", "bar"), ("baz", "blah")], false),
        (
            "foo=bar,foobar=bar,baz=blah",
            &[("foo", "bar"), ("baz", "blah")],
            false,
        ),
        // TestRequirementSelectorMatching
        (
            "x in (foo),y notin (alpha)",
            &[("x", "foo"), ("y", "baz")],
            true,
        ),
        (
            "x in (foo),y in (alpha)",
            &[("x", "foo"), ("y", "baz")],
            false,
        ),
        ("x notin (),y", &[("y", "")], true),
        ("!x,y", &[("y", "")], true),
        ("x notin (),!y", &[("y", "")], false),
        ("x in ()", &[("y", "baz")], false),
        ("z>1", &[("z", "2")], true),
        ("z>1", &[("z", "v2")], false),
        // absent keys, empty values, integers
        ("x!=a", &[], true),
        ("x notin (a)", &[], true),
        ("x in ()", &[("x", "")], true),
        ("x=", &[("x", "")], true),
        ("x=", &[], false),
        ("x>1", &[], false),
        ("x<1", &[("x", "-5")], true),
        ("x>1", &[("x", "+5")], true),
        ("x>1", &[("x", " 5")], false),
        ("x>1", &[("x", "99999999999999999999")], false),
        ("x,x!=a", &[("x", "b")], true),
        ("x,x!=a", &[("x", "a")], false),
    ];

    #[test]
    fn match_cases() {
        for (input, labels, expected) in MATCH_CASES {
            let sel = check_ok(input);
            let got = sel.matches(|key| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v));
            assert_eq!(got, *expected, "selector {input:?} on {labels:?}");
        }
    }

    fn render_matchers(input: &str) -> String {
        match check_ok(input).to_prom_matchers() {
            Ok(m) => format!("[{}]", m.join(", ")),
            Err(err) => format!("error: {err}"),
        }
    }

    /// prometheus-adapter `metrics_query.go` `selectMatcher`/`selectTargetValue`, and the
    /// `TestBuildSelector`/`TestBuildExternalSelector` cases that involve a metric selector.
    const MATCHER_CASES: &[(&str, &str)] = &[
        ("", "[]"),
        ("metric1=value1", r#"[metric1="value1"]"#),
        ("foo=bar", r#"[foo="bar"]"#),
        ("foo=bar,qux in (bar,baz)", r#"[foo="bar", qux=~"bar|baz"]"#),
        ("foo in (bar,baz)", r#"[foo=~"bar|baz"]"#),
        (
            "app=web,tier in (a,b),!canary",
            r#"[app="web", canary="", tier=~"a|b"]"#,
        ),
        ("x==a", r#"[x="a"]"#),
        ("x!=a", r#"[x!="a"]"#),
        ("x in (a)", r#"[x=~"a"]"#),
        ("x notin (a)", r#"[x!~"a"]"#),
        ("x notin (b,a)", r#"[x!~"a|b"]"#),
        ("x", r#"[x!=""]"#),
        ("!x", r#"[x=""]"#),
        ("x=", r#"[x=""]"#),
        ("x in ()", r#"[x=~""]"#),
        ("x in (,a)", r#"[x=~"|a"]"#),
        ("x_1=v1.2", r#"[x_1="v1.2"]"#),
        (
            "x>1",
            "error: operator 'gt' on key 'x' cannot be expressed as a PromQL label matcher",
        ),
        (
            "a=b,x<1",
            "error: operator 'lt' on key 'x' cannot be expressed as a PromQL label matcher",
        ),
        (
            "app.kubernetes.io/name=web",
            "error: label key 'app.kubernetes.io/name' is not a valid Prometheus label name",
        ),
        (
            "my-label",
            "error: label key 'my-label' is not a valid Prometheus label name",
        ),
        (
            "1abc=x",
            "error: label key '1abc' is not a valid Prometheus label name",
        ),
    ];

    #[test]
    fn matcher_cases() {
        for (input, expected) in MATCHER_CASES {
            assert_eq!(render_matchers(input), *expected, "selector {input:?}");
        }
    }

    #[test]
    fn go_quote_escapes_like_percent_q() {
        assert_eq!(go_quote(""), r#""""#);
        assert_eq!(go_quote("a.b-c_D9"), r#""a.b-c_D9""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\n\t\r\u{07}\u{08}\u{0c}\u{0b}"),
            r#""\n\t\r\a\b\f\v""#
        );
        assert_eq!(go_quote("\0\u{7f}"), r#""\x00\x7f""#);
        assert_eq!(go_quote("ü"), "\"ü\"");
    }

    fn render_label_selector(input: &str) -> String {
        match check_ok(input).to_label_selector() {
            Ok(ls) => serde_json::to_string(&ls).expect("LabelSelector serializes"),
            Err(err) => format!("error: {err}"),
        }
    }

    /// metav1.ParseToLabelSelector: `=`/`==` into matchLabels, the rest into matchExpressions
    /// in requirement (key) order, values sorted, empty fields omitted as with `omitempty`.
    const LABEL_SELECTOR_CASES: &[(&str, &str)] = &[
        ("", "{}"),
        ("app=web", r#"{"matchLabels":{"app":"web"}}"#),
        ("b==2,a=1", r#"{"matchLabels":{"a":"1","b":"2"}}"#),
        (
            "tier in (b,a)",
            r#"{"matchExpressions":[{"key":"tier","operator":"In","values":["a","b"]}]}"#,
        ),
        (
            "x notin (a),y,!z",
            r#"{"matchExpressions":[{"key":"x","operator":"NotIn","values":["a"]},{"key":"y","operator":"Exists"},{"key":"z","operator":"DoesNotExist"}]}"#,
        ),
        (
            "canary!=true",
            r#"{"matchExpressions":[{"key":"canary","operator":"NotIn","values":["true"]}]}"#,
        ),
        (
            "app=web,tier in (a,b),!canary",
            r#"{"matchExpressions":[{"key":"canary","operator":"DoesNotExist"},{"key":"tier","operator":"In","values":["a","b"]}],"matchLabels":{"app":"web"}}"#,
        ),
        (
            "x in ()",
            r#"{"matchExpressions":[{"key":"x","operator":"In","values":[""]}]}"#,
        ),
        ("x=", r#"{"matchLabels":{"x":""}}"#),
        ("x=a,x=b", r#"{"matchLabels":{"x":"b"}}"#),
        (
            "app.kubernetes.io/name=web",
            r#"{"matchLabels":{"app.kubernetes.io/name":"web"}}"#,
        ),
        (
            "x>1",
            "error: operator 'gt' on key 'x' isn't supported in label selectors",
        ),
        (
            "a=b,x<1",
            "error: operator 'lt' on key 'x' isn't supported in label selectors",
        ),
    ];

    #[test]
    fn label_selector_cases() {
        for (input, expected) in LABEL_SELECTOR_CASES {
            assert_eq!(
                render_label_selector(input),
                *expected,
                "selector {input:?}"
            );
        }
    }

    #[test]
    fn accessors() {
        let sel = check_ok("b in (y,x),a");
        assert!(!sel.is_empty());
        assert!(Selector::default().is_empty());
        assert!(check_ok(" ").is_empty());
        assert_eq!(
            sel.requirements(),
            &[
                Requirement {
                    key: "a".to_owned(),
                    op: Operator::Exists,
                    values: vec![],
                },
                Requirement {
                    key: "b".to_owned(),
                    op: Operator::In,
                    values: vec!["x".to_owned(), "y".to_owned()],
                },
            ]
        );
        assert_eq!(Operator::GreaterThan.to_string(), "gt");
    }

    #[test]
    fn multibyte_input_is_error_not_panic() {
        for input in ["ü", "x in (ü", "x=ü,", "!ü", "€>1", "x in (a,€)", "é/x"] {
            assert!(Selector::parse(input).is_err(), "input: {input:?}");
        }
    }

    /// Every prefix of a valid selector parses or errors without panicking, and the complete
    /// string parses.
    #[test]
    fn every_prefix_is_ok_or_error() {
        let full = "app.kubernetes.io/name in (web, api),!canary,tier notin (,b),x>1,y==2,z!=";
        for end in 0..=full.len() {
            let prefix = full.get(..end).expect("ASCII");
            let _ = Selector::parse(prefix);
        }
        check_ok(full);
    }

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]([a-z0-9_]{0,8}[a-z0-9])?",
            "[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?",
            "[a-z0-9]{1,5}(\\.[a-z0-9]{1,5}){0,2}/[A-Za-z0-9]{1,6}",
            Just("in".to_owned()),
            Just("notin".to_owned()),
        ]
    }

    fn arb_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?",
            Just("in".to_owned()),
            Just("notin".to_owned()),
        ]
    }

    /// One requirement in any spelling the grammar accepts. The empty value goes first in a
    /// set, since `(a,,)` is one of the spellings Go rejects.
    fn arb_requirement() -> impl Strategy<Value = String> {
        let ws = || "[ \t]{0,2}";
        (
            arb_key(),
            0..9usize,
            (any::<bool>(), prop::collection::vec(arb_value(), 1..4)),
            any::<u32>(),
            ws(),
            ws(),
        )
            .prop_map(|(key, op, (with_empty, mut values), n, w1, w2)| {
                if with_empty {
                    values.insert(0, String::new());
                }
                let first = values.first().cloned().unwrap_or_default();
                match op {
                    0 => key,
                    1 => format!("!{w1}{key}"),
                    2 => format!("{key}{w1}={w2}{first}"),
                    3 => format!("{key}{w1}=={w2}{first}"),
                    4 => format!("{key}{w1}!={w2}{first}"),
                    5 => format!("{key} in{w1}({})", values.join(",")),
                    6 => format!("{key} notin{w1}({w2}{})", values.join(&format!(",{w2}"))),
                    7 => format!("{key}{w1}>{w2}{n}"),
                    _ => format!("{key}{w1}<{w2}{n}"),
                }
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = Selector::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_selector_alphabet(s in "[a-z0-9 !=<>(),./_-]{0,40}") {
            if let Ok(sel) = Selector::parse(&s) {
                prop_assert_eq!(Selector::parse(&sel.to_string()), Ok(sel.clone()));
                let _ = sel.to_prom_matchers();
                let _ = sel.to_label_selector();
            }
        }

        #[test]
        fn display_round_trips(reqs in prop::collection::vec(arb_requirement(), 0..5)) {
            let input = reqs.join(",");
            let sel = Selector::parse(&input);
            prop_assert!(sel.is_ok(), "{:?}: {:?}", input, sel);
            let sel = sel.unwrap();
            let shown = sel.to_string();
            prop_assert_eq!(Selector::parse(&shown), Ok(sel.clone()), "{:?} -> {:?}", input, shown);
            prop_assert_eq!(sel.requirements().len(), reqs.len());
            prop_assert!(sel.requirements().windows(2).all(|w| w[0].key <= w[1].key));
        }
    }
}
