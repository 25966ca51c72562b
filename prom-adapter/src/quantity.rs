//! Canonical Kubernetes Quantity strings from Prometheus sample values.
//!
//! A `resource.Quantity` is fixed-point decimal, and the HPA reads it with
//! `MilliValue()`. So we convert the sample's decimal string exactly and never go
//! through `f64`: a float round trip would turn `"0.1"` into
//! `"100000000000000005551n"`.
//!
//! The rules follow apimachinery `pkg/api/resource` (`quantity.go`, `amount.go`,
//! `math.go`):
//! - values finer than nano round *away from zero*: `0.9n` is `1n` and `-0.9n`
//!   is `-1n`, so you never get zero when you asked for something;
//! - the canonical form has no fractional digits and the largest exponent that
//!   is a multiple of three, with suffixes `n u m "" k M G T P E`; past `E`,
//!   DecimalSI has no suffix, so it falls back to `e21`, `e24`, ...;
//! - `MilliValue()` also rounds away from zero: ceil for positive values,
//!   floor for negative ones.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The finest scale a Quantity keeps (nano).
const NANO_EXP: i64 = -9;
/// The scale `MilliValue()` reports in.
const MILLI_EXP: i64 = -3;
/// Largest magnitude, in nano units, whose milli value fits an `i64`: 9223372036854775.807.
const MAX_NANOS_FOR_MILLI: u128 = i64::MAX as u128 * 1_000_000;
/// What an out-of-range sample becomes: the largest whole number whose milli value fits an `i64`.
const CLAMP: i64 = i64::MAX / 1000;
/// apimachinery silently caps BinarySI quantities at 2^63-1; in nano units.
const MAX_BINARY_NANOS: u128 = i64::MAX as u128 * 1_000_000_000;
/// Exponents beyond this all mean "clamp" or "round to 1n", so parsing saturates here.
const MAX_EXPONENT: i64 = 1_000_000_000_000_000;
/// How much of a bad input an error keeps, so a hostile upstream cannot flood logs.
const MAX_ERROR_INPUT_CHARS: usize = 64;

/// A canonical Quantity string ready for the wire, and whether it was clamped.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The value in canonical DecimalSI form, e.g. `1500m`.
    pub quantity: Quantity,
    /// The sample was beyond what the HPA can read (`MilliValue()` overflows
    /// `i64`) and was replaced by ±9223372036854775; callers count these.
    pub clamped: bool,
}

/// Why a sample value has no Quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Prometheus returned `NaN`, e.g. a division by zero in the query.
    #[error("value is NaN")]
    NaN,
    /// The sample is `+Inf`.
    #[error("value is +Inf")]
    PositiveInfinity,
    /// The sample is `-Inf`.
    #[error("value is -Inf")]
    NegativeInfinity,
    /// Not a number (or not a valid Quantity); holds the start of the input.
    #[error("value {0:?} is not a number")]
    Unparsable(String),
}

impl ValueError {
    /// Short label for a rejected-values metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NaN => "nan",
            Self::PositiveInfinity => "+inf",
            Self::NegativeInfinity => "-inf",
            Self::Unparsable(_) => "unparsable",
        }
    }

    fn unparsable(input: &str) -> Self {
        Self::Unparsable(input.chars().take(MAX_ERROR_INPUT_CHARS).collect())
    }
}

/// Converts a Prometheus JSON sample value (`"24.233138021"`, `"1e+20"`, `"NaN"`).
pub fn from_prometheus(value: &str) -> Result<Converted, ValueError> {
    parse_sample(value).map(|decimal| clamp_for_hpa(decimal.round_away(NANO_EXP)))
}

/// Converts a sample counting bytes to the Quantity metrics-server writes for memory
/// (BinarySI): whole bytes, rounded away from zero as a Quantity rounds; `Ki`…`Ei` when a
/// multiple of 1024 (`104857600` is `100Mi`), else the plain number; below 1024 the DecimalSI
/// form apimachinery falls back to (`1000` is `1k`). Clamped like [`from_prometheus`].
pub fn bytes_from_prometheus(value: &str) -> Result<Converted, ValueError> {
    let decimal = parse_sample(value)?.round_away(0);
    let magnitude = decimal
        .magnitude_in(0)
        .filter(|m| *m <= CLAMP.unsigned_abs().into());
    let Some(mut magnitude) = magnitude else {
        let clamped = Decimal::from_i64(if decimal.negative { -CLAMP } else { CLAMP });
        return Ok(Converted {
            quantity: Quantity(clamped.to_canonical()),
            clamped: true,
        });
    };
    if magnitude < 1024 {
        return Ok(Converted {
            quantity: Quantity(decimal.to_canonical()),
            clamped: false,
        });
    }
    let mut power = 0;
    while power < BINARY_SUFFIXES.len() && magnitude % 1024 == 0 {
        magnitude /= 1024;
        power += 1;
    }
    let suffix = power
        .checked_sub(1)
        .and_then(|i| BINARY_SUFFIXES.get(i))
        .copied()
        .unwrap_or("");
    let sign = if decimal.negative { "-" } else { "" };
    Ok(Converted {
        quantity: Quantity(format!("{sign}{magnitude}{suffix}")),
        clamped: false,
    })
}

/// BinarySI suffixes, for 1024^1 to 1024^6.
const BINARY_SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// Converts an `f64` through its shortest round-trip decimal, so `0.1` stays `100m`.
pub fn from_f64(value: f64) -> Result<Converted, ValueError> {
    if value.is_nan() {
        return Err(ValueError::NaN);
    }
    if value.is_infinite() {
        return Err(if value > 0.0 {
            ValueError::PositiveInfinity
        } else {
            ValueError::NegativeInfinity
        });
    }
    // `{:e}` is shortest round-trip like `{}` but stays short for 1e300.
    from_prometheus(&format!("{value:e}"))
}

/// Parses a Quantity string (any valid apimachinery form incl. binary suffixes
/// Ki..Ei and exponents) and returns its MilliValue as the HPA computes it
/// (ceil of v*1000, saturating) — used by tests and the HPA replica calculator
/// in e2e tests.
///
/// Negative values round away from zero (`-1500u` gives -2), as apimachinery's
/// int64 path (`negativeScaleInt64`) and current `scaledValue` do; out-of-range
/// values saturate at `i64::MIN`/`i64::MAX` where older apimachinery overflowed.
pub fn milli_value(quantity: &str) -> Result<i64, ValueError> {
    parse_quantity(quantity).map(|decimal| decimal.milli_value())
}

/// Canonical DecimalSI form of any valid Quantity string (what apimachinery's
/// String() prints after parsing), for the test table.
///
/// Binary (`1Ki`) and exponent (`1e3`) inputs are printed as DecimalSI
/// (`1024`, `1k`) because that is the only format this adapter emits.
pub fn canonicalize(quantity: &str) -> Result<String, ValueError> {
    parse_quantity(quantity).map(|decimal| decimal.to_canonical())
}

/// Replaces values the HPA cannot read with the nearest value it can.
fn clamp_for_hpa(decimal: Decimal) -> Converted {
    let clamped = decimal
        .magnitude_in(NANO_EXP)
        .is_none_or(|nanos| nanos > MAX_NANOS_FOR_MILLI);
    let decimal = if clamped {
        Decimal::from_i64(if decimal.negative { -CLAMP } else { CLAMP })
    } else {
        decimal
    };
    Converted {
        quantity: Quantity(decimal.to_canonical()),
        clamped,
    }
}

/// An exact decimal: `±digits × 10^exp`.
///
/// Always normalized: no leading or trailing zero digits, and zero is an empty,
/// non-negative digit list. Unbounded, because quantities are (`1e100` is valid).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    /// Digit values 0..=9, most significant first.
    digits: Vec<u8>,
    exp: i64,
}

impl Decimal {
    fn zero() -> Self {
        Self {
            negative: false,
            digits: Vec::new(),
            exp: 0,
        }
    }

    /// Builds a value from ASCII digits (the caller has checked they are digits).
    fn new(negative: bool, ascii: impl IntoIterator<Item = u8>, exp: i64) -> Self {
        let digits = ascii
            .into_iter()
            .map(|byte| byte.wrapping_sub(b'0'))
            .skip_while(|digit| *digit == 0)
            .collect();
        Self {
            negative,
            digits,
            exp,
        }
        .normalized()
    }

    fn from_i64(value: i64) -> Self {
        Self::new(value < 0, value.unsigned_abs().to_string().into_bytes(), 0)
    }

    fn normalized(mut self) -> Self {
        match self.digits.iter().position(|digit| *digit != 0) {
            None => return Self::zero(),
            Some(0) => {}
            Some(leading) => {
                self.digits.drain(..leading);
            }
        }
        let trailing = self.digits.iter().rev().take_while(|d| **d == 0).count();
        self.digits.truncate(self.digits.len() - trailing);
        self.exp = self
            .exp
            .saturating_add(i64::try_from(trailing).unwrap_or(i64::MAX));
        self
    }

    /// Rounds to a multiple of `10^unit`, away from zero, like apimachinery.
    fn round_away(mut self, unit: i64) -> Self {
        if self.digits.is_empty() || self.exp >= unit {
            return self;
        }
        // Normalized digits end in a non-zero digit, so dropping any is inexact.
        let drop = unit.abs_diff(self.exp);
        let keep = u64::try_from(self.digits.len())
            .ok()
            .and_then(|len| len.checked_sub(drop))
            .and_then(|keep| usize::try_from(keep).ok())
            .unwrap_or(0);
        self.digits.truncate(keep);
        self.exp = unit;
        self.increment_magnitude();
        self.normalized()
    }

    fn increment_magnitude(&mut self) {
        for digit in self.digits.iter_mut().rev() {
            if *digit == 9 {
                *digit = 0;
            } else {
                *digit += 1;
                return;
            }
        }
        self.digits.insert(0, 1);
    }

    /// Multiplies by a small factor; used for binary suffixes (× 1024 each).
    fn mul_small(mut self, factor: u32) -> Self {
        let mut carry = 0u64;
        for digit in self.digits.iter_mut().rev() {
            let product = u64::from(*digit) * u64::from(factor) + carry;
            *digit = (product % 10) as u8;
            carry = product / 10;
        }
        while carry > 0 {
            self.digits.insert(0, (carry % 10) as u8);
            carry /= 10;
        }
        self.normalized()
    }

    /// The magnitude in units of `10^unit`, if it is a whole number that fits.
    fn magnitude_in(&self, unit: i64) -> Option<u128> {
        if self.digits.is_empty() {
            return Some(0);
        }
        let zeros = u32::try_from(self.exp.checked_sub(unit)?).ok()?;
        let scale = 10u128.checked_pow(zeros)?;
        let mut magnitude = 0u128;
        for digit in &self.digits {
            magnitude = magnitude.checked_mul(10)?.checked_add(u128::from(*digit))?;
        }
        magnitude.checked_mul(scale)
    }

    fn milli_value(&self) -> i64 {
        let magnitude = self.clone().round_away(MILLI_EXP).magnitude_in(MILLI_EXP);
        if self.negative {
            magnitude
                .and_then(|m| i128::try_from(m).ok())
                .and_then(|m| i64::try_from(-m).ok())
                .unwrap_or(i64::MIN)
        } else {
            magnitude
                .and_then(|m| i64::try_from(m).ok())
                .unwrap_or(i64::MAX)
        }
    }

    /// DecimalSI text: integer mantissa, exponent lowered to a multiple of three.
    fn to_canonical(&self) -> String {
        if self.digits.is_empty() {
            return "0".to_owned();
        }
        let pad = self.exp.rem_euclid(3);
        // i128: `exp - pad` must not overflow even for a saturated exponent.
        let exp3 = i128::from(self.exp) - i128::from(pad);
        let mut out = String::with_capacity(self.digits.len() + 8);
        if self.negative {
            out.push('-');
        }
        out.extend(self.digits.iter().map(|digit| char::from(b'0' + digit)));
        for _ in 0..pad {
            out.push('0');
        }
        match exp3 {
            -9 => out.push('n'),
            -6 => out.push('u'),
            -3 => out.push('m'),
            0 => {}
            3 => out.push('k'),
            6 => out.push('M'),
            9 => out.push('G'),
            12 => out.push('T'),
            15 => out.push('P'),
            18 => out.push('E'),
            other => {
                out.push('e');
                out.push_str(&other.to_string());
            }
        }
        out
    }
}

/// Splits off the longest prefix whose bytes match `pred`.
fn take_while<'a>(rest: &mut &'a [u8], pred: impl Fn(u8) -> bool) -> &'a [u8] {
    let len = rest.iter().take_while(|byte| pred(**byte)).count();
    let (head, tail) = rest.split_at_checked(len).unwrap_or((rest, &[]));
    *rest = tail;
    head
}

/// Consumes one byte if it matches `pred`.
fn take_byte(rest: &mut &[u8], pred: impl Fn(u8) -> bool) -> Option<u8> {
    let (first, tail) = rest.split_first()?;
    if !pred(*first) {
        return None;
    }
    *rest = tail;
    Some(*first)
}

fn is_sign(byte: u8) -> bool {
    byte == b'+' || byte == b'-'
}

/// Parses a sample value the way Go's `strconv.ParseFloat` reads decimals,
/// but exactly.
fn parse_sample(input: &str) -> Result<Decimal, ValueError> {
    if input.eq_ignore_ascii_case("nan") {
        return Err(ValueError::NaN);
    }
    let (negative, unsigned) = match input.strip_prefix('-') {
        Some(unsigned) => (true, unsigned),
        None => (false, input.strip_prefix('+').unwrap_or(input)),
    };
    if unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("infinity") {
        return Err(if negative {
            ValueError::NegativeInfinity
        } else {
            ValueError::PositiveInfinity
        });
    }

    let unparsable = || ValueError::unparsable(input);
    let mut rest = unsigned.as_bytes();
    let int = take_while(&mut rest, |b| b.is_ascii_digit());
    let frac = match take_byte(&mut rest, |b| b == b'.') {
        Some(_) => take_while(&mut rest, |b| b.is_ascii_digit()),
        None => &[],
    };
    if int.is_empty() && frac.is_empty() {
        return Err(unparsable());
    }
    let mut exp = 0i64;
    if take_byte(&mut rest, |b| b == b'e' || b == b'E').is_some() {
        let exp_negative = take_byte(&mut rest, is_sign) == Some(b'-');
        let exp_digits = take_while(&mut rest, |b| b.is_ascii_digit());
        if exp_digits.is_empty() {
            return Err(unparsable());
        }
        let magnitude = exp_digits.iter().fold(0i64, |acc, digit| {
            (acc * 10 + i64::from(digit - b'0')).min(MAX_EXPONENT)
        });
        exp = if exp_negative { -magnitude } else { magnitude };
    }
    if !rest.is_empty() {
        return Err(unparsable());
    }
    let frac_len = i64::try_from(frac.len()).map_err(|_| unparsable())?;
    Ok(Decimal::new(
        negative,
        int.iter().chain(frac).copied(),
        exp.saturating_sub(frac_len),
    ))
}

/// How a Quantity suffix scales its number.
enum Scale {
    /// × 10^n (DecimalSI suffixes and `e<n>` exponents).
    Decimal(i64),
    /// × 1024^n (`Ki` is 1, `Ei` is 6).
    Binary(u8),
}

/// apimachinery's `suffixHandler.interpret`.
fn interpret_suffix(suffix: &[u8]) -> Option<Scale> {
    let scale = match suffix {
        b"n" => Scale::Decimal(-9),
        b"u" => Scale::Decimal(-6),
        b"m" => Scale::Decimal(-3),
        b"" => Scale::Decimal(0),
        b"k" => Scale::Decimal(3),
        b"M" => Scale::Decimal(6),
        b"G" => Scale::Decimal(9),
        b"T" => Scale::Decimal(12),
        b"P" => Scale::Decimal(15),
        b"E" => Scale::Decimal(18),
        b"Ki" => Scale::Binary(1),
        b"Mi" => Scale::Binary(2),
        b"Gi" => Scale::Binary(3),
        b"Ti" => Scale::Binary(4),
        b"Pi" => Scale::Binary(5),
        b"Ei" => Scale::Binary(6),
        // Go parses an int64 and wraps it to int32; we reject what would wrap.
        [b'e' | b'E', exponent @ ..] => {
            let exponent = std::str::from_utf8(exponent).ok()?.parse::<i32>().ok()?;
            Scale::Decimal(i64::from(exponent))
        }
        _ => return None,
    };
    Some(scale)
}

/// apimachinery's `ParseQuantity`: `<signedNumber><suffix>`, exact, then
/// rounded away from zero to nano; binary values capped at 2^63-1.
fn parse_quantity(input: &str) -> Result<Decimal, ValueError> {
    let unparsable = || ValueError::unparsable(input);
    let mut rest = input.as_bytes();
    if rest.is_empty() {
        return Err(unparsable());
    }
    let negative = take_byte(&mut rest, is_sign) == Some(b'-');
    let int = take_while(&mut rest, |b| b.is_ascii_digit());
    let frac = match take_byte(&mut rest, |b| b == b'.') {
        Some(_) => take_while(&mut rest, |b| b.is_ascii_digit()),
        None => &[],
    };
    // The suffix is letters, then an optional sign and digits for exponents.
    let suffix = rest;
    take_while(&mut rest, |b| b"eEinumkKMGTP".contains(&b));
    take_byte(&mut rest, is_sign);
    take_while(&mut rest, |b| b.is_ascii_digit());
    if !rest.is_empty() {
        return Err(unparsable());
    }
    let scale = interpret_suffix(suffix).ok_or_else(unparsable)?;

    if int.is_empty() && frac.is_empty() {
        // Go reads a digitless number ("k", ".", "-") as zero on its int64
        // fast path, but its inf.Dec path rejects it; match both.
        return match scale {
            Scale::Decimal(exp) if exp < NANO_EXP => Err(unparsable()),
            Scale::Binary(power) if power >= 5 => Err(unparsable()),
            _ => Ok(Decimal::zero()),
        };
    }

    let frac_len = i64::try_from(frac.len()).map_err(|_| unparsable())?;
    let digits = int.iter().chain(frac).copied();
    match scale {
        Scale::Decimal(exp) => {
            Ok(Decimal::new(negative, digits, exp.saturating_sub(frac_len)).round_away(NANO_EXP))
        }
        Scale::Binary(power) => {
            let mut value = Decimal::new(negative, digits, -frac_len);
            for _ in 0..power {
                value = value.mul_small(1024);
            }
            let value = value.round_away(NANO_EXP);
            let capped = value
                .magnitude_in(NANO_EXP)
                .is_none_or(|nanos| nanos > MAX_BINARY_NANOS);
            Ok(if capped {
                Decimal::from_i64(if value.negative { -i64::MAX } else { i64::MAX })
            } else {
                value
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(
            canonicalize(input).as_deref(),
            Ok(expected),
            "canonicalize({input:?})"
        );
    }

    #[track_caller]
    fn check_sample(input: &str, expected: &str, clamped: bool) {
        let want = Converted {
            quantity: Quantity(expected.to_owned()),
            clamped,
        };
        assert_eq!(
            from_prometheus(input),
            Ok(want),
            "from_prometheus({input:?})"
        );
    }

    /// Rows whose canonical string apimachinery's `quantity_test.go` prints
    /// itself (kubernetes/apimachinery `pkg/api/resource/quantity_test.go`):
    /// `TestParseQuantity` (input → `canonical`, or the input when it is
    /// already canonical), the DecimalSI rows of `TestQuantityString`
    /// (`expect` and `alternate` → `expect`), `TestQuantityParseEmit`,
    /// `TestNewSet`, `TestNewScaledSet` and `TestMilliNewSet`.
    const APIMACHINERY_STRINGS: &[(&str, &str)] = &[
        // TestParseQuantity: min/max 18 digits
        ("-999999999999999999", "-999999999999999999"),
        ("999999999999999999", "999999999999999999"),
        ("-999999999999999999.0", "-999999999999999999"),
        ("999999999999999999.0", "999999999999999999"),
        ("-999999999999999999.1", "-999999999999999999100m"),
        ("999999999999999999.1", "999999999999999999100m"),
        // min/max 19 digits
        ("-9999999999999999999", "-9999999999999999999"),
        ("9999999999999999999", "9999999999999999999"),
        ("-1E", "-1E"),
        ("1E", "1E"),
        ("-1000000000000000000", "-1E"),
        ("1000000000000000000", "1E"),
        ("-9999999999999999999.0", "-9999999999999999999"),
        ("9999999999999999999.0", "9999999999999999999"),
        ("-1.0E", "-1E"),
        ("1.0E", "1E"),
        ("-1000000000000000000.0", "-1E"),
        ("1000000000000000000.0", "1E"),
        ("-9999999999999999999000m", "-9999999999999999999"),
        ("9999999999999999999000m", "9999999999999999999"),
        ("-9999999999999999999.1", "-9999999999999999999100m"),
        ("9999999999999999999.1", "9999999999999999999100m"),
        ("-1.0000000000000000001E", "-1000000000000000000100m"),
        ("1.0000000000000000001E", "1000000000000000000100m"),
        ("-1000000000000000000.1", "-1000000000000000000100m"),
        ("1000000000000000000.1", "1000000000000000000100m"),
        ("-1.000000000000000001E", "-1000000000000000001"),
        ("1.000000000000000001E", "1000000000000000001"),
        ("-1000000000000000001", "-1000000000000000001"),
        ("1000000000000000001", "1000000000000000001"),
        // min/max 20 digits
        ("-10E", "-10E"),
        ("10E", "10E"),
        ("-10000000000000000000", "-10E"),
        ("10000000000000000000", "10E"),
        ("-10.0E", "-10E"),
        ("10.0E", "10E"),
        ("-10000000000000000000.0", "-10E"),
        ("10000000000000000000.0", "10E"),
        ("-10000000000000000000000m", "-10E"),
        ("10000000000000000000000m", "10E"),
        ("-10.0000000000000000001E", "-10000000000000000000100m"),
        ("10.0000000000000000001E", "10000000000000000000100m"),
        ("-10000000000000000000.1", "-10000000000000000000100m"),
        ("10000000000000000000.1", "10000000000000000000100m"),
        ("-10.000000000000000001E", "-10000000000000000001"),
        ("10.000000000000000001E", "10000000000000000001"),
        ("-10000000000000000001", "-10000000000000000001"),
        ("10000000000000000001", "10000000000000000001"),
        // min/max int64 - 1
        ("-9223372036854775809", "-9223372036854775809"),
        ("9223372036854775806", "9223372036854775806"),
        ("-9223372036854775809.0", "-9223372036854775809"),
        ("9223372036854775806.0", "9223372036854775806"),
        ("-9223372036854775809000m", "-9223372036854775809"),
        ("9223372036854775806000m", "9223372036854775806"),
        ("-9223372036854775809.1", "-9223372036854775809100m"),
        ("9223372036854775806.1", "9223372036854775806100m"),
        // min/max int64
        ("-9223372036854775808", "-9223372036854775808"),
        ("9223372036854775807", "9223372036854775807"),
        ("-9223372036854775808.0", "-9223372036854775808"),
        ("9223372036854775807.0", "9223372036854775807"),
        ("-9223372036854775808000m", "-9223372036854775808"),
        ("9223372036854775807000m", "9223372036854775807"),
        ("-9223372036854775808.1", "-9223372036854775808100m"),
        ("9223372036854775807.1", "9223372036854775807100m"),
        // min/max int64 + 1
        ("-9223372036854775807", "-9223372036854775807"),
        ("9223372036854775808", "9223372036854775808"),
        ("-9223372036854775807.0", "-9223372036854775807"),
        ("9223372036854775808.0", "9223372036854775808"),
        ("-9223372036854775807000m", "-9223372036854775807"),
        ("9223372036854775808000m", "9223372036854775808"),
        ("-9223372036854775807.1", "-9223372036854775807100m"),
        ("9223372036854775808.1", "9223372036854775808100m"),
        // TestQuantityString, DecimalSI rows (and BinarySI rows it prints as decimal)
        ("1G", "1G"),
        ("1000M", "1G"),
        ("0.001T", "1G"),
        ("1000000000", "1G"),
        ("5", "5"),
        ("5000m", "5"),
        ("500m", "500m"),
        ("0.5", "500m"),
        ("1m", "1m"),
        ("1000u", "1m"),
        ("80m", "80m"),
        ("1080m", "1080m"),
        ("1.08", "1080m"),
        ("1080000000n", "1080m"),
        ("300M", "300M"),
        ("1T", "1T"),
        ("1E", "1E"),
        // DecimalSI has no suffix past E: the stored apimachinery falls back to e<n>.
        ("1e21", "1e21"),
        ("1000E", "1e21"),
        ("5e21", "5e21"),
        ("5000E", "5e21"),
        ("1e24", "1e24"),
        ("1000000E", "1e24"),
        ("1234567M", "1234567M"),
        ("1234567m", "1234567m"),
        ("3k", "3k"),
        ("1025", "1025"),
        ("0", "0"),
        ("1n", "1n"),
        ("80n", "80n"),
        ("1080n", "1080n"),
        ("1u", "1u"),
        ("80u", "80u"),
        ("1080u", "1080u"),
        // TestQuantityParseEmit
        ("1000M", "1G"),
        (".001Ki", "1024m"),
        (".000001Ki", "1024u"),
        (".000000001Ki", "1024n"),
        (".000000000001Ki", "2n"),
        // TestNewSet / TestMilliNewSet / TestNewScaledSet (DecimalSI)
        ("1000", "1k"),
        ("1234000", "1234k"),
        ("0.001", "1m"),
        ("1234", "1234"),
        ("0.000001", "1u"),
        ("0.000000001", "1n"),
    ];

    /// `TestQuantityParse` rows: apimachinery gives the parsed value as
    /// `decQuantity(mantissa, exponent, format)`; the canonical string is that
    /// value in DecimalSI (binary and exponent inputs included, since we only
    /// emit DecimalSI).
    const APIMACHINERY_PARSE: &[(&str, &str)] = &[
        ("0", "0"),
        ("0n", "0"),
        ("0u", "0"),
        ("0m", "0"),
        ("0Ki", "0"),
        ("0k", "0"),
        ("0Mi", "0"),
        ("0M", "0"),
        ("0Gi", "0"),
        ("0G", "0"),
        ("0Ti", "0"),
        ("0T", "0"),
        ("1", "1"),
        ("1Ki", "1024"),
        ("8Ki", "8192"),
        ("7Mi", "7340032"),
        ("6Gi", "6442450944"),
        ("5Ti", "5497558138880"),
        ("4Pi", "4503599627370496"),
        ("3Ei", "3458764513820540928"),
        ("10Ti", "10995116277760"),
        ("100Ti", "109951162777600"),
        ("5n", "5n"),
        ("4u", "4u"),
        ("3m", "3m"),
        ("9", "9"),
        ("8k", "8k"),
        ("50k", "50k"),
        ("7M", "7M"),
        ("6G", "6G"),
        ("5T", "5T"),
        ("40T", "40T"),
        ("300T", "300T"),
        ("2P", "2P"),
        ("1E", "1E"),
        ("1E-3", "1m"),
        ("1e3", "1k"),
        ("1E6", "1M"),
        ("1e9", "1G"),
        ("1E12", "1T"),
        ("1e15", "1P"),
        ("1E18", "1E"),
        ("1e14", "100T"),
        ("1e13", "10T"),
        ("100.035k", "100035"),
        ("0.001", "1m"),
        ("0.0005k", "500m"),
        ("0.005", "5m"),
        ("0.05", "50m"),
        ("0.5", "500m"),
        ("0.00050k", "500m"),
        ("0.00500", "5m"),
        ("0.05000", "50m"),
        ("0.50000", "500m"),
        ("0.5e0", "500m"),
        ("0.5e-1", "50m"),
        ("0.5e-2", "5m"),
        ("10.035M", "10035k"),
        ("1.2e3", "1200"),
        ("1.3E+6", "1300k"),
        ("1.40e9", "1400M"),
        ("1.53E12", "1530G"),
        ("1.6e15", "1600T"),
        ("1.7E18", "1700P"),
        ("9.01", "9010m"),
        ("8.1k", "8100"),
        ("7.123456M", "7123456"),
        ("6.987654321G", "6987654321"),
        ("5.444T", "5444G"),
        ("40.1T", "40100G"),
        ("300.2T", "300200G"),
        ("2.5P", "2500T"),
        ("1.01E", "1010P"),
        // things that saturate/round
        ("3.001n", "4n"),
        ("1.1E-9", "2n"),
        ("0.0000000001", "1n"),
        ("0.0000000005", "1n"),
        ("0.00000000050", "1n"),
        ("0.5e-9", "1n"),
        ("0.9n", "1n"),
        ("0.00000012345", "124n"),
        ("0.00000012354", "124n"),
        ("9Ei", "9223372036854775807"),
        ("9223372036854775807Ki", "9223372036854775807"),
        ("12E", "12E"),
        // fractional binary
        ("100.035Ki", "102435840m"),
        ("0.5Mi", "524288"),
        ("0.05Gi", "53687091200m"),
        ("0.025Ti", "27487790694400m"),
        // "things written by trolls"
        ("0.000000000001Ki", "2n"),
        (".001", "1m"),
        (".0001k", "100m"),
        ("1.", "1"),
        ("1.G", "1G"),
        // TestQuantityString, DecimalExponent rows printed as DecimalSI
        (".001e12", "1G"),
        ("1e-3", "1m"),
        ("0.001e0", "1m"),
        ("1e-9", "1n"),
        ("1000e-12", "1n"),
        ("80e-3", "80m"),
        ("300e6", "300M"),
        ("3e3", "3k"),
        ("00", "0"),
        // TestQuantityParseEmit binary rows printed as DecimalSI
        ("1Ki", "1024"),
        ("1Mi", "1048576"),
        ("1Gi", "1073741824"),
        ("1024Mi", "1073741824"),
        // TestParseQuantityString: a number may have no digits at all
        (".", "0"),
        ("-.", "0"),
    ];

    /// `TestQuantityParse`'s `invalid` list, plus our own.
    const INVALID_QUANTITIES: &[&str] = &[
        "1.1.M",
        "1+1.0M",
        "0.1mi",
        "0.1am",
        "aoeu",
        ".5i",
        "1i",
        "-3.01i",
        "-3.01e-",
        " 1",
        "1 ",
        "", // apimachinery
        "1e",
        "1e+",
        "1Ee3",
        "--1",
        "1..2",
        "1kk",
        "1K",
        "1ki",
        "1e1.5",
        "NaN",
        "+Inf",
        // Go wraps this to int32 (1e0); we refuse instead.
        "1e4294967296", // Go's inf.Dec path rejects a number without digits.
        "Pi",
        "Ei",
        "e-10",
        "١",
    ];

    #[test]
    fn apimachinery_tables() {
        for (input, expected) in APIMACHINERY_STRINGS.iter().chain(APIMACHINERY_PARSE) {
            check(input, expected);
        }
    }

    #[test]
    fn apimachinery_tables_negated() {
        // Both apimachinery tables are re-run with a leading "-" and "+".
        for (input, expected) in APIMACHINERY_STRINGS.iter().chain(APIMACHINERY_PARSE) {
            if input.starts_with(['-', '+']) {
                continue;
            }
            let negated = if *expected == "0" {
                "0".to_owned()
            } else {
                format!("-{expected}")
            };
            check(&format!("-{input}"), &negated);
            check(&format!("+{input}"), expected);
        }
    }

    #[test]
    fn canonical_output_is_a_fixed_point() {
        for (_, expected) in APIMACHINERY_STRINGS.iter().chain(APIMACHINERY_PARSE) {
            check(expected, expected);
        }
    }

    #[test]
    fn invalid_quantities_are_errors() {
        for input in INVALID_QUANTITIES {
            assert_eq!(
                canonicalize(input),
                Err(ValueError::unparsable(input)),
                "{input:?}"
            );
            assert!(milli_value(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn digitless_quantities_are_zero_like_go_fast_path() {
        for input in ["+", "-", "k", "Ki", "Ti", "m", "e5", "E"] {
            check(input, "0");
        }
    }

    #[test]
    fn bytes_as_metrics_server_prints_memory() {
        for (sample, want) in [
            ("104857600", "100Mi"),
            ("52432896", "51204Ki"),
            ("1073741824", "1Gi"),
            ("1536", "1536"),
            ("1024", "1Ki"),
            ("1234567", "1234567"),
            ("1000", "1k"),
            ("512", "512"),
            ("0", "0"),
            // Fractional bytes round up to whole ones.
            ("1023.2", "1Ki"),
            ("1e3", "1k"),
            ("1.048576e8", "100Mi"),
            ("1152921504606846976", "9223372036854775"),
        ] {
            let got = bytes_from_prometheus(sample).unwrap();
            assert_eq!(got.quantity.0, want, "{sample}");
            assert_eq!(got.clamped, sample.len() > 18, "{sample}");
            // apimachinery reads it back as the same number of bytes.
            if !got.clamped {
                let bytes = milli_value(&got.quantity.0).unwrap() / 1000;
                assert_eq!(
                    bytes as f64,
                    sample.parse::<f64>().unwrap().ceil(),
                    "{sample}"
                );
            }
        }
        assert_eq!(bytes_from_prometheus("NaN"), Err(ValueError::NaN));
        assert!(bytes_from_prometheus("12x").is_err());
    }

    #[test]
    fn prometheus_samples() {
        // The brief's examples and Go `FormatFloat(v, 'f', -1, 64)` shapes.
        let cases = [
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("2000", "2k"),
            ("24.233138021", "24233138021n"),
            ("0.0000125", "12500n"),
            ("1e-10", "1n"),
            ("2e9", "2G"),
            ("0", "0"),
            ("-0", "0"),
            ("0.000", "0"),
            ("0.1", "100m"),
            ("-1.5", "-1500m"),
            ("-0.0000000001", "-1n"),
            ("-1e-10", "-1n"),
            ("2.5e-7", "250n"),
            ("1E3", "1k"),
            ("1e+3", "1k"),
            ("1.5e-3", "1500u"),
            ("+7", "7"),
            ("1.", "1"),
            (".5", "500m"),
            ("00012.5000", "12500m"),
            ("1e-1000000000000000000000", "1n"),
            ("0e999999999999999999999", "0"),
            ("123456789.123456789123", "123456789123456790n"),
            ("9223372036854775", "9223372036854775"),
            ("9223372036854775.807", "9223372036854775807m"),
            ("-9223372036854775.807", "-9223372036854775807m"),
        ];
        for (input, expected) in cases {
            check_sample(input, expected, false);
        }
    }

    #[test]
    fn samples_the_hpa_cannot_read_are_clamped() {
        for input in [
            "9223372036854775.8071",
            "9223372036854775.80700001",
            "9223372036854775808",
            "1e+20",
            "1E20",
            "1e999999999999999999999",
            "123456789012345678901234567890123456789012345678901234567890",
        ] {
            check_sample(input, "9223372036854775", true);
            check_sample(&format!("-{input}"), "-9223372036854775", true);
        }
        // The milli value of -9223372036854775.808 is i64::MIN, but we clamp both
        // signs at the same magnitude.
        check_sample("-9223372036854775.808", "-9223372036854775", true);
        let clamped = from_prometheus("1e20").map(|c| milli_value(&c.quantity.0));
        assert_eq!(clamped, Ok(Ok(9_223_372_036_854_775_000)));
    }

    #[test]
    fn very_long_digit_strings() {
        let ones = "1".repeat(100_000);
        assert!(from_prometheus(&ones).is_ok_and(|c| c.clamped));
        let tiny = format!("0.{}1", "0".repeat(100_000));
        check_sample(&tiny, "1n", false);
        let fraction = format!("1.{ones}");
        check_sample(&fraction, "1111111112n", false);
        assert_eq!(
            canonicalize(&format!("1{}", "0".repeat(100_000))).as_deref(),
            Ok("10e99999")
        );
        assert_eq!(milli_value(&ones), Ok(i64::MAX));
        assert_eq!(milli_value(&format!("-{ones}Ei")), Ok(i64::MIN));
    }

    #[test]
    fn special_values_are_errors() {
        for (input, error) in [
            ("NaN", ValueError::NaN),
            ("nan", ValueError::NaN),
            ("+Inf", ValueError::PositiveInfinity),
            ("Inf", ValueError::PositiveInfinity),
            ("inf", ValueError::PositiveInfinity),
            ("+Infinity", ValueError::PositiveInfinity),
            ("-Inf", ValueError::NegativeInfinity),
            ("-infinity", ValueError::NegativeInfinity),
        ] {
            assert_eq!(from_prometheus(input), Err(error), "{input:?}");
        }
        assert_eq!(from_f64(f64::NAN), Err(ValueError::NaN));
        assert_eq!(from_f64(f64::INFINITY), Err(ValueError::PositiveInfinity));
        assert_eq!(
            from_f64(f64::NEG_INFINITY),
            Err(ValueError::NegativeInfinity)
        );
    }

    #[test]
    fn unparsable_samples_are_errors() {
        for input in [
            "", "abc", "1..2", "--1", "+-1", "-", ".", "e5", "1e", "1e+", "1e-", "0x10", "1k",
            "1Ki", " 1", "1 ", "+nan", "-nan", "Inf1", "1_000", "١", "1e5.5", "1.5.5",
        ] {
            assert_eq!(
                from_prometheus(input),
                Err(ValueError::unparsable(input)),
                "{input:?}"
            );
        }
    }

    #[test]
    fn errors_display_and_reason() {
        let long = "x".repeat(1000);
        let cases = [
            (ValueError::NaN, "value is NaN", "nan"),
            (ValueError::PositiveInfinity, "value is +Inf", "+inf"),
            (ValueError::NegativeInfinity, "value is -Inf", "-inf"),
            (
                ValueError::unparsable("1..2"),
                "value \"1..2\" is not a number",
                "unparsable",
            ),
        ];
        for (error, display, reason) in cases {
            assert_eq!(error.to_string(), display);
            assert_eq!(error.reason(), reason);
        }
        assert_eq!(
            ValueError::unparsable(&long),
            ValueError::Unparsable("x".repeat(64))
        );
    }

    #[test]
    fn from_f64_uses_shortest_decimal() {
        for (value, expected) in [
            (0.1, "100m"),
            (0.5, "500m"),
            (1.5, "1500m"),
            (24.233138021, "24233138021n"),
            (1e-10, "1n"),
            (-1e-10, "-1n"),
            (2e9, "2G"),
            (0.0, "0"),
            (-0.0, "0"),
            (1e300, "9223372036854775"),
            (f64::MIN_POSITIVE, "1n"),
        ] {
            let converted = from_f64(value).map(|c| c.quantity.0);
            assert_eq!(converted.as_deref(), Ok(expected), "{value}");
        }
    }

    #[test]
    fn milli_values() {
        for (input, expected) in [
            // TestMilliNewSet / TestScaledValue / TestNewScaledSet round trips
            ("1m", 1),
            ("1", 1000),
            ("1234", 1_234_000),
            ("1n", 1),
            ("1u", 1),
            ("1k", 1_000_000),
            ("0", 0),
            // ceil for positive values
            ("1500u", 2),
            ("24233138021n", 24234),
            ("1.0001", 1001),
            // away from zero for negative values (TestQuantityRoundUp: -9.01 → -10)
            ("-1500u", -2),
            ("-9.0001", -9001),
            ("-1n", -1),
            // binary and exponent forms
            ("1Ki", 1_024_000),
            ("0.5Ki", 512_000),
            ("1e-3", 1),
            ("1e3", 1_000_000),
            // edges of i64
            ("9223372036854775807m", i64::MAX),
            ("9223372036854775808m", i64::MAX),
            ("-9223372036854775808m", i64::MIN),
            ("-9223372036854775809m", i64::MIN),
            ("9223372036854775.8071", i64::MAX),
            ("8Ei", i64::MAX),
            ("1e30", i64::MAX),
            ("-1e30", i64::MIN),
        ] {
            assert_eq!(milli_value(input), Ok(expected), "{input:?}");
        }
    }

    /// Parses a canonical string back and compares the exact values.
    fn same_value(canonical: &str, sample: &str) -> bool {
        let round_tripped = parse_quantity(canonical);
        let original = parse_sample(sample).map(|d| d.round_away(NANO_EXP));
        round_tripped.is_ok() && round_tripped == original
    }

    proptest::proptest! {
        #[test]
        fn never_panics(input in ".{0,64}") {
            let _ = from_prometheus(&input);
            let _ = canonicalize(&input);
            let _ = milli_value(&input);
        }

        #[test]
        fn never_panics_on_near_quantities(
            input in "[-+]?[0-9]{0,25}(\\.[0-9]{0,25})?([eE][-+]?[0-9]{0,12}|[numkMGTPE]|[KMGTPE]i)?",
        ) {
            let _ = from_prometheus(&input);
            if let Ok(canonical) = canonicalize(&input) {
                proptest::prop_assert_eq!(canonicalize(&canonical), Ok(canonical));
            }
            let _ = milli_value(&input);
        }

        #[test]
        fn milli_value_matches_hpa_ceil(value in -1e12f64..1e12) {
            let converted = from_f64(value).map(|c| c.quantity.0);
            proptest::prop_assert!(converted.is_ok());
            let milli = milli_value(converted.as_deref().unwrap_or_default());
            // Apimachinery rounds away from zero; within ±1 of ceil covers it
            // and the rounding of the f64 product.
            let expected = (value * 1000.0).ceil() as i64;
            proptest::prop_assert!(milli.as_ref().is_ok_and(|m| m.abs_diff(expected) <= 1), "{} {:?}", value, milli);
        }

        #[test]
        fn canonical_reparses_to_same_value(
            sign in "[-+]?",
            int in "[0-9]{0,20}",
            frac in "(\\.[0-9]{1,20})?",
            exp in "([eE][-+]?[0-9]{1,2})?",
        ) {
            let sample = format!("{sign}{int}{frac}{exp}");
            if let Ok(converted) = from_prometheus(&sample) {
                let canonical = converted.quantity.0;
                proptest::prop_assert_eq!(canonicalize(&canonical), Ok(canonical.clone()));
                if !converted.clamped {
                    proptest::prop_assert!(same_value(&canonical, &sample), "{} -> {}", sample, canonical);
                }
            }
        }

        #[test]
        fn f64_display_and_exponent_forms_agree(value in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
            // Go's 'f' format (like Rust `{}`) and VictoriaMetrics' exponent form.
            proptest::prop_assert_eq!(from_prometheus(&format!("{value}")), from_f64(value));
        }

        #[test]
        fn negation_is_symmetric(sample in "[0-9]{0,22}(\\.[0-9]{0,22})?([eE][-+]?[0-9]{1,2})?") {
            match (from_prometheus(&sample), from_prometheus(&format!("-{sample}"))) {
                (Ok(p), Ok(n)) => {
                    proptest::prop_assert_eq!(p.clamped, n.clamped);
                    let expected = if p.quantity.0 == "0" { p.quantity.0 } else { format!("-{}", p.quantity.0) };
                    proptest::prop_assert_eq!(n.quantity.0, expected);
                }
                (p, n) => proptest::prop_assert!(p.is_err() && n.is_err(), "{:?} {:?}", p, n),
            }
        }

        #[test]
        fn milli_value_is_exact_ceil_of_decimal(negative: bool, int in "[0-9]{1,12}", frac in "[0-9]{0,15}") {
            // ceil(v * 1000) by integer arithmetic, away from zero for negatives.
            let padded = format!("{frac:0<3}");
            let (milli_digits, rest) = padded.split_at(3);
            let mut expected: i64 = format!("{int}{milli_digits}").parse().unwrap_or(i64::MAX);
            if rest.bytes().any(|b| b != b'0') {
                expected += 1;
            }
            let sign = if negative { "-" } else { "" };
            let converted = from_prometheus(&format!("{sign}{int}.{frac}"));
            let milli = converted.map(|c| milli_value(&c.quantity.0));
            proptest::prop_assert_eq!(milli, Ok(Ok(if negative { -expected } else { expected })));
        }
    }
}
