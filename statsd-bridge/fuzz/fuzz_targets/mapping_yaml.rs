//! Any mapping file: read, compiled and matched without a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statsd_bridge::fuzzing::check_mapping_yaml(data));
