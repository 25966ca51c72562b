//! Any byte stream frames into the same lines however it is cut, within the bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statsd_bridge::fuzzing::check_framer(data));
