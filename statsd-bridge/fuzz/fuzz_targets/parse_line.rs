//! Any datagram: parsed, applied to a store and encoded in both formats, without a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statsd_bridge::fuzzing::check_datagram(data));
