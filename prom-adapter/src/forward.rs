//! Forwarding external metrics this adapter doesn't serve to another external metrics
//! server (KEDA's, the Datadog Cluster Agent's).
//!
//! Only one APIService can own `v1beta1.external.metrics.k8s.io`, so two providers can't
//! both serve HPAs in one cluster (KEDA #470). With an upstream configured this adapter owns
//! the APIService, answers what its rules serve, and relays the rest with the same path and
//! query. Its discovery list is merged into ours (ours wins a name clash).
//!
//! The decisions are pure ([`merge`], [`relay`], [`parse_resource_list`]); the IO edge is the
//! [`Upstream`] trait, which [`Client::get_raw`] implements.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde::Deserialize;

use crate::api::ApiError;
use crate::api::types::ApiResource;
use crate::prom::PromError;
use crate::prom::http::Client;

/// The upstream's discovery document, read every relist.
pub const DISCOVERY_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// What the upstream's answers are read into: its status and body.
pub type UpstreamAnswer = Result<(u16, Bytes), PromError>;

/// A `GET` to the upstream. The one IO edge of forwarding, so tests can stand in for it.
pub trait Upstream: Send + Sync + 'static {
    /// `GET path_and_query` under the upstream's base URL.
    fn get<'a>(
        &'a self,
        path_and_query: &'a str,
    ) -> Pin<Box<dyn Future<Output = UpstreamAnswer> + Send + 'a>>;
}

impl Upstream for Client {
    fn get<'a>(
        &'a self,
        path_and_query: &'a str,
    ) -> Pin<Box<dyn Future<Output = UpstreamAnswer> + Send + 'a>> {
        Box::pin(self.get_raw(path_and_query))
    }
}

/// An answer relayed from the upstream (or made up for it), ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
}

/// The upstream and the last discovery list it gave.
pub struct Forwarder {
    upstream: Box<dyn Upstream>,
    name: String,
    listed: RwLock<Arc<Vec<ApiResource>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Forwards to `upstream`; `name` (its URL without credentials) goes into errors and logs.
    pub fn new(upstream: impl Upstream, name: impl Into<String>) -> Self {
        Self {
            upstream: Box::new(upstream),
            name: name.into(),
            listed: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// The upstream's URL, as errors name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The upstream's external metrics as last listed.
    pub fn listed(&self) -> Arc<Vec<ApiResource>> {
        self.listed
            .read()
            .map(|l| Arc::clone(&l))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Re-reads the upstream's discovery list (a failure keeps the last one) and logs the
    /// names that clash with `ours`, once per call: the caller calls it once per relist.
    pub async fn refresh(&self, ours: &[ApiResource]) -> Result<usize, String> {
        let list = match self.upstream.get(DISCOVERY_PATH).await {
            Ok((200, body)) => parse_resource_list(&body),
            Ok((status, body)) => Err(format!(
                "answered http {status}: {}",
                String::from_utf8_lossy(body.get(..200).unwrap_or(body.as_ref()))
            )),
            Err(e) => Err(upstream_error(&e)),
        };
        let list = list.map_err(|e| {
            tracing::warn!(upstream = %self.name, error = %e, "Cannot list the upstream's external metrics; keeping the last list.");
            e
        })?;
        let (_, clashes) = merge(ours.to_vec(), &list);
        if !clashes.is_empty() {
            tracing::warn!(upstream = %self.name, metrics = ?clashes, "External metrics served here and by the upstream; this adapter answers them.");
        }
        let count = list.len();
        match self.listed.write() {
            Ok(mut l) => *l = Arc::new(list),
            Err(p) => *p.into_inner() = Arc::new(list),
        }
        Ok(count)
    }

    /// Our list with the upstream's added (ours wins a clash).
    pub fn merged(&self, ours: Vec<ApiResource>) -> Vec<ApiResource> {
        merge(ours, &self.listed()).0
    }

    /// Relays one request.
    pub async fn forward(&self, path_and_query: &str) -> Relayed {
        let answer = self.upstream.get(path_and_query).await;
        relay(&self.name, answer)
    }
}

/// What a transport failure is called in messages (a [`PromError`] speaks of Prometheus).
fn upstream_error(e: &PromError) -> String {
    match e {
        PromError::Unreachable { reason } => format!("unreachable: {reason}"),
        PromError::Timeout { after } => format!("did not answer within {after:?}"),
        PromError::TooLarge { limit } => format!("answer exceeds {limit} bytes"),
        other => other.to_string(),
    }
}

/// The upstream's answer as ours: a success or a `Status` error passes through with its
/// code and body; anything else (a proxy page, no answer) becomes a 503 `Status` naming the
/// upstream, since the HPA reads only `Status` errors.
pub fn relay(upstream: &str, answer: UpstreamAnswer) -> Relayed {
    #[derive(Deserialize)]
    struct Kind<'a> {
        kind: Option<&'a str>,
    }
    let unavailable = |why: String| {
        let e = ApiError::Unavailable(format!("external metrics upstream {upstream} {why}"));
        Relayed {
            status: e.code(),
            body: e.status_body(),
        }
    };
    match answer {
        Ok((status, body)) if (200..300).contains(&status) => Relayed {
            status,
            body: body.to_vec(),
        },
        Ok((status, body)) => {
            let is_status =
                serde_json::from_slice::<Kind<'_>>(&body).is_ok_and(|k| k.kind == Some("Status"));
            if is_status && (400..600).contains(&status) {
                Relayed {
                    status,
                    body: body.to_vec(),
                }
            } else {
                let start =
                    String::from_utf8_lossy(body.get(..200).unwrap_or(body.as_ref())).into_owned();
                unavailable(format!("answered http {status}: {start}"))
            }
        }
        Err(e) => unavailable(format!("is unavailable: {}", upstream_error(&e))),
    }
}

/// The `resources` of an `APIResourceList`.
pub fn parse_resource_list(body: &[u8]) -> Result<Vec<ApiResource>, String> {
    #[derive(Deserialize)]
    struct Doc {
        kind: String,
        #[serde(default)]
        resources: Vec<ApiResource>,
    }
    let doc: Doc =
        serde_json::from_slice(body).map_err(|e| format!("not an APIResourceList: {e}"))?;
    if doc.kind != "APIResourceList" {
        return Err(format!(
            "a {} where an APIResourceList was expected",
            doc.kind
        ));
    }
    Ok(doc.resources)
}

/// `ours` followed by the upstream's entries whose names aren't ours, and the names that
/// clashed.
pub fn merge(ours: Vec<ApiResource>, theirs: &[ApiResource]) -> (Vec<ApiResource>, Vec<String>) {
    let mut merged = ours;
    let mut clashes = Vec::new();
    for r in theirs {
        if merged.iter().any(|o| o.name == r.name) {
            clashes.push(r.name.clone());
        } else {
            merged.push(r.clone());
        }
    }
    (merged, clashes)
}

#[cfg(test)]
mod tests {
    use std::sync::PoisonError;

    use super::*;

    fn res(name: &str) -> ApiResource {
        ApiResource {
            name: name.into(),
            singular_name: String::new(),
            namespaced: true,
            kind: "ExternalMetricValueList".into(),
            verbs: vec!["get".into()],
        }
    }

    #[test]
    fn merge_keeps_ours_on_a_clash() {
        let (merged, clashes) = merge(vec![res("a"), res("b")], &[res("b"), res("c")]);
        let names: Vec<&str> = merged.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        assert_eq!(clashes, vec!["b"]);
    }

    #[test]
    fn resource_lists_parse_as_kubernetes_writes_them() {
        let body = br#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"external.metrics.k8s.io/v1beta1",
            "resources":[{"name":"s0-prometheus","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]}]}"#;
        assert_eq!(
            parse_resource_list(body).unwrap(),
            vec![res("s0-prometheus")]
        );
        // KEDA's empty list has no resources key at all (omitempty).
        let empty =
            br#"{"kind":"APIResourceList","groupVersion":"external.metrics.k8s.io/v1beta1"}"#;
        assert_eq!(parse_resource_list(empty).unwrap(), vec![]);
        assert!(parse_resource_list(b"<html>").is_err());
        assert!(parse_resource_list(br#"{"kind":"Status"}"#).is_err());
    }

    #[test]
    fn relay_passes_answers_and_status_errors_through() {
        let ok = relay(
            "https://keda",
            Ok((200, Bytes::from_static(b"{\"items\":[]}"))),
        );
        assert_eq!(
            (ok.status, ok.body.as_slice()),
            (200, &b"{\"items\":[]}"[..])
        );
        let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
        let nf = relay("https://keda", Ok((404, Bytes::from_static(status))));
        assert_eq!((nf.status, nf.body.as_slice()), (404, &status[..]));
    }

    #[test]
    fn relay_turns_other_failures_into_a_503_status_naming_the_upstream() {
        for answer in [
            Ok((502, Bytes::from_static(b"<html>bad gateway</html>"))),
            Ok((500, Bytes::from_static(b"{\"kind\":\"Other\"}"))),
            Err(PromError::Unreachable {
                reason: "connection refused".into(),
            }),
            Err(PromError::Timeout {
                after: std::time::Duration::from_secs(3),
            }),
        ] {
            let r = relay("https://keda:6443", answer);
            assert_eq!(r.status, 503);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["kind"], "Status");
            assert_eq!(v["reason"], "ServiceUnavailable");
            assert_eq!(v["code"], 503);
            let message = v["message"].as_str().unwrap();
            assert!(
                message.starts_with("external metrics upstream https://keda:6443 "),
                "{message}"
            );
        }
    }

    /// An upstream answering from a table, recording what it was asked.
    struct Table(
        std::sync::Mutex<Vec<String>>,
        Vec<(&'static str, u16, &'static str)>,
    );

    impl Upstream for Table {
        fn get<'a>(
            &'a self,
            path_and_query: &'a str,
        ) -> Pin<Box<dyn Future<Output = UpstreamAnswer> + Send + 'a>> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(path_and_query.to_owned());
            let found = self.1.iter().find(|(p, _, _)| *p == path_and_query);
            let answer = match found {
                Some((_, status, body)) => Ok((*status, Bytes::from_static(body.as_bytes()))),
                None => Err(PromError::Unreachable {
                    reason: "connection refused".into(),
                }),
            };
            Box::pin(async move { answer })
        }
    }

    #[tokio::test]
    async fn refresh_keeps_the_last_list_when_the_upstream_fails() {
        let list = r#"{"kind":"APIResourceList","resources":[{"name":"theirs","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]},{"name":"both","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]}]}"#;
        let f = Forwarder::new(
            Table(Default::default(), vec![(DISCOVERY_PATH, 200, list)]),
            "https://up",
        );
        assert_eq!(f.refresh(&[res("both")]).await, Ok(2));
        let names = |v: Vec<ApiResource>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(f.merged(vec![res("both")])), vec!["both", "theirs"]);
        let down = Forwarder::new(Table(Default::default(), vec![]), "https://up");
        assert!(down.refresh(&[]).await.is_err());
        assert!(down.listed().is_empty());
    }
}
