//! Durations and byte sizes as they are written in config files and flags.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written as `"250ms"`, `"30s"`, `"5m"`, `"1h30m"` or `"0s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// A size in bytes written as `"65536"`, `"64KiB"`, `"8MiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A duration or size that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Empty input.
    #[error("empty value")]
    Empty,
    /// A number was expected at this point.
    #[error("expected a number in `{0}`")]
    MissingNumber(String),
    /// The unit suffix is not one we know.
    #[error("unknown unit `{unit}` in `{input}` (use {expected})")]
    UnknownUnit {
        /// The suffix found.
        unit: String,
        /// The whole input.
        input: String,
        /// The units that are accepted.
        expected: &'static str,
    },
    /// The value does not fit.
    #[error("`{0}` is too large")]
    Overflow(String),
}

const DURATION_UNITS: &str = "ms, s, m, h or d, e.g. \"30s\"";
const SIZE_UNITS: &str = "B, KB, KiB, MB, MiB, GB or GiB, e.g. \"8MiB\"";

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, UnitError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(UnitError::Empty);
        }
        if s == "0" {
            return Ok(Self(std::time::Duration::ZERO));
        }
        let mut total_ms: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b'.')
                .count();
            let (num, tail) = rest.split_at(digits);
            if num.is_empty() {
                return Err(UnitError::MissingNumber(input.to_owned()));
            }
            let num: f64 = num
                .parse()
                .map_err(|_| UnitError::MissingNumber(input.to_owned()))?;
            let tail = tail.trim_start();
            let unit_len = tail.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
            let (unit, tail) = tail.split_at(unit_len);
            let ms_per_unit: f64 = match unit {
                "ms" => 1.0,
                "s" => 1_000.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                "d" => 86_400_000.0,
                _ => {
                    return Err(UnitError::UnknownUnit {
                        unit: unit.to_owned(),
                        input: input.to_owned(),
                        expected: DURATION_UNITS,
                    });
                }
            };
            let ms = num * ms_per_unit;
            if !ms.is_finite() || ms > 1e15 {
                return Err(UnitError::Overflow(input.to_owned()));
            }
            total_ms += ms.round() as u128;
            rest = tail;
        }
        let ms = u64::try_from(total_ms).map_err(|_| UnitError::Overflow(input.to_owned()))?;
        Ok(Self(std::time::Duration::from_millis(ms)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            f.write_str("0s")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, UnitError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(UnitError::Empty);
        }
        let digits = s
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (num, unit) = s.split_at(digits);
        if num.is_empty() {
            return Err(UnitError::MissingNumber(input.to_owned()));
        }
        let num: f64 = num
            .parse()
            .map_err(|_| UnitError::MissingNumber(input.to_owned()))?;
        let mult: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "KB" | "kB" => 1e3,
            "KiB" => 1024.0,
            "MB" => 1e6,
            "MiB" => 1024.0 * 1024.0,
            "GB" => 1e9,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            other => {
                return Err(UnitError::UnknownUnit {
                    unit: other.to_owned(),
                    input: input.to_owned(),
                    expected: SIZE_UNITS,
                });
            }
        };
        let bytes = num * mult;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(UnitError::Overflow(input.to_owned()));
        }
        Ok(Self(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Accepts a string with a unit, or a bare integer (seconds for durations, bytes for sizes).
macro_rules! serde_via_str {
    ($ty:ty, $int:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Int(u64),
                    Str(String),
                }
                match Raw::deserialize(d).map_err(|_| {
                    serde::de::Error::custom(concat!(
                        "expected a string with a unit or a whole number for ",
                        stringify!($ty)
                    ))
                })? {
                    Raw::Int(n) => Ok($int(n)),
                    Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
                }
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

serde_via_str!(Duration, |n| Duration(std::time::Duration::from_secs(n)));
serde_via_str!(ByteSize, ByteSize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("0s", 0),
            ("0", 0),
            ("1.5s", 1500),
            ("2d", 172_800_000),
        ];
        for (input, ms) in cases {
            let d: Duration = input.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms, "{input}");
        }
        for bad in ["", "s", "5x", "5", "1e400s", "-1s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad} should fail");
        }
        assert_eq!(
            "5 parsecs".parse::<Duration>().unwrap_err().to_string(),
            "unknown unit `parsecs` in `5 parsecs` (use ms, s, m, h or d, e.g. \"30s\")"
        );
        assert_eq!("5 s".parse::<Duration>().unwrap().0.as_secs(), 5);
        assert_eq!(
            Duration(std::time::Duration::from_secs(90)).to_string(),
            "90s"
        );
        assert_eq!(
            Duration(std::time::Duration::from_secs(300)).to_string(),
            "5m"
        );
    }

    #[test]
    fn sizes() {
        let cases = [
            ("65536", 65536),
            ("64KiB", 65536),
            ("8MiB", 8 << 20),
            ("1GB", 1_000_000_000),
        ];
        for (input, bytes) in cases {
            assert_eq!(input.parse::<ByteSize>().unwrap().0, bytes, "{input}");
        }
        for bad in ["", "MiB", "5 parsecs", "-1"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad} should fail");
        }
        assert_eq!(ByteSize(8 << 20).to_string(), "8MiB");
    }

    #[test]
    fn serde_accepts_string_or_integer() {
        #[derive(Deserialize)]
        struct T {
            a: Duration,
            b: ByteSize,
        }
        let t: T = toml::from_str("a = 30\nb = \"1KiB\"").unwrap();
        assert_eq!(t.a.0.as_secs(), 30);
        assert_eq!(t.b.0, 1024);
        let e = toml::from_str::<T>("a = \"5 parsecs\"\nb = 1")
            .err()
            .unwrap();
        assert!(e.message().contains("unknown unit"), "{}", e.message());
    }
}
