//! The lines the load generator sends: typical DogStatsD lines with three tags, or plain
//! StatsD (for collectd, which doesn't read tags) where the name varies instead of a tag.
//!
//! Line `i` belongs to series `i mod series`, so a run cycles through every series in turn.
//! With the `mixed` mix each series has one fixed StatsD type (`series mod 5`: counter,
//! gauge, timer, histogram, set), so the number of distinct series stays `series`.

use std::fmt;
use std::str::FromStr;

/// Which StatsD types are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mix {
    /// Counters only (`|c`).
    #[default]
    Counter,
    /// Counters, gauges, timers (`ms`), histograms (`h`) and sets, one type per series.
    Mixed,
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "counter" => Ok(Self::Counter),
            "mixed" => Ok(Self::Mixed),
            other => Err(format!("unknown mix {other:?}: counter or mixed")),
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Counter => "counter",
            Self::Mixed => "mixed",
        })
    }
}

/// The shape of the lines: how many series, which types, tags or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Distinct series (at least 1).
    pub series: u64,
    /// Which StatsD types.
    pub mix: Mix,
    /// Plain StatsD: no tags, the series number goes into the name (`bench.requests.s<i>`).
    pub plain: bool,
}

/// Name stems by type, in `series mod 5` order for the mixed mix.
const NAMES: [&str; 5] = [
    "bench.requests",
    "bench.queue_depth",
    "bench.latency",
    "bench.payload_bytes",
    "bench.users",
];

impl Traffic {
    /// Appends line `i` to `out`, without a newline.
    pub fn write_line(&self, i: u64, out: &mut Vec<u8>) {
        let series = i % self.series.max(1);
        let kind = match self.mix {
            Mix::Counter => 0,
            Mix::Mixed => series % 5,
        };
        out.extend_from_slice(
            NAMES
                .get(kind as usize)
                .copied()
                .unwrap_or("bench.x")
                .as_bytes(),
        );
        if self.plain {
            out.extend_from_slice(b".s");
            push_u64(out, series);
        }
        out.push(b':');
        match kind {
            0 => out.extend_from_slice(b"1|c"),
            1 => {
                push_u64(out, i % 100);
                out.extend_from_slice(b"|g");
            }
            2 => {
                push_u64(out, i % 250);
                out.extend_from_slice(b".5|ms");
            }
            3 => {
                push_u64(out, 64 + i % 4096);
                out.extend_from_slice(b"|h");
            }
            _ => {
                out.push(b'u');
                push_u64(out, i % 1000);
                out.extend_from_slice(b"|s");
            }
        }
        if !self.plain {
            out.extend_from_slice(b"|#env:prod,host:h1,series:");
            push_u64(out, series);
        }
    }

    /// A short label for tables: `dogstatsd/counter` or `plain/counter`.
    pub fn label(&self) -> String {
        format!(
            "{}/{}",
            if self.plain { "plain" } else { "dogstatsd" },
            self.mix
        )
    }
}

/// Appends the decimal digits of `v` (no allocation, no formatter).
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        if let Some(d) = digits.get_mut(n) {
            *d = b'0' + (v % 10) as u8;
        }
        n += 1;
        v /= 10;
        if v == 0 || n >= digits.len() {
            break;
        }
    }
    out.extend(digits.iter().take(n).rev());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: &Traffic, i: u64) -> String {
        let mut v = Vec::new();
        t.write_line(i, &mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn dogstatsd_counter_lines_vary_a_tag() {
        let t = Traffic {
            series: 1000,
            mix: Mix::Counter,
            plain: false,
        };
        assert_eq!(
            line(&t, 1234),
            "bench.requests:1|c|#env:prod,host:h1,series:234"
        );
        assert_eq!(line(&t, 0), "bench.requests:1|c|#env:prod,host:h1,series:0");
    }

    #[test]
    fn plain_lines_vary_the_name() {
        let t = Traffic {
            series: 10,
            mix: Mix::Counter,
            plain: true,
        };
        assert_eq!(line(&t, 17), "bench.requests.s7:1|c");
    }

    #[test]
    fn mixed_lines_keep_one_type_per_series() {
        let t = Traffic {
            series: 7,
            mix: Mix::Mixed,
            plain: false,
        };
        assert_eq!(
            line(&t, 2),
            "bench.latency:2.5|ms|#env:prod,host:h1,series:2"
        );
        assert_eq!(
            line(&t, 9),
            "bench.latency:9.5|ms|#env:prod,host:h1,series:2"
        );
        assert_eq!(line(&t, 4), "bench.users:u4|s|#env:prod,host:h1,series:4");
        assert_eq!(
            line(&t, 3),
            "bench.payload_bytes:67|h|#env:prod,host:h1,series:3"
        );
        assert_eq!(
            line(&t, 1),
            "bench.queue_depth:1|g|#env:prod,host:h1,series:1"
        );
    }

    #[test]
    fn digits() {
        for v in [0u64, 7, 10, 99, 100, 123_456_789, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }
}
