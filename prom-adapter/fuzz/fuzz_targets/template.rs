//! See `prom_adapter::fuzzing::template`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prom_adapter::fuzzing::template(data));
