//! A fixed workload for `valgrind --tool=callgrind`: the criterion benches' typical lines,
//! parsed (`parse`) or sent as 20-line datagrams through an [`Ingester`] (`ingest`).
//!
//! `cargo build --release -p pipeline-benches --example callgrind`, then run it under
//! callgrind twice, with two pass counts; the difference of the two instruction totals over
//! the difference of lines is the cost per line without the setup:
//!
//! ```sh
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p target/release/examples/callgrind ingest 20
//! ```

use std::hint::black_box;
use std::sync::Arc;

use pipeline_benches::typical::typical_lines;
use statsd_bridge::aggregate::{Store, StoreConfig};
use statsd_bridge::ingest::{Ingester, defaults_of};
use statsd_bridge::mapping::{Mapper, MapperHandle};
use statsd_bridge::protocol::{ParseOptions, parse_line};
use statsd_bridge::telemetry::{Telemetry, Transport};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "ingest".to_owned());
    let passes: usize = args.next().map_or(Ok(10), |p| p.parse())?;
    let input = typical_lines();
    let opts = ParseOptions::default();
    match mode.as_str() {
        "parse" => {
            for _ in 0..passes {
                for l in &input {
                    let _ = black_box(parse_line(black_box(l.as_bytes()), &opts));
                }
            }
        }
        "ingest" => {
            let store = Arc::new(Store::new(StoreConfig::default(), []));
            let mapper = Arc::new(MapperHandle::new(Mapper::without_rules(&defaults_of(
                store.config(),
            ))));
            let ingester =
                Ingester::new(store, opts, Arc::new(Telemetry::new()?), None, mapper, 1000);
            let mut worker = ingester.worker();
            let datagrams: Vec<String> = input.chunks(20).map(|c| c.join("\n")).collect();
            for _ in 0..passes {
                for d in &datagrams {
                    ingester.datagram(black_box(d.as_bytes()), Transport::Udp, &mut worker);
                }
            }
        }
        other => anyhow::bail!("unknown mode {other:?}: parse or ingest"),
    }
    Ok(())
}
