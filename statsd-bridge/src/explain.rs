//! `statsd-bridge explain`: what the mapping rules make of StatsD lines, shown by running
//! each line through the real parser, mapper and a scratch store.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use crate::aggregate::Store;
use crate::config::Config;
use crate::expose::encode_text;
use crate::ingest::{LineResult, Worker, ingest_line};
use crate::mapping::{Mapper, MapperHandle, MatchMetricType};
use crate::protocol::{Line, lines, parse_line};

/// Explains each line on `out`; returns how many lines were rejected or dropped.
pub fn explain(
    cfg: &Config,
    input: impl Iterator<Item = String>,
    out: &mut impl Write,
) -> std::io::Result<usize> {
    let mapper = Mapper::compile(&cfg.mapping)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let handle = Arc::new(MapperHandle::new(mapper));
    let (_, rules) = handle.load();
    let opts = cfg.parse_options();
    let mut refused = 0;
    for text in input {
        for line in lines(text.as_bytes()) {
            writeln!(out, "{}", String::from_utf8_lossy(line))?;
            if let Ok(Line::Metric(s)) = parse_line(line, &opts) {
                let name = format!("{}{}", s.name, s.name_suffix);
                let t = MatchMetricType::of(s.kind);
                writeln!(out, "  {}", Mapper::describe(&rules.resolve(&name, t), t))?;
            }
            let store = Store::new(cfg.store(), []);
            let mut worker = Worker::new(Arc::clone(&handle), 0);
            match ingest_line(&store, line, &opts, &mut worker, Instant::now()) {
                LineResult::Rejected(e) => {
                    refused += 1;
                    writeln!(out, "  rejected: {} ({e})", e.reason())?;
                }
                LineResult::Dropped(r) => {
                    refused += 1;
                    writeln!(out, "  dropped: {} ({r})", r.reason())?;
                }
                _ => {
                    let mut page = String::new();
                    encode_text(&store.snapshot(Instant::now()), &mut page);
                    for series in page.lines().filter(|l| !l.starts_with('#')) {
                        writeln!(out, "  {series}")?;
                    }
                }
            }
        }
    }
    Ok(refused)
}
