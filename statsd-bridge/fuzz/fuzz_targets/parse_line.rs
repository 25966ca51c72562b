//! Any datagram: split into lines, parsed, applied to a store and encoded, without a panic,
//! and every page line stays well-formed.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use statsd_bridge::aggregate::{ObserverType, Store, StoreConfig};
use statsd_bridge::expose::{Format, encode};
use statsd_bridge::ingest::{Worker, ingest_line};
use statsd_bridge::protocol::{ParseOptions, lines, parse_line};

fuzz_target!(|data: &[u8]| {
    let opts = ParseOptions::default();
    for line in lines(data) {
        let _ = parse_line(line, &opts);
    }
    let observer = if data.first().is_some_and(|b| b & 1 == 1) {
        ObserverType::Summary
    } else {
        ObserverType::Histogram
    };
    let store = Store::new(StoreConfig { observer, max_series: 1000, ..StoreConfig::default() }, ["reserved_name"]);
    let mut worker = Worker::unmapped(store.config());
    let now = Instant::now();
    for line in lines(data) {
        let _ = ingest_line(&store, line, &opts, &mut worker, now);
    }
    for format in [Format::Text, Format::OpenMetrics] {
        let mut out = String::new();
        encode(&store.snapshot(now), format, &mut out);
        for l in out.lines() {
            assert!(l.starts_with('#') || l.rsplit_once(' ').is_some(), "bad page line {l:?}");
        }
    }
});
