//! Replays inputs kept from the `cargo fuzz` corpora (statsd-bridge/fuzz) through the same
//! property checks the fuzz targets run, so what the fuzzers explored stays covered in CI.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{} fails its fuzz property",
            path.display()
        );
        n += 1;
    }
    n
}

#[test]
fn parse_line_corpus() {
    assert!(replay("parse_line", statsd_bridge::fuzzing::check_datagram) > 100);
}

#[test]
fn tcp_framer_corpus() {
    assert!(replay("tcp_framer", statsd_bridge::fuzzing::check_framer) > 50);
}

#[test]
fn mapping_yaml_corpus() {
    assert!(replay("mapping_yaml", statsd_bridge::fuzzing::check_mapping_yaml) > 10);
}
