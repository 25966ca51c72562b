//! See `prom_adapter::fuzzing::selector`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prom_adapter::fuzzing::selector(data));
