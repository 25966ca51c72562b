//! See `prom_adapter::fuzzing::route`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prom_adapter::fuzzing::route(data));
