//! Many writers, scrapes racing them, and exact counters at the end: the store's sharded
//! map and per-thread workers must lose no update and never show a torn page.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use statsd_bridge::aggregate::{Store, StoreConfig};
use statsd_bridge::expose::{Format, encode_bytes};
use statsd_bridge::ingest::{LineResult, Worker, ingest_line};
use statsd_bridge::protocol::ParseOptions;

const WRITERS: usize = 8;
const ROUNDS: usize = 2_000;
const SERIES: usize = 50;

#[test]
fn concurrent_writers_and_scrapes_lose_nothing() {
    let store = Arc::new(Store::new(StoreConfig::default(), []));
    let scraping = Arc::new(AtomicBool::new(true));
    let scraper = {
        let store = Arc::clone(&store);
        let scraping = Arc::clone(&scraping);
        std::thread::spawn(move || {
            let mut scrapes = 0;
            while scraping.load(Ordering::Relaxed) {
                let mut page = Vec::new();
                encode_bytes(&store.snapshot(Instant::now()), Format::Text, &mut page);
                let text = String::from_utf8(page).expect("the page is UTF-8");
                let mut types = std::collections::HashSet::new();
                for line in text.lines() {
                    if let Some(t) = line.strip_prefix("# TYPE ") {
                        assert!(types.insert(t.to_owned()), "TYPE twice: {t}");
                    } else if !line.starts_with('#') {
                        assert!(line.rsplit_once(' ').is_some(), "torn line {line:?}");
                    }
                }
                scrapes += 1;
            }
            scrapes
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut worker = Worker::unmapped(store.config());
                let opts = ParseOptions::default();
                for round in 0..ROUNDS {
                    let s = (round + w) % SERIES;
                    let lines = [
                        format!("race.count:1|c|#series:{s}"),
                        format!("race.timer:{}|ms|#writer:{w}", round % 100),
                        format!("race.set:member{}|s", round % 7),
                    ];
                    for line in &lines {
                        let r = ingest_line(
                            &store,
                            line.as_bytes(),
                            &opts,
                            &mut worker,
                            Instant::now(),
                        );
                        assert!(matches!(r, LineResult::Accepted { .. }), "{line}: {r:?}");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    scraping.store(false, Ordering::Relaxed);
    let scrapes = scraper.join().expect("scraper");
    assert!(scrapes > 0);

    let mut page = Vec::new();
    encode_bytes(&store.snapshot(Instant::now()), Format::Text, &mut page);
    let text = String::from_utf8(page).unwrap();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    let total = (WRITERS * ROUNDS) as f64;
    assert_eq!(value("race_count{"), total, "counter increments lost");
    assert_eq!(value("race_timer_count{"), total, "observations lost");
    let inf: f64 = text
        .lines()
        .filter(|l| l.starts_with("race_timer_bucket{") && l.contains("le=\"+Inf\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(inf, total);
    assert_eq!(value("race_set "), 7.0, "distinct set members");
    assert_eq!(store.len(), SERIES + WRITERS + 1);
}
