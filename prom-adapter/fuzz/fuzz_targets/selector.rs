//! Any label selector string: parsed without a panic, and when it parses, its canonical form
//! parses back to the same selector and renders to PromQL and a LabelSelector without a panic.
#![no_main]

use prom_adapter::selector::Selector;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = Selector::parse(input) else {
        return;
    };
    let shown = selector.to_string();
    assert_eq!(
        Selector::parse(&shown).as_ref(),
        Ok(&selector),
        "{input:?} displays as {shown:?}, which parses differently"
    );
    let _ = selector.to_prom_matchers();
    let _ = selector.to_label_selector();
});
