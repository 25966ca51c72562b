//! See `prom_adapter::fuzzing::pipeline_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prom_adapter::fuzzing::pipeline_toml(data));
