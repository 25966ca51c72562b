//! See `prom_adapter::fuzzing::rules_yaml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prom_adapter::fuzzing::rules_yaml(data));
