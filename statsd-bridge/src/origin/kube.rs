//! The watch of this node's pods (kube-rs `watcher`, field selector `spec.nodeName`) that
//! feeds the [`PodIndex`](super::index::PodIndex).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kube_client::{self, ClientError, flatten};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use super::index::PodRecord;
use super::{LabelNames, Origin, cgroup};
use crate::telemetry::Telemetry;

/// The longest a list or watch request may go without a byte (watches get bookmarks and
/// end within 5 minutes, kube-rs' default `timeoutSeconds` of 290 s).
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// First delay before listing again after a watch start answered 410 Gone; doubles up to
/// [`GONE_RELIST_DELAY_MAX`].
const GONE_RELIST_DELAY: Duration = Duration::from_millis(500);
const GONE_RELIST_DELAY_MAX: Duration = Duration::from_secs(30);

/// A client for the pod watch: the kubeconfig given, else the in-cluster config.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => kube_client::from_kubeconfig(path).await?,
        None => kube_client::incluster()?,
    };
    kube_client::build(config, Duration::from_secs(10), READ_TIMEOUT, None)
}

/// What the index keeps of a pod.
pub fn record(pod: &Pod, names: &LabelNames) -> PodRecord {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let parse = |s: &str| s.parse::<IpAddr>().ok();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| parse(&p.ip))
        .collect();
    if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(parse)
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    let mut host_ips: Vec<IpAddr> = status
        .and_then(|s| s.host_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| parse(&p.ip))
        .collect();
    if let Some(ip) = status.and_then(|s| s.host_ip.as_deref()).and_then(parse)
        && !host_ips.contains(&ip)
    {
        host_ips.push(ip);
    }
    let containers = status
        .into_iter()
        .flat_map(|s| {
            [
                s.container_statuses.as_ref(),
                s.init_container_statuses.as_ref(),
                s.ephemeral_container_statuses.as_ref(),
            ]
        })
        .flatten()
        .flatten()
        .filter_map(|c| c.container_id.as_deref())
        .filter(|id| !id.is_empty())
        .map(cgroup::bare_container_id)
        .collect();
    let labels = meta
        .labels
        .as_ref()
        .map(|all| {
            names
                .pod_label_keys()
                .filter_map(|k| all.get(k).map(|v| (k.to_owned(), v.clone())))
                .collect()
        })
        .unwrap_or_default();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    PodRecord {
        uid: meta.uid.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        ips,
        host_ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        containers,
        labels,
        finished: matches!(phase, "Succeeded" | "Failed"),
        created: meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
    }
}

/// The next item of `stream`.
async fn next<S: WatchStreamExt + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Keeps `origin`'s pod index equal to the pods of `node` until `stop`.
pub async fn watch_pods(
    client: kube::Client,
    node: String,
    origin: Arc<Origin>,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let Some(pods) = origin.pods() else {
        return;
    };
    let names = origin.names().clone();
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={node}");
    let start = || {
        Box::pin(
            watcher::watcher(api.clone(), watcher::Config::default().fields(&selector))
                .default_backoff(),
        )
    };
    let mut events = start();
    let mut gone_starts: u32 = 0;
    let mut listing: Option<Vec<PodRecord>> = None;
    let size = |len: usize| {
        telemetry
            .origin_pods
            .set(i64::try_from(len).unwrap_or(i64::MAX))
    };
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = next(&mut events) => event,
        };
        let Some(event) = event else {
            tracing::error!(%node, "The pod watch ended; origin labels are no longer updated.");
            return;
        };
        match event {
            Ok(Event::Init) => listing = Some(Vec::new()),
            Ok(Event::InitApply(pod)) => {
                let r = record(&pod, &names);
                match &mut listing {
                    Some(records) => records.push(r),
                    None => size(pods.update(|index| {
                        index.upsert(r);
                        index.len()
                    })),
                }
            }
            Ok(Event::InitDone) => {
                let records = listing.take().unwrap_or_default();
                let len = pods.update(|index| {
                    index.replace_all(records, Instant::now());
                    index.len()
                });
                size(len);
                if !pods.synced() {
                    pods.mark_synced();
                    tracing::info!(%node, pods = len, "Pod index synced; origin labels are on.");
                } else {
                    tracing::debug!(%node, pods = len, "Pods relisted.");
                }
            }
            Ok(Event::Apply(pod)) => {
                gone_starts = 0;
                let r = record(&pod, &names);
                size(pods.update(|index| {
                    index.upsert(r);
                    index.len()
                }));
            }
            Ok(Event::Delete(pod)) => {
                gone_starts = 0;
                let uid = pod.metadata.uid.unwrap_or_default();
                size(pods.update(|index| {
                    index.remove(&uid, Instant::now());
                    index.len()
                }));
            }
            Err(watcher::Error::WatchStartFailed(kube::Error::Api(status)))
                if status.code == 410 =>
            {
                // kube's watcher would retry from the same, expired resourceVersion
                // forever; client-go lists again, and so do we, after a growing delay.
                telemetry.origin_watch_restarts.inc();
                let delay = GONE_RELIST_DELAY
                    .saturating_mul(1 << gone_starts.min(6))
                    .min(GONE_RELIST_DELAY_MAX);
                gone_starts = gone_starts.saturating_add(1);
                tracing::debug!(error = %status.message, ?delay, "Pod watch start answered 410 Gone; listing again.");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                events = start();
            }
            Err(e) => {
                telemetry.origin_watch_restarts.inc();
                match &e {
                    watcher::Error::WatchError(status) if status.code == 410 => {
                        tracing::debug!(error = %e, "Pod watch expired; listing again.");
                    }
                    _ => {
                        tracing::warn!(error = %flatten(&e), "Watching pods failed; retrying with backoff.")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_as_the_api_sends_it() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1",
                "creationTimestamp": "2026-11-23T10:00:00Z",
                "labels": {"app": "web", "pod-template-hash": "abc", "app.kubernetes.io/name": "shop-web"}
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
            "status": {
                "phase": "Running",
                "hostIP": "10.0.0.1", "hostIPs": [{"ip": "10.0.0.1"}],
                "podIP": "10.1.0.11", "podIPs": [{"ip": "10.1.0.11"}, {"ip": "fd00::11"}],
                "containerStatuses": [{"name": "app", "containerID": "containerd://ABC", "image": "i", "imageID": "", "ready": true, "restartCount": 0}],
                "initContainerStatuses": [{"name": "init", "containerID": "containerd://def", "image": "i", "imageID": "", "ready": false, "restartCount": 0}],
                // `kubectl debug`'s container, running, and one still waiting (no ID yet).
                "ephemeralContainerStatuses": [
                    {"name": "debug", "containerID": "cri-o://0FF1CE", "image": "i", "imageID": "", "ready": false, "restartCount": 0},
                    {"name": "debug-2", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ]
            }
        }))
        .unwrap();
        let names = LabelNames::new(
            "namespace",
            "pod",
            &[
                "app".to_owned(),
                "app.kubernetes.io/name".to_owned(),
                "absent".to_owned(),
            ],
        );
        let r = record(&pod, &names);
        assert_eq!(
            (r.uid.as_str(), r.namespace.as_str(), r.name.as_str()),
            ("u-1", "shop", "web-1")
        );
        assert_eq!(
            r.ips,
            [
                "10.1.0.11".parse::<IpAddr>().unwrap(),
                "fd00::11".parse().unwrap()
            ]
        );
        assert_eq!(r.host_ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.containers, ["abc", "def", "0ff1ce"]);
        // A `|c:` naming the ephemeral container finds the pod: it sends from a debug shell.
        let mut index = crate::origin::index::PodIndex::new(names.clone(), Duration::ZERO);
        index.upsert(r.clone());
        assert!(
            matches!(
                index.lookup_container("0ff1ce"),
                crate::origin::Lookup::Hit(_)
            ),
            "the ephemeral container isn't indexed"
        );
        assert_eq!(
            r.labels,
            [
                ("app".to_owned(), "web".to_owned()),
                ("app.kubernetes.io/name".to_owned(), "shop-web".to_owned())
            ]
        );
        assert!(!r.finished && !r.host_network);
        assert_eq!(r.created, 1_795_428_000);
    }

    #[test]
    fn a_pod_without_a_status_yet() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u"},
            "spec": {"hostNetwork": true, "containers": []}
        }))
        .unwrap();
        let r = record(&pod, &LabelNames::new("namespace", "pod", &[]));
        assert!(r.ips.is_empty() && r.containers.is_empty() && r.host_network);
    }
}
