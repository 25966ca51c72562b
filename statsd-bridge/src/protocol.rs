//! DogStatsD/StatsD line grammar: one line in, one [`Line`] out, borrowing from the input.
//!
//! ```text
//! name[tags]:value[:value…]|type[|@rate][|#tag,k:v…][|c:container][|T unix-ts][|unknown…]
//! _e{title_len,text_len}:title|text[|d:ts][|h:host][|k:key][|p:prio][|s:src][|t:alert][|#tags]
//! _sc|name|status[|d:ts][|h:host][|#tags][|m:message]
//! ```
//!
//! Parsing never logs and never panics: a rejected line is a [`ParseError`] whose
//! [`ParseError::reason`] labels `statsd_bridge_lines_rejected_total`. Semantics that need
//! state (deltas, sample-rate weights, ms → s) belong to the store, not here.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use nom::bytes::complete::{tag, take_while1};
use nom::character::complete::digit1;
use nom::combinator::{map, map_res};
use nom::{IResult as NomResult, Parser};

type IResult<'a, O> = NomResult<&'a str, O, LineError>;

/// Bytes scanned a word at a time before `memchr` takes the rest: most fields are shorter,
/// and such a scan costs less than `memchr`'s set-up.
const MEMCHR_MIN: usize = 64;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is zero, and possibly of bytes above the first such
/// one (so only the lowest set bit is meaningful).
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(LO) & !w & HI
}

/// The high bit of each byte of `w` equal to one of `bytes` (lowest set bit meaningful).
fn matches_any(w: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |m, &b| m | zero_bytes(w ^ (LO * u64::from(b))))
}

/// The first byte of `hay` that is one of `bytes` (one to three of them).
fn find_any(hay: &[u8], bytes: &[u8]) -> Option<usize> {
    let mut chunks = hay.chunks_exact(8);
    let mut at = 0;
    for chunk in chunks.by_ref() {
        if let Ok(word) = <[u8; 8]>::try_from(chunk) {
            let m = matches_any(u64::from_le_bytes(word), bytes);
            if m != 0 {
                return Some(at + (m.trailing_zeros() / 8) as usize);
            }
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter().position(|c| bytes.contains(c)).map(|i| at + i)
}

/// The first `b` in `hay`: its first bytes a word at a time (the byte is usually there),
/// the rest by `memchr`.
fn find_byte(hay: &[u8], b: u8) -> Option<usize> {
    match hay.split_at_checked(MEMCHR_MIN) {
        None => find_any(hay, &[b]),
        Some((head, rest)) => {
            find_any(head, &[b]).or_else(|| memchr::memchr(b, rest).map(|i| i + MEMCHR_MIN))
        }
    }
}

/// Splits `s` at the first ASCII byte `sep`. Cutting at an ASCII byte always lands on a
/// character boundary.
fn split_once_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    let i = find_byte(s.as_bytes(), sep)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// A nom parser taking everything up to the first `sep` and consuming `sep` too; fails
/// with `reason` when there is none. The scan is one `memchr`.
fn till_byte<'a>(sep: u8, reason: ParseError) -> impl Fn(&'a str) -> IResult<'a, &'a str> {
    move |input| match split_once_byte(input, sep) {
        Some((head, rest)) => Ok((rest, head)),
        None => Err(nom::Err::Failure(LineError(reason))),
    }
}

/// `str::split` on an ASCII byte, without the char-pattern machinery.
#[derive(Debug, Clone)]
struct SplitByte<'a> {
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> Iterator for SplitByte<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match split_once_byte(rest, self.sep) {
            Some((head, tail)) => {
                self.rest = Some(tail);
                Some(head)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

fn split_byte(s: &str, sep: u8) -> SplitByte<'_> {
    SplitByte { rest: Some(s), sep }
}

/// Which name-side tag syntaxes are read (DogStatsD `|#` tags are always read when enabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// DogStatsD `|#k:v,k2:v2`.
    pub dogstatsd_tags: bool,
    /// InfluxDB `name,k=v:1|c`.
    pub influxdb_tags: bool,
    /// Librato `name#k=v:1|c`.
    pub librato_tags: bool,
    /// SignalFx `name[k=v]:1|c`.
    pub signalfx_tags: bool,
    /// Tags per line at most; a line with more is rejected.
    pub max_tags: usize,
    /// Bytes per tag (`key:value`) at most; a line with a longer tag is rejected.
    pub max_tag_length: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            dogstatsd_tags: true,
            influxdb_tags: true,
            librato_tags: true,
            signalfx_tags: true,
            max_tags: 100,
            max_tag_length: 1024,
        }
    }
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// A metric sample (possibly several packed values).
    Metric(Sample<'a>),
    /// A DogStatsD event `_e{…}`.
    Event(Event<'a>),
    /// A DogStatsD service check `_sc|…`.
    ServiceCheck(ServiceCheck<'a>),
}

/// The StatsD metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// `c`
    Counter,
    /// `g`
    Gauge,
    /// `ms`: values in milliseconds.
    Timer,
    /// `h`
    Histogram,
    /// `d`
    Distribution,
    /// `s`: the value is a member, not a number.
    Set,
}

impl MetricType {
    /// The name used in self-metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Timer => "timer",
            Self::Histogram => "histogram",
            Self::Distribution => "distribution",
            Self::Set => "set",
        }
    }
}

/// A numeric value as written; `signed` is true when it had a leading `+` or `-`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Value {
    /// The number.
    pub value: f64,
    /// Whether the text started with `+` or `-` (a gauge delta in statsd_exporter's reading).
    pub signed: bool,
}

/// A metric line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The raw metric name, before sanitizing.
    pub name: &'a str,
    /// The rest of the name after a mid-name SignalFx tag section: `foo.[k=v]bar` is
    /// `foo.` + `bar`. Empty for every other line.
    pub name_suffix: &'a str,
    /// The type field.
    pub kind: MetricType,
    /// The first value (for sets, unused: see [`Sample::set_member`]).
    first: Value,
    /// The raw text of the values after the first, `:`-separated, already validated.
    rest: &'a str,
    /// The raw value text (the member for sets).
    raw_value: &'a str,
    /// Sample rate in (0, 1]; 1 when absent or invalid.
    pub rate: f64,
    /// True when a rate was given but unparsable or outside (0, 1] (and so read as 1).
    pub rate_invalid: bool,
    /// Tags from the name and from `|#`.
    pub tags: Tags<'a>,
    /// DogStatsD `|c:` container ID (for origin detection, never a label).
    pub container_id: Option<&'a str>,
    /// DogStatsD `|T` timestamp in Unix seconds.
    pub timestamp: Option<i64>,
}

impl<'a> Sample<'a> {
    /// Every value of the line (DogStatsD v1.1 packs several: `name:1:2:3|h`).
    pub fn values(&self) -> impl Iterator<Item = Value> + 'a {
        let rest = self.rest;
        std::iter::once(self.first).chain(
            split_byte(rest, b':')
                .filter(|s| !s.is_empty())
                .filter_map(|s| parse_value(s).ok()),
        )
    }

    /// The member of a set line (`name:member|s`).
    pub fn set_member(&self) -> &'a str {
        self.raw_value
    }
}

/// Tags of a line: name-side (InfluxDB, Librato, SignalFx) and DogStatsD `|#`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tags<'a> {
    /// `k=v,k2=v2` from the name, if any.
    pub name_side: &'a str,
    /// `k:v,k2` from `|#`, if any.
    pub dogstatsd: &'a str,
}

/// A tag as read, or why it was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag<'a> {
    /// A key with a non-empty value.
    Pair(&'a str, &'a str),
    /// A tag with no value or an empty key or value: dropped, as statsd_exporter does
    /// (Prometheus treats an empty label as absent).
    Skipped,
}

impl<'a> Tags<'a> {
    /// True when the line carries no tag text at all.
    pub fn is_empty(&self) -> bool {
        self.name_side.is_empty() && self.dogstatsd.is_empty()
    }

    /// Every tag in order: name-side first, then DogStatsD. Later duplicates win downstream.
    pub fn iter(&self) -> impl Iterator<Item = Tag<'a>> + 'a {
        let name_side = split_byte(self.name_side, b',')
            .filter(|t| !t.is_empty())
            .map(|t| split_tag(t, b'='));
        let dd = split_byte(self.dogstatsd, b',')
            .map(|t| t.strip_prefix('#').unwrap_or(t))
            .filter(|t| !t.is_empty())
            .map(|t| split_tag(t, b':'));
        name_side.chain(dd)
    }
}

fn split_tag(t: &str, sep: u8) -> Tag<'_> {
    match split_once_byte(t, sep) {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Tag::Pair(k, v),
        _ => Tag::Skipped,
    }
}

/// A DogStatsD event. Title and text are kept for logs; they never become labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// The title.
    pub title: &'a str,
    /// The text.
    pub text: &'a str,
    /// `t:` alert type; `info` when absent.
    pub alert_type: AlertType,
    /// `#` tags.
    pub tags: Tags<'a>,
}

/// Event alert types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlertType {
    /// `info` (the default).
    #[default]
    Info,
    /// `warning`
    Warning,
    /// `error`
    Error,
    /// `success`
    Success,
}

impl AlertType {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Success => "success",
        }
    }
}

/// A DogStatsD service check.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceCheck<'a> {
    /// The check name.
    pub name: &'a str,
    /// 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    pub status: u8,
    /// `#` tags.
    pub tags: Tags<'a>,
}

/// Why a line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    /// The line is not valid UTF-8.
    #[error("line is not valid utf-8")]
    InvalidUtf8,
    /// No `:` between name and value.
    #[error("no `:` after the metric name")]
    MissingColon,
    /// The name is empty.
    #[error("empty metric name")]
    EmptyName,
    /// No `|type` after the value.
    #[error("no `|type` after the value")]
    MissingType,
    /// The type is not one of c, g, ms, h, d, s.
    #[error("unknown metric type")]
    UnknownType,
    /// A value is not a number.
    #[error("value is not a number")]
    InvalidValue,
    /// A counter value below zero.
    #[error("counter value is negative")]
    NegativeCounter,
    /// A counter value that is NaN or infinite.
    #[error("counter value is not finite")]
    NonFiniteCounter,
    /// Name-side tags and `|#` tags on one line.
    #[error("tags both in the name and after `|#`")]
    MixedTagStyles,
    /// An `_e{…}` line that doesn't follow the event grammar.
    #[error("malformed event")]
    MalformedEvent,
    /// An `_sc|…` line that doesn't follow the service-check grammar.
    #[error("malformed service check")]
    MalformedServiceCheck,
    /// More tags than `max_tags`.
    #[error("too many tags")]
    TooManyTags,
    /// A tag longer than `max_tag_length`.
    #[error("tag too long")]
    TagTooLong,
}

impl ParseError {
    /// Every reason, for pre-registering the rejection counters.
    pub const ALL: [ParseError; 13] = [
        Self::InvalidUtf8,
        Self::MissingColon,
        Self::EmptyName,
        Self::MissingType,
        Self::UnknownType,
        Self::InvalidValue,
        Self::NegativeCounter,
        Self::NonFiniteCounter,
        Self::MixedTagStyles,
        Self::MalformedEvent,
        Self::MalformedServiceCheck,
        Self::TooManyTags,
        Self::TagTooLong,
    ];

    /// The `reason` label of `statsd_bridge_lines_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::InvalidUtf8 => "invalid_utf8",
            Self::MissingColon => "missing_colon",
            Self::EmptyName => "empty_name",
            Self::MissingType => "missing_type",
            Self::UnknownType => "unknown_type",
            Self::InvalidValue => "invalid_value",
            Self::NegativeCounter => "negative_counter",
            Self::NonFiniteCounter => "non_finite_counter",
            Self::MixedTagStyles => "mixed_tag_styles",
            Self::MalformedEvent => "malformed_event",
            Self::MalformedServiceCheck => "malformed_service_check",
            Self::TooManyTags => "too_many_tags",
            Self::TagTooLong => "tag_too_long",
        }
    }
}

/// The nom error: carries the [`ParseError`] the failing step stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineError(ParseError);

impl<'a> nom::error::ParseError<&'a str> for LineError {
    fn from_error_kind(_input: &'a str, _kind: nom::error::ErrorKind) -> Self {
        LineError(ParseError::InvalidValue)
    }

    fn append(_input: &'a str, _kind: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

impl<'a, E> nom::error::FromExternalError<&'a str, E> for LineError {
    fn from_external_error(_input: &'a str, _kind: nom::error::ErrorKind, _e: E) -> Self {
        LineError(ParseError::InvalidValue)
    }
}

/// Runs `parser`, turning any failure into `reason`.
fn expect<'a, O>(
    mut parser: impl Parser<&'a str, Output = O, Error = LineError>,
    reason: ParseError,
) -> impl FnMut(&'a str) -> IResult<'a, O> {
    move |input| {
        parser
            .parse(input)
            .map_err(|_| nom::Err::Failure(LineError(reason)))
    }
}

/// Splits a datagram into lines: `\n` separated, a trailing `\r` stripped, empty lines skipped.
pub fn lines(datagram: &[u8]) -> Lines<'_> {
    Lines { rest: datagram }
}

/// The lines of a datagram; see [`lines`].
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let (line, rest) = match find_byte(self.rest, b'\n') {
                Some(i) => (
                    self.rest.get(..i).unwrap_or(&[]),
                    self.rest.get(i + 1..).unwrap_or(&[]),
                ),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                return Some(line);
            }
        }
        None
    }
}

/// Parses one line (without its line ending).
pub fn parse_line<'a>(line: &'a [u8], opts: &ParseOptions) -> Result<Line<'a>, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::InvalidUtf8)?;
    let result = if line.starts_with("_e{") {
        event(line, opts).map(|(_, e)| Line::Event(e))
    } else if line.starts_with("_sc|") {
        service_check(line, opts).map(|(_, sc)| Line::ServiceCheck(sc))
    } else {
        metric(line, opts).map(|(_, s)| Line::Metric(s))
    };
    let parsed = result.map_err(|e| match e {
        nom::Err::Error(LineError(r)) | nom::Err::Failure(LineError(r)) => r,
        nom::Err::Incomplete(_) => ParseError::MissingType,
    })?;
    let tags = match &parsed {
        Line::Metric(s) => &s.tags,
        Line::Event(e) => &e.tags,
        Line::ServiceCheck(sc) => &sc.tags,
    };
    check_tag_bounds(tags, opts)?;
    Ok(parsed)
}

/// Bounds what one line can make the store hold.
fn check_tag_bounds(tags: &Tags<'_>, opts: &ParseOptions) -> Result<(), ParseError> {
    // A tag takes a byte and a comma, so a section of `n` bytes holds at most `(n + 1) / 2`
    // tags: short sections (every typical line) need no scan.
    let (a, b) = (tags.name_side.len(), tags.dogstatsd.len());
    if a.max(b) <= opts.max_tag_length && a.div_ceil(2) + b.div_ceil(2) <= opts.max_tags {
        return Ok(());
    }
    let mut count = 0;
    for section in [tags.name_side, tags.dogstatsd] {
        // One pass per section: count non-empty tags and measure each.
        let mut len = 0usize;
        for &b in section.as_bytes().iter().chain(std::iter::once(&b',')) {
            if b != b',' {
                len += 1;
                continue;
            }
            if len > 0 {
                count += 1;
                if count > opts.max_tags {
                    return Err(ParseError::TooManyTags);
                }
                if len > opts.max_tag_length {
                    return Err(ParseError::TagTooLong);
                }
            }
            len = 0;
        }
    }
    Ok(())
}

fn metric<'a>(input: &'a str, opts: &ParseOptions) -> IResult<'a, Sample<'a>> {
    let fail = |r| nom::Err::Failure(LineError(r));
    let (input, raw_name) = till_byte(b':', ParseError::MissingColon)(input)?;
    let (name, name_suffix, name_side) = split_name_tags(raw_name, opts);
    if name.is_empty() && name_suffix.is_empty() {
        return Err(fail(ParseError::EmptyName));
    }
    let (input, raw_value) = till_byte(b'|', ParseError::MissingType)(input)?;
    let (input, kind) = metric_type(input)?;
    let mut sample = Sample {
        name,
        name_suffix,
        kind,
        first: Value {
            value: 0.0,
            signed: false,
        },
        rest: "",
        raw_value,
        rate: 1.0,
        rate_invalid: false,
        tags: Tags {
            name_side,
            dogstatsd: "",
        },
        container_id: None,
        timestamp: None,
    };
    if let Some(fields) = input.strip_prefix('|') {
        for field in split_byte(fields, b'|') {
            metric_field(field, &mut sample, opts);
        }
    }
    if !sample.tags.name_side.is_empty() && !sample.tags.dogstatsd.is_empty() {
        return Err(fail(ParseError::MixedTagStyles));
    }
    if kind == MetricType::Set {
        if raw_value.is_empty() {
            return Err(fail(ParseError::InvalidValue));
        }
    } else {
        let (first, rest) = validate_values(raw_value, kind)?;
        sample.first = first;
        sample.rest = rest;
    }
    Ok(("", sample))
}

/// The type field, which must be followed by the end of the line or `|`. A match on the
/// first byte: `alt` over six `tag`s cost more than the rest of a short line.
fn metric_type(input: &str) -> IResult<'_, MetricType> {
    let bytes = input.as_bytes();
    let (kind, len) = match bytes.first() {
        Some(b'm') if bytes.get(1) == Some(&b's') => (MetricType::Timer, 2),
        Some(b'c') => (MetricType::Counter, 1),
        Some(b'g') => (MetricType::Gauge, 1),
        Some(b'h') => (MetricType::Histogram, 1),
        Some(b'd') => (MetricType::Distribution, 1),
        Some(b's') => (MetricType::Set, 1),
        _ => return Err(nom::Err::Failure(LineError(ParseError::UnknownType))),
    };
    match input.get(len..) {
        Some(rest) if rest.is_empty() || rest.starts_with('|') => Ok((rest, kind)),
        _ => Err(nom::Err::Failure(LineError(ParseError::UnknownType))),
    }
}

/// Reads one `|field`; unknown and empty fields are skipped so newer protocol versions
/// (v1.5 `e:`, v1.6 `card:`, …) never cost a line.
fn metric_field<'a>(field: &'a str, sample: &mut Sample<'a>, opts: &ParseOptions) {
    let bytes = field.as_bytes();
    match bytes.first() {
        Some(b'@') => {
            let rate = field.get(1..).unwrap_or("");
            match parse_decimal(rate).map_or_else(|| rate.parse::<f64>(), Ok) {
                Ok(r) if r > 0.0 && r <= 1.0 => {
                    sample.rate = r;
                    sample.rate_invalid = false;
                }
                _ => {
                    sample.rate = 1.0;
                    sample.rate_invalid = true;
                }
            }
        }
        Some(b'#') if opts.dogstatsd_tags => {
            sample.tags.dogstatsd = field.get(1..).unwrap_or("");
        }
        Some(b'c') if bytes.get(1) == Some(&b':') => {
            let id = field.get(2..).unwrap_or("");
            sample.container_id = (!id.is_empty()).then_some(id);
        }
        Some(b'T') => sample.timestamp = field.get(1..).and_then(|ts| ts.parse().ok()),
        _ => {}
    }
}

/// Powers of ten that are exact in an `f64`, for [`parse_decimal`].
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The common case of a number, `[+-]digits[.digits]` with at most 15 digits, in one pass;
/// `None` for anything else (exponents, `inf`, long numbers), which `str::parse` then reads.
/// The result is exactly `str::parse`'s: the digits as an integer (below 2^53) and the power
/// of ten are both exact, so the one division rounds correctly (Clinger's fast path).
fn parse_decimal(s: &str) -> Option<f64> {
    let bytes = s.as_bytes();
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, bytes),
    };
    if digits.len() > 16 {
        return None;
    }
    let mut n = 0u64;
    let mut count = 0;
    let mut dot = None;
    for (i, &b) in digits.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                n = n * 10 + u64::from(b - b'0');
                count += 1;
            }
            b'.' if dot.is_none() => dot = Some(i),
            _ => return None,
        }
    }
    if count == 0 || count > 15 {
        return None;
    }
    let scale = dot.map_or(0, |i| digits.len() - 1 - i);
    let value = n as f64 / POW10.get(scale)?;
    Some(if negative { -value } else { value })
}

fn parse_value(s: &str) -> Result<Value, ParseError> {
    let signed = s.starts_with(['+', '-']);
    if let Some(value) = parse_decimal(s) {
        return Ok(Value { value, signed });
    }
    // Rust's float grammar is Go's minus `_` separators and hex floats; both are rare in
    // StatsD and both are rejected here rather than guessed at.
    let value = s.parse::<f64>().map_err(|_| ParseError::InvalidValue)?;
    // Out of range (`1e400`) is an error, as in Go; only a spelled-out infinity is infinite.
    if value.is_infinite() && !s.bytes().any(|b| b == b'i' || b == b'I') {
        return Err(ParseError::InvalidValue);
    }
    Ok(Value { value, signed })
}

fn validate_values(raw: &str, kind: MetricType) -> Result<(Value, &str), nom::Err<LineError>> {
    let fail = |r| nom::Err::Failure(LineError(r));
    let (first_text, rest) = split_once_byte(raw, b':').unwrap_or((raw, ""));
    let check = |s: &str| -> Result<Value, ParseError> {
        let v = parse_value(s)?;
        if kind == MetricType::Counter {
            if !v.value.is_finite() {
                return Err(ParseError::NonFiniteCounter);
            }
            if v.value < 0.0 {
                return Err(ParseError::NegativeCounter);
            }
        }
        Ok(v)
    };
    // Empty values in a packed list (`1::2`) are skipped, as the Datadog Agent does.
    let mut values = std::iter::once(first_text)
        .chain(split_byte(rest, b':'))
        .filter(|s| !s.is_empty());
    let first = check(values.next().ok_or(fail(ParseError::InvalidValue))?).map_err(fail)?;
    for v in values {
        check(v).map_err(fail)?;
    }
    // `rest` re-reads from after the first non-empty value.
    let rest = if first_text.is_empty() {
        split_once_byte(raw.trim_start_matches(':'), b':').map_or("", |(_, r)| r)
    } else {
        rest
    };
    Ok((first, rest))
}

/// Splits name-side tags off a raw name: SignalFx `a[k=v]b`, else Librato `a#k=v`, else
/// InfluxDB `a,k=v`. Returns the name, the name's suffix after a SignalFx section, and the
/// `k=v,…` text.
fn split_name_tags<'a>(raw: &'a str, opts: &ParseOptions) -> (&'a str, &'a str, &'a str) {
    // Most names carry no tags: one scan settles that.
    let tagged = if raw.len() >= MEMCHR_MIN {
        memchr::memchr3(b'[', b'#', b',', raw.as_bytes())
    } else {
        find_any(raw.as_bytes(), b"[#,")
    };
    if tagged.is_none() {
        return (raw, "", "");
    }
    if opts.signalfx_tags
        && let Some((before, after_open)) = split_once_byte(raw, b'[')
        && let Some((tags, after)) = split_once_byte(after_open, b']')
    {
        return (before, after, tags);
    }
    if opts.librato_tags
        && let Some((name, tags)) = split_once_byte(raw, b'#')
    {
        return (name, "", tags);
    }
    if opts.influxdb_tags
        && let Some((name, tags)) = split_once_byte(raw, b',')
    {
        return (name, "", tags);
    }
    (raw, "", "")
}

fn decimal(input: &str) -> IResult<'_, usize> {
    map_res(digit1, str::parse::<usize>).parse(input)
}

fn event<'a>(input: &'a str, opts: &ParseOptions) -> IResult<'a, Event<'a>> {
    let bad = ParseError::MalformedEvent;
    let (input, (_, title_len, _, text_len, _)) =
        expect((tag("_e{"), decimal, tag(","), decimal, tag("}:")), bad).parse(input)?;
    let (title, input) = take_len(input, title_len).ok_or(nom::Err::Failure(LineError(bad)))?;
    let input = input
        .strip_prefix('|')
        .ok_or(nom::Err::Failure(LineError(bad)))?;
    let (text, input) = take_len(input, text_len).ok_or(nom::Err::Failure(LineError(bad)))?;
    if !(input.is_empty() || input.starts_with('|')) || title.is_empty() {
        return Err(nom::Err::Failure(LineError(bad)));
    }
    let mut ev = Event {
        title,
        text,
        alert_type: AlertType::Info,
        tags: Tags::default(),
    };
    for field in split_byte(input, b'|').skip(1) {
        if let Some(t) = field.strip_prefix("t:") {
            ev.alert_type = match t {
                "warning" => AlertType::Warning,
                "error" => AlertType::Error,
                "success" => AlertType::Success,
                _ => AlertType::Info,
            };
        } else if let Some(tags) = field.strip_prefix('#')
            && opts.dogstatsd_tags
        {
            ev.tags.dogstatsd = tags;
        }
    }
    Ok(("", ev))
}

/// Takes `len` bytes when that is a character boundary; some clients count characters
/// rather than bytes, so that reading is tried too.
fn take_len(input: &str, len: usize) -> Option<(&str, &str)> {
    if input.is_char_boundary(len) && input.len() >= len {
        let (a, b) = input.split_at(len);
        if b.is_empty() || b.starts_with('|') {
            return Some((a, b));
        }
    }
    let byte_len = input
        .char_indices()
        .nth(len)
        .map_or(input.len(), |(i, _)| i);
    (input.chars().count() >= len).then(|| input.split_at(byte_len))
}

fn service_check<'a>(input: &'a str, opts: &ParseOptions) -> IResult<'a, ServiceCheck<'a>> {
    let bad = ParseError::MalformedServiceCheck;
    let (input, (_, name, _, status)) = expect(
        (
            tag("_sc|"),
            take_while1(|c| c != '|'),
            tag("|"),
            map(take_while1(|c: char| c.is_ascii_digit()), |s: &str| {
                s.parse::<u8>().ok()
            }),
        ),
        bad,
    )
    .parse(input)?;
    let status = status
        .filter(|s| *s <= 3)
        .ok_or(nom::Err::Failure(LineError(bad)))?;
    if !(input.is_empty() || input.starts_with('|')) {
        return Err(nom::Err::Failure(LineError(bad)));
    }
    let mut sc = ServiceCheck {
        name,
        status,
        tags: Tags::default(),
    };
    for field in split_byte(input, b'|').skip(1) {
        if field.starts_with("m:") {
            break; // The message is last and may contain anything, `|` included.
        }
        if let Some(tags) = field.strip_prefix('#')
            && opts.dogstatsd_tags
        {
            sc.tags.dogstatsd = tags;
        }
    }
    Ok(("", sc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    /// Renders a parse result compactly so each case is one readable string.
    fn render(input: &str) -> String {
        match parse_line(input.as_bytes(), &ParseOptions::default()) {
            Err(e) => format!("error {}", e.reason()),
            Ok(Line::Metric(s)) => {
                let mut out = format!("{}{} {}", s.name, s.name_suffix, s.kind.as_str());
                if s.kind == MetricType::Set {
                    let _ = write!(out, " member={}", s.set_member());
                } else {
                    let vals: Vec<String> = s
                        .values()
                        .map(|v| format!("{}{}", if v.signed { "±" } else { "" }, v.value))
                        .collect();
                    let _ = write!(out, " values={}", vals.join(","));
                }
                if s.rate != 1.0 || s.rate_invalid {
                    let _ = write!(
                        out,
                        " rate={}{}",
                        s.rate,
                        if s.rate_invalid { "!" } else { "" }
                    );
                }
                render_tags(&mut out, &s.tags);
                if let Some(c) = s.container_id {
                    let _ = write!(out, " container={c}");
                }
                if let Some(t) = s.timestamp {
                    let _ = write!(out, " ts={t}");
                }
                out
            }
            Ok(Line::Event(e)) => {
                let mut out = format!(
                    "event title={:?} text={:?} {}",
                    e.title,
                    e.text,
                    e.alert_type.as_str()
                );
                render_tags(&mut out, &e.tags);
                out
            }
            Ok(Line::ServiceCheck(sc)) => {
                let mut out = format!("service_check {} status={}", sc.name, sc.status);
                render_tags(&mut out, &sc.tags);
                out
            }
        }
    }

    fn render_tags(out: &mut String, tags: &Tags<'_>) {
        for t in tags.iter() {
            match t {
                Tag::Pair(k, v) => {
                    let _ = write!(out, " {k}={v}");
                }
                Tag::Skipped => out.push_str(" (skipped)"),
            }
        }
    }

    /// (input, expected rendering). Names follow statsd_exporter's `TestLineToEvents` where
    /// a case has a counterpart there.
    const CASES: &[(&str, &str)] = &[
        // Types.
        ("simple_counter:1|c", "simple_counter counter values=1"),
        ("simple_gauge:1|g", "simple_gauge gauge values=1"),
        ("simple_timer:200|ms", "simple_timer timer values=200"),
        (
            "simple_histogram:200|h",
            "simple_histogram histogram values=200",
        ),
        (
            "simple_distribution:200|d",
            "simple_distribution distribution values=200",
        ),
        ("simple_set:user-1|s", "simple_set set member=user-1"),
        ("set_with_colon:a:b|s", "set_with_colon set member=a:b"),
        // Gauge signs.
        ("gauge_plus:+5|g", "gauge_plus gauge values=±5"),
        ("gauge_minus:-5|g", "gauge_minus gauge values=±-5"),
        // Values.
        ("float:1.5|c", "float counter values=1.5"),
        ("exp:1e3|g", "exp gauge values=1000"),
        ("dot:.5|g", "dot gauge values=0.5"),
        ("nan_gauge:NaN|g", "nan_gauge gauge values=NaN"),
        ("inf_gauge:+Inf|g", "inf_gauge gauge values=±inf"),
        ("neg_counter:-1|c", "error negative_counter"),
        ("nan_counter:NaN|c", "error non_finite_counter"),
        ("inf_counter:Inf|c", "error non_finite_counter"),
        ("bad_value:abc|c", "error invalid_value"),
        ("underscore_value:1_000|c", "error invalid_value"),
        ("hex_value:0x10|g", "error invalid_value"),
        ("empty_value:|c", "error invalid_value"),
        ("big_value:1e400|g", "error invalid_value"),
        // Packed values (DogStatsD v1.1).
        ("packed_timer:1:2:3|ms", "packed_timer timer values=1,2,3"),
        (
            "packed_counter:1:2:3|c",
            "packed_counter counter values=1,2,3",
        ),
        ("packed_gauge:1:+2|g", "packed_gauge gauge values=1,±2"),
        ("packed_empty:1::2|h", "packed_empty histogram values=1,2"),
        (
            "packed_leading_empty::1:2|h",
            "packed_leading_empty histogram values=1,2",
        ),
        ("packed_bad:1:x|h", "error invalid_value"),
        ("packed_negative_counter:1:-1|c", "error negative_counter"),
        // Sample rates.
        ("rate:1|c|@0.1", "rate counter values=1 rate=0.1"),
        ("rate_one:1|c|@1", "rate_one counter values=1"),
        ("rate_zero:1|c|@0", "rate_zero counter values=1 rate=1!"),
        (
            "rate_above_one:1|c|@2",
            "rate_above_one counter values=1 rate=1!",
        ),
        (
            "rate_garbage:1|c|@bar",
            "rate_garbage counter values=1 rate=1!",
        ),
        (
            "rate_negative:1|ms|@-0.5",
            "rate_negative timer values=1 rate=1!",
        ),
        (
            "rate_timer:100|ms|@0.3",
            "rate_timer timer values=100 rate=0.3",
        ),
        // DogStatsD tags.
        (
            "tags:1|c|#env:prod,region:eu",
            "tags counter values=1 env=prod region=eu",
        ),
        (
            "tags_rate:1|c|@0.5|#env:prod",
            "tags_rate counter values=1 rate=0.5 env=prod",
        ),
        (
            "tags_first:1|c|#env:prod|@0.5",
            "tags_first counter values=1 rate=0.5 env=prod",
        ),
        (
            "bare_tag:1|c|#flag,env:prod",
            "bare_tag counter values=1 (skipped) env=prod",
        ),
        (
            "empty_tag_value:1|c|#k:",
            "empty_tag_value counter values=1 (skipped)",
        ),
        (
            "empty_tag_key:1|c|#:v",
            "empty_tag_key counter values=1 (skipped)",
        ),
        ("empty_tags:1|c|#", "empty_tags counter values=1"),
        (
            "double_comma:1|c|#a:1,,b:2",
            "double_comma counter values=1 a=1 b=2",
        ),
        (
            "colon_in_value:1|c|#url:http://x",
            "colon_in_value counter values=1 url=http://x",
        ),
        (
            "hash_per_tag:1|c|#a:1,#b:2",
            "hash_per_tag counter values=1 a=1 b=2",
        ),
        (
            "unicode_tag:1|c|#city:Zürich",
            "unicode_tag counter values=1 city=Zürich",
        ),
        // Name-side tags.
        (
            "influx,env=prod,region=eu:1|c",
            "influx counter values=1 env=prod region=eu",
        ),
        (
            "librato#env=prod,region=eu:1|c",
            "librato counter values=1 env=prod region=eu",
        ),
        (
            "signalfx[env=prod,region=eu]:1|c",
            "signalfx counter values=1 env=prod region=eu",
        ),
        (
            "signalfx.[env=prod]mid:1|c",
            "signalfx.mid counter values=1 env=prod",
        ),
        (
            "[env=prod]signalfx_first:1|c",
            "signalfx_first counter values=1 env=prod",
        ),
        (
            "influx_bare,flag:1|c",
            "influx_bare counter values=1 (skipped)",
        ),
        ("mixed,env=prod:1|c|#region:eu", "error mixed_tag_styles"),
        // Extra DogStatsD fields.
        (
            "cid:1|c|#env:prod|c:abc123",
            "cid counter values=1 env=prod container=abc123",
        ),
        (
            "cid_v14:1|c|c:ci-abc",
            "cid_v14 counter values=1 container=ci-abc",
        ),
        ("empty_cid:1|c|c:", "empty_cid counter values=1"),
        (
            "ts:1|c|#env:prod|T1700000000",
            "ts counter values=1 env=prod ts=1700000000",
        ),
        ("ts_garbage:1|g|Tjunk", "ts_garbage gauge values=1"),
        (
            "ext:1|c|#k:v|c:abc|T123|e:ext|card:low",
            "ext counter values=1 k=v container=abc ts=123",
        ),
        ("unknown_field:1|c|x:1", "unknown_field counter values=1"),
        ("trailing_pipe:1|c|", "trailing_pipe counter values=1"),
        ("empty_field:1|c||#a:b", "empty_field counter values=1 a=b"),
        // Rejections.
        ("no_colon", "error missing_colon"),
        (":1|c", "error empty_name"),
        ("no_type:1", "error missing_type"),
        ("empty_type:1|", "error unknown_type"),
        ("bad_type:1|x", "error unknown_type"),
        ("type_prefix:1|cc", "error unknown_type"),
        ("type_msx:1|msx", "error unknown_type"),
        ("cr_type:1|c\r", "error unknown_type"),
        // Events.
        (
            "_e{5,4}:title|text",
            "event title=\"title\" text=\"text\" info",
        ),
        (
            "_e{5,4}:title|text|#env:prod",
            "event title=\"title\" text=\"text\" info env=prod",
        ),
        (
            "_e{5,4}:title|text|d:123|h:host|k:key|p:low|s:src|t:error|#a:b",
            "event title=\"title\" text=\"text\" error a=b",
        ),
        ("_e{3,3}:a|b|c|d|e", "event title=\"a|b\" text=\"c|d\" info"),
        (
            "_e{7,2}:Zürich|hi",
            "event title=\"Zürich\" text=\"hi\" info",
        ),
        (
            "_e{6,2}:Zürich|hi",
            "event title=\"Zürich\" text=\"hi\" info",
        ),
        ("_e{5,4}:ti|text", "error malformed_event"),
        ("_e{x,4}:title|text", "error malformed_event"),
        ("_e{0,4}:|text", "error malformed_event"),
        // Service checks.
        (
            "_sc|vsc.check|0|#env:prod",
            "service_check vsc.check status=0 env=prod",
        ),
        (
            "_sc|vsc.check|2|d:1|h:host|#a:b|m:bad | thing #x:y",
            "service_check vsc.check status=2 a=b",
        ),
        ("_sc|vsc.check|4", "error malformed_service_check"),
        ("_sc|vsc.check|", "error malformed_service_check"),
        ("_sc||0", "error malformed_service_check"),
        ("_sc|x|0x", "error malformed_service_check"),
    ];

    #[test]
    fn grammar_cases() {
        let mut failures = Vec::new();
        for (input, want) in CASES {
            let got = render(input);
            if got != *want {
                failures.push(format!("{input:?}\n   want: {want}\n    got: {got}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn every_reason_has_a_case() {
        for reason in ParseError::ALL {
            let want = format!("error {}", reason.reason());
            let covered = CASES.iter().any(|(_, w)| *w == want);
            assert!(
                covered
                    || matches!(
                        reason,
                        // Covered by `tag_bounds` and below.
                        ParseError::InvalidUtf8 | ParseError::TooManyTags | ParseError::TagTooLong
                    ),
                "no case for {want}"
            );
        }
        assert_eq!(
            parse_line(b"a:1|c|#k:\xff", &ParseOptions::default()),
            Err(ParseError::InvalidUtf8)
        );
    }

    #[test]
    fn tag_bounds() {
        let opts = ParseOptions {
            max_tags: 2,
            max_tag_length: 5,
            ..ParseOptions::default()
        };
        let parse = |l: &str| {
            parse_line(l.as_bytes(), &opts)
                .map(|_| ())
                .map_err(|e| e.reason())
        };
        assert_eq!(parse("a:1|c|#a:1,b:2"), Ok(()));
        assert_eq!(parse("a:1|c|#a:1,b:2,c:3"), Err("too_many_tags"));
        assert_eq!(parse("a,x=1,y=2,z=3:1|c"), Err("too_many_tags"));
        assert_eq!(parse("a:1|c|#abc:12"), Err("tag_too_long"));
        assert_eq!(parse("_sc|x|0|#a:1,b:2,c:3"), Err("too_many_tags"));
        assert_eq!(parse("a:1|c|#a:1,,,b:2"), Ok(()));
    }

    #[test]
    fn tag_styles_can_be_disabled() {
        let opts = ParseOptions {
            dogstatsd_tags: false,
            influxdb_tags: false,
            librato_tags: false,
            signalfx_tags: false,
            ..ParseOptions::default()
        };
        let Ok(Line::Metric(s)) = parse_line(b"a,b=c:1|c|#k:v", &opts) else {
            panic!()
        };
        assert_eq!((s.name, s.tags.is_empty()), ("a,b=c", true));
    }

    #[test]
    fn lines_split_on_lf_and_crlf_and_skip_empty() {
        let got: Vec<&[u8]> = lines(b"a:1|c\r\nb:2|c\n\nc:3|c\n").collect();
        assert_eq!(got, vec![&b"a:1|c"[..], b"b:2|c", b"c:3|c"]);
        assert_eq!(lines(b"\n").count(), 0);
    }

    #[test]
    fn multibyte_value_prefix_is_error_not_panic() {
        for input in [
            "é:1|c",
            "a:é|c",
            "a:1|é",
            "_e{1,1}:é|x",
            "_e{99999999999999999999,1}:a|b",
        ] {
            let _ = parse_line(input.as_bytes(), &ParseOptions::default());
        }
    }

    proptest::proptest! {
        #[test]
        fn word_scans_find_what_memchr_finds(
            hay in proptest::collection::vec(proptest::sample::select(b"ab:|,#[\n\x00\xff".to_vec()), 0..150),
        ) {
            for b in [b':', b'|', b'\n', 0, 0xff] {
                proptest::prop_assert_eq!(find_byte(&hay, b), memchr::memchr(b, &hay));
            }
            proptest::prop_assert_eq!(
                find_any(&hay, b"[#,"),
                memchr::memchr3(b'[', b'#', b',', &hay)
            );
        }

        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            for line in lines(&bytes) {
                let _ = parse_line(line, &ParseOptions::default());
            }
        }

        #[test]
        fn statsd_shaped_input_never_panics(s in "[a-z_.]{0,5}[:|#@,=\\[\\]a-z0-9.+-]{0,30}") {
            let _ = parse_line(s.as_bytes(), &ParseOptions::default());
        }

        #[test]
        fn valid_lines_round_trip(
            name in "[a-z][a-z0-9_.]{0,15}",
            value in 0u32..1_000_000,
            kind in proptest::sample::select(vec!["c", "g", "ms", "h", "d"]),
            tags in proptest::collection::vec(("[a-z]{1,5}", "[a-z0-9]{1,5}"), 0..4),
        ) {
            let tag_text: Vec<String> = tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            let line = if tags.is_empty() {
                format!("{name}:{value}|{kind}")
            } else {
                format!("{name}:{value}|{kind}|#{}", tag_text.join(","))
            };
            let Ok(Line::Metric(s)) = parse_line(line.as_bytes(), &ParseOptions::default()) else {
                panic!("{line} did not parse");
            };
            proptest::prop_assert_eq!(s.name, name.as_str());
            proptest::prop_assert_eq!(s.values().collect::<Vec<_>>(), vec![Value { value: f64::from(value), signed: false }]);
            let got: Vec<(String, String)> = s.tags.iter().filter_map(|t| match t {
                Tag::Pair(k, v) => Some((k.to_owned(), v.to_owned())),
                Tag::Skipped => None,
            }).collect();
            proptest::prop_assert_eq!(got, tags);
        }
    }
}
