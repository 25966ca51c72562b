//! Replays inputs kept from the `cargo fuzz` corpora (prom-adapter/fuzz) through the same
//! properties the fuzz targets check (`prom_adapter::fuzzing`), so what the fuzzers found
//! stays covered in every test run.

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
fn selector_corpus() {
    assert!(replay("selector", prom_adapter::fuzzing::selector) >= 50);
}

#[test]
fn template_corpus() {
    assert!(replay("template", prom_adapter::fuzzing::template) >= 50);
}

#[test]
fn route_corpus() {
    assert!(replay("route", prom_adapter::fuzzing::route) >= 50);
}

#[test]
fn rules_yaml_corpus() {
    assert!(replay("rules_yaml", prom_adapter::fuzzing::rules_yaml) >= 50);
}

#[test]
fn pipeline_toml_corpus() {
    assert!(replay("pipeline_toml", prom_adapter::fuzzing::pipeline_toml) >= 50);
}
