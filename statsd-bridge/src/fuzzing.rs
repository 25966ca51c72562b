//! The properties the `cargo fuzz` targets check, shared with the regression tests that
//! replay their corpora (`tests/fuzz_regressions.rs`). Each function panics when a
//! property fails, which is what a fuzzer looks for.

use std::path::Path;
use std::time::Instant;

use bytes::BytesMut;

use crate::aggregate::{ObserverType, Store, StoreConfig};
use crate::expose::{Format, encode};
use crate::framing::LineFramer;
use crate::ingest::{Worker, ingest_line};
use crate::mapping::{Mapper, MatchMetricType, yaml};
use crate::protocol::{ParseOptions, lines, parse_line};

/// Any datagram: parsed, applied to a store and written in both formats without a panic,
/// and every page line is a comment or `name[{…}] value`.
pub fn check_datagram(data: &[u8]) {
    let opts = ParseOptions::default();
    for line in lines(data) {
        let _ = parse_line(line, &opts);
    }
    let observer = if data.first().is_some_and(|b| b & 1 == 1) {
        ObserverType::Summary
    } else {
        ObserverType::Histogram
    };
    let openmetrics = data.first().is_some_and(|b| b & 2 == 2);
    let cfg = StoreConfig {
        observer,
        max_series: 1000,
        openmetrics,
        ..StoreConfig::default()
    };
    let store = Store::new(cfg, ["reserved_name"]);
    let mut worker = Worker::unmapped(store.config());
    let now = Instant::now();
    for line in lines(data) {
        let _ = ingest_line(&store, line, &opts, &mut worker, now);
    }
    for format in [Format::Text, Format::OpenMetrics] {
        let mut out = String::new();
        encode(&store.snapshot(now), format, &mut out);
        for l in out.lines() {
            assert!(
                l.starts_with('#') || l.rsplit_once(' ').is_some(),
                "bad page line {l:?}"
            );
        }
    }
}

fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, ()>> {
    let mut f = LineFramer::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match f.next_line(&mut buf) {
                Ok(Some(l)) => {
                    assert!(l.len() <= max, "a framed line is longer than the bound");
                    out.push(Ok(l.to_vec()));
                }
                Ok(None) => break,
                Err(_) => out.push(Err(())),
            }
        }
    }
    match f.finish(&mut buf) {
        Ok(Some(l)) => out.push(Ok(l.to_vec())),
        Ok(None) => {}
        Err(_) => out.push(Err(())),
    }
    out
}

/// A byte stream (after two control bytes: the bound and a cut point) frames into the same
/// lines whole or cut in two, and no line exceeds the bound.
pub fn check_framer(data: &[u8]) {
    let Some((&max, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut, stream)) = rest.split_first() else {
        return;
    };
    let max = usize::from(max % 64) + 1;
    let cut = usize::from(cut).min(stream.len());
    let (a, b) = stream.split_at(cut);
    assert_eq!(
        frames(max, &[a, b]),
        frames(max, &[stream]),
        "chunking changed the lines"
    );
}

/// Any text as a mapping file: read, compiled and matched without a panic.
pub fn check_mapping_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((spec, _)) = yaml::parse(text, Path::new("fuzz.yml")) else {
        return;
    };
    let Ok(mapper) = Mapper::compile(&spec) else {
        return;
    };
    for name in [
        "a.b.c",
        "a",
        "",
        "x.y",
        "test.dispatcher.a.b.c",
        "..",
        "a.b.c.d.e.f",
    ] {
        for t in [
            MatchMetricType::Counter,
            MatchMetricType::Gauge,
            MatchMetricType::Observer,
        ] {
            let _ = mapper.resolve(name, t);
        }
    }
    let _ = mapper.glob_dot();
}
