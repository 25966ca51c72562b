//! The pure router ([`server::respond`]) as the API tests drive it: a [`State`] without
//! access control over the in-memory backend, and GETs that parse the JSON answer.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use hyper::Method;
use prom_adapter::prom::fake::FakeProm;
use prom_adapter::provider::Provider;
use prom_adapter::server::{self, Access, State};
use prom_adapter::telemetry::Metrics;
use serde_json::Value;

/// A ready `State` serving `provider` to everyone (`--insecure-dev`).
pub fn open_state(provider: Provider<FakeProm>, metrics: Arc<Metrics>) -> State<FakeProm> {
    State {
        provider: Arc::new(provider),
        metrics,
        ready: AtomicBool::new(true),
        ready_check: None,
        access: Access::Open,
        forwarder: None,
    }
}

/// GETs `path_and_query`: the status and the JSON body (which every answer here is).
pub async fn get(state: &State<FakeProm>, path_and_query: &str) -> (u16, Value) {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let answer = server::respond(state, &Method::GET, path, query).await;
    assert_eq!(answer.content_type, "application/json", "{path_and_query}");
    let body = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("{path_and_query}: not JSON ({e}): {:?}", answer.body));
    (answer.status.as_u16(), body)
}
