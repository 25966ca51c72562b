//! What the `cargo fuzz` targets (`prom-adapter/fuzz`) check, as plain functions, so
//! `tests/fuzz_regressions.rs` replays their kept corpora in every test run. Each takes any
//! bytes and panics only when a property breaks: no input may panic the code under test.

use std::collections::BTreeMap;
use std::path::Path;

use crate::rules::template::{Data, Template, Value};
use crate::selector::Selector;

/// Any label selector: parsed without a panic; one that parses shows as a string that
/// parses back to it, and renders to PromQL and a LabelSelector without a panic.
pub fn selector(data: &[u8]) {
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
}

/// Any `metricsQuery` template: parsed without a panic; one that parses renders against the
/// fields a rule gets without a panic, within the output bound, twice the same.
pub fn template(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = Template::parse(src) else {
        return;
    };
    let fields: Data = BTreeMap::from([
        ("Series", Value::Str("http_requests_total".into())),
        (
            "LabelMatchers",
            Value::Str(r#"namespace="default",pod=~"a|b""#.into()),
        ),
        ("GroupBy", Value::Str("pod".into())),
        (
            "GroupBySlice",
            Value::List(vec!["namespace".into(), "pod".into()]),
        ),
        (
            "LabelValuesByName",
            Value::Map(BTreeMap::from([
                ("namespace".into(), "default".into()),
                ("pod".into(), "a|b".into()),
            ])),
        ),
    ]);
    let first = template.render(&fields);
    if let Ok(out) = &first {
        assert!(
            out.len() <= crate::rules::template::MAX_OUTPUT,
            "{} bytes rendered",
            out.len()
        );
    }
    assert_eq!(
        first,
        template.render(&fields),
        "rendering is deterministic"
    );
}

/// Any request path and query: routed to a `Route` or an API error, never a panic; a path
/// that routes keeps routing the same with a trailing slash.
pub fn route(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match input.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (input, None),
    };
    let routed = crate::api::route::parse(path, query);
    if let Ok(route) = &routed
        && !path.ends_with('/')
    {
        assert_eq!(
            crate::api::route::parse(&format!("{path}/"), query).as_ref(),
            Ok(route),
            "{path:?} and {path:?}/ route differently"
        );
    }
    if let Err(e) = &routed {
        let body: serde_json::Value = serde_json::from_slice(&e.status_body()).unwrap_or_default();
        assert_eq!(body["kind"], "Status", "{e}");
    }
}

/// Any prometheus-adapter rules YAML: loaded or refused with an error naming the file,
/// never a panic.
pub fn rules_yaml(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = crate::rules::from_yaml(src, Path::new("rules.yaml")) {
        assert!(e.to_string().starts_with("rules.yaml"), "{e}");
    }
}

/// Any pipeline.toml: its `[adapter]` table loaded and validated, or refused with an error
/// naming the file, never a panic.
pub fn pipeline_toml(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("pipeline.toml");
    match crate::config::adapter_from_toml(src, path) {
        Ok(adapter) => {
            // Relative files resolve against a directory that has none of them.
            if let Err(e) =
                crate::config::Config::validate(adapter, src, path, Path::new("/nonexistent"))
            {
                let shown = e.to_string();
                assert!(shown.starts_with("pipeline.toml"), "{shown}");
            }
        }
        Err(e) => assert!(e.to_string().starts_with("pipeline.toml"), "{e}"),
    }
}
