//! `prom-adapter` secured as an aggregated API server: delegated authentication (front-proxy
//! request headers, x509 client certificates, bearer tokens through TokenReview) and
//! authorization (SubjectAccessReview), against a fake kube-apiserver
//! ([`pipeline_tests::kubeapi::FakeKubeApi`]) and certificates made for the test
//! ([`pipeline_tests::pki::Pki`]); plus serving-certificate rotation, the refusal to start
//! without credentials sources, and `--insecure-dev`.
//!
//! The metrics come the way `tests/adapter.rs` gets them: an in-process exporter (the gauges of
//! that test: `app_cpu_cores`, `app_memory_kilobytes` for pod web-0, `queue_depth` for two
//! queues), a real Prometheus scraping it, and the rules fixture `tests/data/adapter/rules.yaml`.
//! Requests are made with `curl` (status codes, exact headers, client certificates, the serving
//! certificate verified against its CA with `--cacert`), `kubectl get --raw` with a client
//! certificate in its kubeconfig, and `openssl s_client` for a connection kept open across a
//! certificate rotation.
//!
//! Most tests share one adapter and fake (started by the first test that needs it, kept in a
//! static and reaped by a [`Leash`] at exit); each test uses identities of its own, so the
//! adapter's TokenReview and SubjectAccessReview caches never carry an answer from one test
//! into another. The tests that stop the fake, read the ConfigMap instead of flags, or rotate
//! the serving certificate have their own adapter (and fake); all share one Prometheus.
//!
//! Identities: `warmup` (waits for discovery), `bob` + group `g1` (authorized), `mallory`
//! (explicitly denied), `nobody` (no opinion), `system:kube-aggregator` in `system:masters`
//! (the availability probe; the fake denies it, so a review would show), `alice` (client
//! certificate), and the tokens of [`CAROL_TOKEN`] and [`GRACE_TOKEN`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pipeline_tests::exporter::ExportedSeries;
use pipeline_tests::http::{HttpResponse, parse_response};
use pipeline_tests::kubeapi::{
    AUTH_CONFIGMAP, AccessReview, Decision, FakeKubeApi, KUBECONFIG_TOKEN, NonResourceAttributes,
    ResourceAttributes, UserInfo, auth_config_data,
};
use pipeline_tests::kubectl::{CurlOptions, OPENSSL_HINT, curl, run_command};
use pipeline_tests::metrics_api::{
    CUSTOM_V2, EXTERNAL_V1, check_status, log_dir, rules, shared_fixture,
};
use pipeline_tests::pki::{ALICE, ALICE_GROUP, CertPair, FRONT_PROXY_CN, Pki, pem};
use pipeline_tests::promadapter::Leash;
use pipeline_tests::util::{replace_file, scaled};
use pipeline_tests::{Adapter, Exporter, PATIENCE, Prometheus, eventually, require_program};
use serde_json::{Value, json};
use tempfile::TempDir;

const PODS_CPU: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/app_cpu_cores";
const PODS_MEMORY: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/app_memory_kilobytes";
const QUEUE_DEPTH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth";

/// What `app_cpu_cores` of pod web-0 reads as (24.233138021 as a canonical Quantity).
const WEB0_CPU: &str = "24233138021n";

/// The group kube-apiserver adds to every authenticated user.
const AUTHENTICATED: &str = "system:authenticated";

/// The reason the fake gives when it denies mallory.
const MALLORY_REASON: &str = "mallory is on the deny list of the e2e policy";
/// The reason the fake gives when no rule matches nobody.
const NOBODY_REASON: &str = "no e2e policy rule matched";
/// The reason the fake gives if the aggregator is ever reviewed.
const AGGREGATOR_REASON: &str = "the aggregator's probe must not be reviewed";

/// A bearer token the fake knows: user carol (uid, group and extra set).
const CAROL_TOKEN: &str = "carol-token-5f2b";
/// A bearer token the fake knows: user grace.
const GRACE_TOKEN: &str = "grace-token-91ac";

/// The series the exporter serves: the gauges `queue_depth`, `app_cpu_cores` and
/// `app_memory_kilobytes` of `tests/adapter.rs`
/// ([`pipeline_tests::metrics_api::exported_series`]).
fn exported_series() -> Vec<ExportedSeries> {
    pipeline_tests::metrics_api::exported_series()
        .into_iter()
        .filter(|s| {
            matches!(
                s.name.as_str(),
                "queue_depth" | "app_cpu_cores" | "app_memory_kilobytes"
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Fixtures

/// The exporter, a Prometheus scraping it, and the certificates: shared by every test here.
struct Peers {
    prom: Prometheus,
    _exporter: Exporter,
    pki: Pki,
    _leash: Leash,
}

static PEERS: OnceLock<Result<Peers, String>> = OnceLock::new();

fn peers() -> &'static Peers {
    let what = "the exporter + Prometheus of the auth tests";
    shared_fixture(&PEERS, what, || {
        let pki = Pki::generate().expect("generating the test PKI");
        let exporter = Exporter::start(exported_series());
        let prom = Prometheus::start_job("adapter-auth-e2e", &[exporter.addr()]);
        prom.wait_targets_up(1);
        eventually("every exported series in Prometheus", PATIENCE, || {
            let n = prom.query("{__name__=~\"app_.*|queue_depth\"}")?.len();
            ensure!(n == exported_series().len(), "{n} series so far");
            Ok(())
        });
        let logs = log_dir(prom.process().stderr_path());
        let leash = Leash::new(&[prom.process().pid()], &[prom.dir(), &logs, pki.dir()])
            .expect("leashing Prometheus");
        Peers {
            prom,
            _exporter: exporter,
            pki,
            _leash: leash,
        }
    })
}

/// The e2e policy: mallory denied, nobody without an opinion, the aggregator denied (it must
/// never be asked about), everyone else allowed.
fn policy(review: &AccessReview) -> Decision {
    match review.user.as_str() {
        "mallory" => Decision::deny(MALLORY_REASON),
        "nobody" => Decision::no_opinion(NOBODY_REASON),
        "system:kube-aggregator" => Decision::deny(AGGREGATOR_REASON),
        _ => Decision::allow("allowed by the e2e policy"),
    }
}

/// A fake kube-apiserver with [`policy`], the tokens of carol, grace, dave and frank, and the
/// authentication ConfigMap as kube-apiserver would write it for `pki` (the same CAs and
/// allowed names the flags give, so flags and ConfigMap never disagree).
fn start_fake(pki: &Pki) -> FakeKubeApi {
    let fake = FakeKubeApi::start();
    fake.set_policy(policy);
    let mut carol = UserInfo::new("carol", &["token-readers"]);
    carol.uid = "uid-carol".to_owned();
    carol
        .extra
        .insert("scopes".to_owned(), vec!["metrics".to_owned()]);
    fake.set_token(CAROL_TOKEN, carol);
    fake.set_token(GRACE_TOKEN, UserInfo::new("grace", &["token-readers"]));
    fake.set_token("dave-token", UserInfo::new("dave", &[]));
    fake.set_token("frank-token", UserInfo::new("frank", &[]));
    fake.set_auth_config(Some(auth_config_data(
        Some(&pem(&pki.client_ca)),
        Some(&pem(&pki.front_proxy_ca)),
        &[FRONT_PROXY_CN],
    )));
    fake
}

/// Which authentication flags a secured adapter gets besides the kubeconfigs.
#[derive(Clone, Copy, PartialEq)]
enum CaFlags {
    /// `--requestheader-client-ca-file`, `--requestheader-allowed-names`, `--client-ca-file`.
    Given,
    /// None: the CAs come from the ConfigMap.
    FromConfigMap,
}

/// A secured adapter (no `--insecure-dev`) and the fake kube-apiserver it delegates to.
struct Secured {
    // Field order is drop order: the adapter before the fake.
    adapter: Adapter,
    fake: FakeKubeApi,
    kubeconfig_dir: TempDir,
}

impl Secured {
    /// Starts a fake ([`start_fake`]) and an adapter serving `serving` with both kubeconfigs
    /// pointing at the fake, the CA flags as `ca_flags` says, and `extra` flags. Its kubectl
    /// is alice (client certificate) verifying the serving CA.
    fn start(peers: &Peers, ca_flags: CaFlags, serving: &CertPair, extra: &[&str]) -> Secured {
        let pki = &peers.pki;
        let fake = start_fake(pki);
        let kubeconfig_dir = tempfile::Builder::new()
            .prefix("kubeapi-kubeconfig-")
            .tempdir()
            .expect("creating a dir for the kubeconfig");
        let kubeconfig = fake
            .write_kubeconfig(kubeconfig_dir.path())
            .expect("writing the fake's kubeconfig");
        let mut args = pki.adapter_flags(serving, &kubeconfig, ca_flags == CaFlags::Given);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let adapter = Adapter::start_with(&rules(), &peers.prom.url(), &args, &pki.as_alice());
        Secured {
            adapter,
            fake,
            kubeconfig_dir,
        }
    }

    /// `GET path` with curl as `who`.
    ///
    /// # Panics
    /// When curl fails (no HTTP answer), with its output; when the adapter has exited.
    fn get(&self, path: &str, who: &CurlOptions<'_>) -> HttpResponse {
        self.try_get(path, who).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn try_get(&self, path: &str, who: &CurlOptions<'_>) -> Result<HttpResponse> {
        if let Err(e) = self.adapter.process().ensure_running() {
            panic!("{e:#}");
        }
        curl(&format!("https://{}{path}", self.adapter.addr()), who)
            .with_context(|| format!("GET {path}"))
    }

    /// Waits until `who` reads the pods and the external metric (discovery has run).
    fn wait_serving(&self, who: &CurlOptions<'_>) {
        eventually("the secured adapter to serve the metrics", PATIENCE, || {
            let r = self.try_get(PODS_CPU, who)?;
            check_cpu_list(&r).with_context(|| format!("GET {PODS_CPU}"))?;
            let r = self.try_get(QUEUE_DEPTH, who)?;
            check_queue_list(&r).with_context(|| format!("GET {QUEUE_DEPTH}"))?;
            Ok(())
        });
    }

    /// The dirs and pids a [`Leash`] must reap.
    fn leash(&self) -> Leash {
        let dirs = [
            self.adapter.dir().to_path_buf(),
            log_dir(self.adapter.process().stderr_path()),
            self.adapter.kubectl().dir().to_path_buf(),
            self.kubeconfig_dir.path().to_path_buf(),
        ];
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        Leash::new(&[self.adapter.process().pid()], &dirs).expect("leashing the adapter")
    }
}

/// The shared secured adapter: CA flags given, token cache of two minutes (so the
/// "reviewed once" test can't race the TTL).
struct Shared {
    secured: Secured,
    _leash: Leash,
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

/// Runs `test` against the shared secured adapter; prints its log tail when the test fails.
fn with_shared(test: impl FnOnce(&Peers, &Secured)) {
    let peers = peers();
    let shared = shared_fixture(&SHARED, "the shared secured adapter", || {
        let secured = Secured::start(
            peers,
            CaFlags::Given,
            &peers.pki.serving,
            &["--authentication-token-webhook-cache-ttl", "2m"],
        );
        secured.wait_serving(&front_proxy(&peers.pki, &[("X-Remote-User", "warmup")]));
        let leash = secured.leash();
        Shared {
            secured,
            _leash: leash,
        }
    });
    let secured = &shared.secured;
    run_logged(secured, || test(peers, secured));
}

/// Runs `test`; when it panics, prints the adapter's log tail first.
fn run_logged(secured: &Secured, test: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(test)) {
        eprintln!("{}", secured.adapter.log_tail(80));
        resume_unwind(panic);
    }
}

// ------------------------------------------------------------------------------------------
// Callers

/// No credentials; the serving certificate verified.
fn anonymous(pki: &Pki) -> CurlOptions<'_> {
    CurlOptions {
        cacert: Some(&pki.serving_ca),
        ..CurlOptions::default()
    }
}

/// The front proxy (kube-apiserver's aggregator): its client certificate and `headers`.
fn front_proxy<'a>(pki: &'a Pki, headers: &[(&'a str, &'a str)]) -> CurlOptions<'a> {
    with_cert(pki, &pki.front_proxy_client, headers)
}

/// A client certificate `pair` and `headers`.
fn with_cert<'a>(
    pki: &'a Pki,
    pair: &'a CertPair,
    headers: &[(&'a str, &'a str)],
) -> CurlOptions<'a> {
    CurlOptions {
        cacert: Some(&pki.serving_ca),
        client_cert: Some((&pair.cert, &pair.key)),
        bearer: None,
        headers: headers.to_vec(),
    }
}

/// A bearer token and `headers`.
fn with_token<'a>(pki: &'a Pki, token: &'a str, headers: &[(&'a str, &'a str)]) -> CurlOptions<'a> {
    CurlOptions {
        cacert: Some(&pki.serving_ca),
        client_cert: None,
        bearer: Some(token),
        headers: headers.to_vec(),
    }
}

// ------------------------------------------------------------------------------------------
// Reading answers

fn body_text(r: &HttpResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The JSON body of a 200 answer.
fn ok_json(r: &HttpResponse) -> Result<Value> {
    ensure!(
        r.status == 200,
        "expected HTTP 200, got {} with {}",
        r.status,
        body_text(r)
    );
    serde_json::from_slice(&r.body).with_context(|| format!("not JSON: {}", body_text(r)))
}

/// `pods/*/app_cpu_cores`: a MetricValueList with web-0 at [`WEB0_CPU`].
fn check_cpu_list(r: &HttpResponse) -> Result<()> {
    let list = ok_json(r)?;
    ensure!(
        list["kind"] == "MetricValueList"
            && list["items"].as_array().is_some_and(|items| items
                .iter()
                .any(|i| i["describedObject"]["name"] == "web-0" && i["value"] == WEB0_CPU)),
        "expected a MetricValueList with web-0 at {WEB0_CPU}; got {list}"
    );
    Ok(())
}

/// `queue_depth`: an ExternalMetricValueList with the values 42 and 7.
fn check_queue_list(r: &HttpResponse) -> Result<()> {
    let list = ok_json(r)?;
    let values: BTreeSet<&str> = list["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["value"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        list["kind"] == "ExternalMetricValueList" && values == BTreeSet::from(["42", "7"]),
        "expected an ExternalMetricValueList with the values 42 and 7; got {list}"
    );
    Ok(())
}

/// Checks that `r` is a `metav1.Status` failure with `code` and `reason`, served as JSON
/// ([`check_status`]); returns it.
fn expect_status(r: &HttpResponse, code: u16, reason: &str, what: &str) -> Value {
    check_status(r, code, reason, what).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `GET path` as `who` must be refused with 401 Unauthorized (a refused TLS handshake is
/// reported as such, not accepted).
fn expect_unauthorized(secured: &Secured, path: &str, who: &CurlOptions<'_>, what: &str) {
    match secured.try_get(path, who) {
        Ok(r) => {
            expect_status(&r, 401, "Unauthorized", what);
        }
        Err(e) => panic!(
            "{what}: expected a 401 Unauthorized Status, but the request got no HTTP answer \
             (a TLS handshake refused instead of a 401?): {e:#}"
        ),
    }
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

fn custom_pods(metric: &str) -> ResourceAttributes {
    ResourceAttributes {
        namespace: "default".to_owned(),
        verb: "get".to_owned(),
        group: "custom.metrics.k8s.io".to_owned(),
        version: "v1beta2".to_owned(),
        resource: "pods".to_owned(),
        subresource: metric.to_owned(),
        name: "*".to_owned(),
    }
}

/// Panics unless one of `reviews` has exactly the resource attributes `want`.
fn assert_reviewed(reviews: &[AccessReview], want: &ResourceAttributes, what: &str) {
    assert!(
        reviews
            .iter()
            .any(|r| r.resource_attributes.as_ref() == Some(want)),
        "{what}: expected a SubjectAccessReview with resourceAttributes {want:?}; the fake got \
         {reviews:#?}"
    );
}

// ------------------------------------------------------------------------------------------
// Authentication

/// 1. Without a certificate or a token, API paths answer 401 and never reach the authorizer;
///    the health paths (and `/openapi/*`, always allowed by default) need no credentials.
#[test]
fn auth_without_credentials_is_401_but_health_is_open() {
    with_shared(|peers, s| {
        let nobody = anonymous(&peers.pki);
        for path in [PODS_CPU, QUEUE_DEPTH, CUSTOM_V2, "/apis"] {
            expect_unauthorized(s, path, &nobody, &format!("GET {path} without credentials"));
        }
        for path in ["/healthz", "/livez", "/readyz"] {
            let r = s.get(path, &nobody);
            assert_eq!(
                r.status,
                200,
                "GET {path} without credentials: expected 200, got {} with {}",
                r.status,
                body_text(&r)
            );
        }
        let r = s.get("/openapi/v2", &nobody);
        assert!(
            !matches!(r.status, 401 | 403),
            "GET /openapi/v2 without credentials: /openapi/* is always allowed by default, \
             expected 200 or 404, got {} with {}",
            r.status,
            body_text(&r)
        );
        let anonymous_reviews = s.fake.access_reviews_of("system:anonymous");
        assert!(
            anonymous_reviews.is_empty(),
            "unauthenticated requests must be refused before authorization; the fake was \
             asked {anonymous_reviews:#?}"
        );
    });
}

/// 2. Request headers are believed only from a front-proxy certificate with an allowed CN:
///    not from a rogue CA's look-alike, not from another CN of the right CA, not without a
///    certificate, not from a user's certificate or a token (those authenticate as
///    themselves, headers ignored).
#[test]
fn auth_request_headers_are_believed_only_from_the_front_proxy() {
    with_shared(|peers, s| {
        let pki = &peers.pki;
        let eve = [
            ("X-Remote-User", "eve"),
            ("X-Remote-Group", "system:masters"),
        ];
        expect_unauthorized(
            s,
            PODS_CPU,
            &with_cert(pki, &pki.rogue_front_proxy, &eve),
            "a front-proxy look-alike from a rogue CA with X-Remote-User",
        );
        expect_unauthorized(
            s,
            PODS_CPU,
            &with_cert(pki, &pki.front_proxy_stranger, &eve),
            "a front-proxy CA certificate whose CN is not in --requestheader-allowed-names",
        );
        expect_unauthorized(
            s,
            PODS_CPU,
            &front_proxy(pki, &[]),
            "the front-proxy certificate without X-Remote-User",
        );
        let mut headers_only = anonymous(pki);
        headers_only.headers = eve.to_vec();
        expect_unauthorized(
            s,
            PODS_CPU,
            &headers_only,
            "X-Remote-User without a certificate",
        );
        assert!(
            s.fake.access_reviews_of("eve").is_empty(),
            "no request claiming to be eve was authenticated, yet the fake was asked about eve: \
             {:#?}",
            s.fake.access_reviews_of("eve")
        );

        // Forged headers with credentials of one's own: ignored. (A forged system:masters
        // believed would skip the review altogether.)
        let forged = [
            ("X-Remote-User", "mallet"),
            ("X-Remote-Group", "system:masters"),
        ];
        let r = s.get(PODS_MEMORY, &with_cert(pki, &pki.alice, &forged));
        assert!(
            ok_json(&r).is_ok(),
            "alice's certificate with forged headers: expected 200 as alice, got {} with {}",
            r.status,
            body_text(&r)
        );
        let alice = s.fake.access_reviews_of(ALICE);
        assert_reviewed(
            &alice,
            &custom_pods("app_memory_kilobytes"),
            "alice's certificate with a forged X-Remote-User",
        );
        for review in alice.iter().filter(|r| {
            r.resource_attributes
                .as_ref()
                .is_some_and(|a| a.subresource == "app_memory_kilobytes")
        }) {
            assert_eq!(
                set(review.groups.iter().map(String::as_str)),
                set([ALICE_GROUP, AUTHENTICATED]),
                "alice's groups come from her certificate's O (plus {AUTHENTICATED}), never \
                 from X-Remote-Group: {review:#?}"
            );
        }
        let r = s.get(PODS_MEMORY, &with_token(pki, GRACE_TOKEN, &forged));
        assert!(
            ok_json(&r).is_ok(),
            "grace's token with forged headers: expected 200 as grace, got {} with {}",
            r.status,
            body_text(&r)
        );
        assert_reviewed(
            &s.fake.access_reviews_of("grace"),
            &custom_pods("app_memory_kilobytes"),
            "grace's token with a forged X-Remote-User",
        );
        let mallet = s.fake.access_reviews_of("mallet");
        assert!(
            mallet.is_empty(),
            "the forged X-Remote-User reached the authorizer: {mallet:#?}"
        );
    });
}

/// 3. The front proxy's user, groups and extra reach the SubjectAccessReview, with the
///    resource attributes of a custom pods read, an external read, and a discovery path.
#[test]
fn auth_front_proxy_user_is_reviewed_with_the_request_attributes() {
    with_shared(|peers, s| {
        let bob = front_proxy(
            &peers.pki,
            &[
                ("X-Remote-User", "bob"),
                ("X-Remote-Group", "g1"),
                ("X-Remote-Extra-Scopes", "metrics"),
            ],
        );
        let r = s.get(PODS_CPU, &bob);
        check_cpu_list(&r).unwrap_or_else(|e| panic!("GET {PODS_CPU} as bob: {e:#}"));
        let r = s.get(QUEUE_DEPTH, &bob);
        check_queue_list(&r).unwrap_or_else(|e| panic!("GET {QUEUE_DEPTH} as bob: {e:#}"));
        let r = s.get(CUSTOM_V2, &bob);
        let list = ok_json(&r).unwrap_or_else(|e| panic!("GET {CUSTOM_V2} as bob: {e:#}"));
        assert_eq!(list["kind"], "APIResourceList", "GET {CUSTOM_V2}: {list}");

        let reviews = s.fake.access_reviews_of("bob");
        assert_reviewed(
            &reviews,
            &custom_pods("app_cpu_cores"),
            "GET pods/*/app_cpu_cores",
        );
        assert_reviewed(
            &reviews,
            &ResourceAttributes {
                namespace: "default".to_owned(),
                verb: "list".to_owned(),
                group: "external.metrics.k8s.io".to_owned(),
                version: "v1beta1".to_owned(),
                resource: "queue_depth".to_owned(),
                ..ResourceAttributes::default()
            },
            "GET external queue_depth",
        );
        let discovery = NonResourceAttributes {
            path: CUSTOM_V2.to_owned(),
            verb: "get".to_owned(),
        };
        assert!(
            reviews
                .iter()
                .any(|r| r.non_resource_attributes.as_ref() == Some(&discovery)
                    && r.resource_attributes.is_none()),
            "GET {CUSTOM_V2}: expected a review with nonResourceAttributes {discovery:?} only; \
             the fake got {reviews:#?}"
        );
        for review in &reviews {
            assert_eq!(
                set(review.groups.iter().map(String::as_str)),
                set(["g1", AUTHENTICATED]),
                "bob's groups: X-Remote-Group plus {AUTHENTICATED}: {review:#?}"
            );
            assert_eq!(
                review.extra,
                BTreeMap::from([("scopes".to_owned(), vec!["metrics".to_owned()])]),
                "bob's extra from X-Remote-Extra-Scopes (key lower-cased): {review:#?}"
            );
        }
    });
}

/// 4. A review that does not allow gives 403 Forbidden carrying the fake's reason: an
///    explicit deny and "no opinion" alike, for a metric and a discovery path.
#[test]
fn auth_denied_review_is_403_with_the_reason() {
    with_shared(|peers, s| {
        let cases = [
            ("mallory", MALLORY_REASON, PODS_CPU),
            ("mallory", MALLORY_REASON, CUSTOM_V2),
            ("nobody", NOBODY_REASON, QUEUE_DEPTH),
        ];
        for (user, reason, path) in cases {
            let who = front_proxy(&peers.pki, &[("X-Remote-User", user)]);
            let what = format!("GET {path} as {user}");
            let status = expect_status(&s.get(path, &who), 403, "Forbidden", &what);
            let message = status["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(reason),
                "{what}: expected the 403 message to carry the review's reason {reason:?}; got \
                 {status}"
            );
        }
        assert!(
            !s.fake.access_reviews_of("mallory").is_empty(),
            "mallory was refused without a review"
        );
    });
}

/// 5. A bearer token is reviewed (TokenReview) and its user authorized; within the cache TTL
///    the same token is not reviewed again; an unknown token is 401.
#[test]
fn auth_bearer_token_is_reviewed_once_within_the_ttl() {
    with_shared(|peers, s| {
        let carol = with_token(&peers.pki, CAROL_TOKEN, &[]);
        for attempt in 1..=2 {
            let r = s.get(PODS_CPU, &carol);
            check_cpu_list(&r).unwrap_or_else(|e| {
                panic!("GET {PODS_CPU} with carol's token (#{attempt}): {e:#}")
            });
        }
        let reviews: Vec<_> = s
            .fake
            .token_reviews()
            .into_iter()
            .filter(|r| r.spec()["token"] == CAROL_TOKEN)
            .collect();
        assert_eq!(
            reviews.len(),
            1,
            "two requests with one token within the TTL (2m): expected one TokenReview, the \
             fake got {reviews:#?}"
        );
        let review = &reviews[0];
        let body = review.body.clone().unwrap_or_default();
        assert_eq!(
            (&body["apiVersion"], &body["kind"]),
            (&json!("authentication.k8s.io/v1"), &json!("TokenReview")),
            "the TokenReview's envelope: {body}"
        );
        assert_eq!(
            review.header("authorization"),
            Some(format!("Bearer {KUBECONFIG_TOKEN}").as_str()),
            "the adapter must call kube-apiserver with its kubeconfig's credentials"
        );

        let access = s.fake.access_reviews_of("carol");
        assert_reviewed(&access, &custom_pods("app_cpu_cores"), "carol's request");
        for a in &access {
            assert_eq!(
                (
                    a.uid.as_str(),
                    set(a.groups.iter().map(String::as_str)),
                    &a.extra
                ),
                (
                    "uid-carol",
                    set(["token-readers", AUTHENTICATED]),
                    &BTreeMap::from([("scopes".to_owned(), vec!["metrics".to_owned()])])
                ),
                "the SubjectAccessReview carries the TokenReview's uid, groups (plus \
                 {AUTHENTICATED}) and extra: {a:#?}"
            );
        }

        let stranger = with_token(&peers.pki, "no-such-token", &[]);
        expect_unauthorized(s, PODS_CPU, &stranger, "GET with an unknown token");
        assert!(
            s.fake
                .token_reviews()
                .iter()
                .any(|r| r.spec()["token"] == "no-such-token"),
            "the unknown token was refused without a TokenReview"
        );
    });
}

/// 7. The aggregator's availability probe (front-proxy certificate, `system:kube-aggregator`
///    in `system:masters`) reads discovery without any SubjectAccessReview.
#[test]
fn auth_aggregator_probe_skips_the_review() {
    with_shared(|peers, s| {
        let aggregator = front_proxy(
            &peers.pki,
            &[
                ("X-Remote-User", "system:kube-aggregator"),
                ("X-Remote-Group", "system:masters"),
            ],
        );
        for path in [CUSTOM_V2, EXTERNAL_V1] {
            let r = s.get(path, &aggregator);
            let list = ok_json(&r)
                .unwrap_or_else(|e| panic!("GET {path} as the aggregator (system:masters): {e:#}"));
            assert_eq!(list["kind"], "APIResourceList", "GET {path}: {list}");
        }
        let reviews: Vec<_> = s
            .fake
            .access_reviews()
            .into_iter()
            .filter(|r| {
                r.user == "system:kube-aggregator" || r.groups.iter().any(|g| g == "system:masters")
            })
            .collect();
        assert!(
            reviews.is_empty(),
            "system:masters must be allowed without a SubjectAccessReview; the fake got \
             {reviews:#?}"
        );
    });
}

/// 9. kubectl with alice's client certificate in its kubeconfig, verifying the serving
///    certificate against its CA, reads the pods metric.
#[test]
fn auth_kubectl_with_a_client_certificate_reads_metrics() {
    with_shared(|_, s| {
        let list = s
            .adapter
            .get_json(PODS_CPU)
            .unwrap_or_else(|e| panic!("kubectl get --raw {PODS_CPU} as alice: {e:#}"));
        let items = list["items"].as_array().cloned().unwrap_or_default();
        assert!(
            items
                .iter()
                .any(|i| i["describedObject"]["name"] == "web-0" && i["value"] == WEB0_CPU),
            "kubectl get --raw {PODS_CPU}: expected web-0 at {WEB0_CPU}; got {list}"
        );
        assert_reviewed(
            &s.fake.access_reviews_of(ALICE),
            &custom_pods("app_cpu_cores"),
            "kubectl as alice (a `*` sent as %2A)",
        );
    });
}

// ------------------------------------------------------------------------------------------
// Tests with an adapter of their own

/// 6. With kube-apiserver unreachable, a request that needs a TokenReview or a
///    SubjectAccessReview fails closed with 503, never 200; when it is back, both succeed.
#[test]
fn auth_kube_apiserver_down_fails_closed_with_503() {
    let peers = peers();
    let pki = &peers.pki;
    let s = Secured::start(peers, CaFlags::Given, &pki.serving, &[]);
    run_logged(&s, || {
        s.wait_serving(&with_token(pki, "frank-token", &[]));
        s.fake.set_down(true).expect("taking the fake down");
        // Identities the adapter has never seen: nothing cached can answer for them.
        let dave = with_token(pki, "dave-token", &[]);
        let erin = front_proxy(pki, &[("X-Remote-User", "erin")]);
        for round in 1..=3 {
            for (who, what) in [(&dave, "a new token"), (&erin, "a new front-proxy user")] {
                let r = s.get(PODS_CPU, who);
                expect_status(
                    &r,
                    503,
                    "ServiceUnavailable",
                    &format!("GET {PODS_CPU} with {what} while kube-apiserver is down (#{round})"),
                );
            }
        }
        assert!(
            s.adapter.process().ensure_running().is_ok(),
            "the adapter must keep running while kube-apiserver is down"
        );
        s.fake.set_down(false).expect("bringing the fake back");
        for (who, what) in [
            (&dave, "the new token"),
            (&erin, "the new front-proxy user"),
        ] {
            eventually(
                &format!("GET {PODS_CPU} with {what} to answer 200 once kube-apiserver is back"),
                PATIENCE,
                || check_cpu_list(&s.try_get(PODS_CPU, who)?),
            );
        }
    });
}

/// 8. Without the CA flags, the front-proxy CA, allowed names and client CA come from the
///    `kube-system/extension-apiserver-authentication` ConfigMap.
#[test]
fn auth_front_proxy_ca_from_the_configmap() {
    let peers = peers();
    let pki = &peers.pki;
    let s = Secured::start(peers, CaFlags::FromConfigMap, &pki.serving, &[]);
    run_logged(&s, || {
        s.wait_serving(&front_proxy(
            pki,
            &[("X-Remote-User", "bob"), ("X-Remote-Group", "g1")],
        ));
        let lookups = s.fake.requests_to(AUTH_CONFIGMAP);
        assert!(
            lookups.iter().any(|r| r.method == "GET"
                && r.header("authorization")
                    == Some(format!("Bearer {KUBECONFIG_TOKEN}").as_str())),
            "expected the adapter to GET {AUTH_CONFIGMAP} with its kubeconfig's token; the fake \
             got {:#?}",
            s.fake.requests()
        );
        let reviews = s.fake.access_reviews_of("bob");
        assert_reviewed(
            &reviews,
            &custom_pods("app_cpu_cores"),
            "bob through the front proxy",
        );
        expect_unauthorized(
            &s,
            PODS_CPU,
            &with_cert(pki, &pki.front_proxy_stranger, &[("X-Remote-User", "eve")]),
            "a CN outside the ConfigMap's requestheader-allowed-names",
        );
        let r = s.get(PODS_CPU, &with_cert(pki, &pki.alice, &[]));
        check_cpu_list(&r).unwrap_or_else(|e| {
            panic!("alice's certificate (client-ca-file from the ConfigMap): {e:#}")
        });
    });
}

/// 10. The serving certificate is re-read when its files change: a connection opened before
///     keeps working, new connections get the new certificate (verified against the CA).
#[test]
fn auth_serving_certificate_rotation_keeps_open_connections() {
    let peers = peers();
    let pki = &peers.pki;
    let tls = tempfile::Builder::new()
        .prefix("rotation-")
        .tempdir()
        .expect("creating a dir for the serving pair");
    let live = CertPair {
        cert: tls.path().join("tls.crt"),
        key: tls.path().join("tls.key"),
        serial: pki.serving.serial,
    };
    std::fs::copy(&pki.serving.cert, &live.cert).expect("copying the serving certificate");
    std::fs::copy(&pki.serving.key, &live.key).expect("copying the serving key");
    let s = Secured::start(
        peers,
        CaFlags::Given,
        &live,
        &[
            "--cert-reload-interval",
            "200ms",
            "--authentication-skip-lookup",
        ],
    );
    run_logged(&s, || {
        let alice = with_cert(pki, &pki.alice, &[]);
        s.wait_serving(&alice);
        let first = file_fingerprint(&pki.serving.cert);
        let second = file_fingerprint(&pki.serving_next.cert);
        assert_eq!(
            served_fingerprint(s.adapter.addr()).expect("reading the served certificate"),
            first,
            "before the rotation the adapter must serve --tls-cert-file (serial {})",
            pki.serving.serial
        );

        let mut open = OpenConnection::open(s.adapter.addr(), pki).expect("opening a connection");
        let r = open
            .request(CUSTOM_V2, false)
            .expect("the first request on the open connection");
        assert_eq!(
            r.status,
            200,
            "first request on the open connection: {}",
            body_text(&r)
        );

        // The key first: until the certificate follows, the pair does not match, and the
        // adapter must keep serving the old pair rather than fail.
        let text = |p: &Path| std::fs::read_to_string(p).expect("reading a PEM file");
        replace_file(&live.key, &text(&pki.serving_next.key), None).expect("replacing the key");
        replace_file(&live.cert, &text(&pki.serving_next.cert), None)
            .expect("replacing the certificate");
        eventually(
            "new connections to get the new certificate",
            PATIENCE,
            || {
                let served = served_fingerprint(s.adapter.addr())?;
                ensure!(
                    served == second,
                    "still served {served}, want {second} (serial {})",
                    pki.serving_next.serial
                );
                Ok(())
            },
        );

        let r = open
            .request(CUSTOM_V2, true)
            .expect("the second request on the connection opened before the rotation");
        assert_eq!(
            r.status,
            200,
            "the connection opened before the rotation must keep working: {}",
            body_text(&r)
        );
        let r = s.get(PODS_CPU, &alice);
        check_cpu_list(&r).unwrap_or_else(|e| {
            panic!("a new connection verifying the rotated certificate with --cacert: {e:#}")
        });
        assert!(
            s.fake.requests_to(AUTH_CONFIGMAP).is_empty(),
            "--authentication-skip-lookup: the ConfigMap must not be read; the fake got {:#?}",
            s.fake.requests_to(AUTH_CONFIGMAP)
        );
    });
}

/// 11. Without `--insecure-dev`, the adapter refuses to start (exit 64) when it has no
///     credentials sources at all, or an authentication source (a client CA) but nothing to
///     authorize with (no kubeconfig, not in a cluster), and its message names the flags.
#[test]
fn auth_refuses_to_start_without_credentials_sources() {
    let pki = Pki::generate().expect("generating a PKI");
    let client_ca = pki.client_ca.to_string_lossy().into_owned();
    // Nothing listens on the discard port: the adapter must refuse before it needs Prometheus.
    let prometheus = "http://127.0.0.1:9";
    let cases: [(&[&str], &str, &str); 2] = [
        (
            &[],
            "--insecure-dev",
            "no authentication or authorization flags",
        ),
        (
            &["--client-ca-file", &client_ca],
            "--authorization-kubeconfig",
            "an authentication source (--client-ca-file) but no authorization source",
        ),
    ];
    for (args, flag, what) in cases {
        let run = Adapter::run_to_exit(&rules(), prometheus, args);
        assert_eq!(
            run.code(),
            Some(64),
            "{what}: expected the adapter to refuse to start with exit 64: {run}"
        );
        let output = format!("{}{}", run.stdout, run.stderr);
        assert!(
            output.contains(flag),
            "{what}: expected the message to name {flag}: {run}"
        );
    }
}

/// `--insecure-dev` serves without any credentials, and says so in a warning.
#[test]
fn auth_insecure_dev_serves_without_credentials_and_warns() {
    let peers = peers();
    let adapter = Adapter::start(&rules(), &peers.prom.url(), &[]);
    assert!(
        adapter.args().iter().any(|a| a == "--insecure-dev"),
        "Adapter::start must pass --insecure-dev: {:?}",
        adapter.args()
    );
    let url = format!("https://{}{PODS_CPU}", adapter.addr());
    eventually("GET without credentials to answer 200", PATIENCE, || {
        adapter.process().ensure_running()?;
        check_cpu_list(&curl(&url, &CurlOptions::default())?)
    });
    let log = std::fs::read_to_string(adapter.process().stderr_path()).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.to_lowercase().contains("insecure")),
        "--insecure-dev: expected a WARN line about serving without authentication; log:\n{}",
        adapter.log_tail(40)
    );
}

// ------------------------------------------------------------------------------------------
// TLS details through openssl

/// The SHA-256 fingerprint of a PEM certificate (as `openssl x509 -fingerprint` prints it).
fn file_fingerprint(path: &Path) -> String {
    fingerprint(&pem(path)).unwrap_or_else(|e| panic!("fingerprinting {}: {e:#}", path.display()))
}

fn fingerprint(pem_text: &str) -> Result<String> {
    let openssl = require_program("openssl", OPENSSL_HINT);
    let mut cmd = Command::new(openssl);
    cmd.args(["x509", "-noout", "-fingerprint", "-sha256", "-serial"]);
    let run = run_command(
        "openssl",
        cmd,
        Some(pem_text.as_bytes().to_vec()),
        scaled(Duration::from_secs(30)),
    )?;
    Ok(run.ok_stdout()?.trim().replace('\n', " "))
}

/// The fingerprint of the certificate a new TLS connection to `addr` is served.
fn served_fingerprint(addr: SocketAddr) -> Result<String> {
    let openssl = require_program("openssl", OPENSSL_HINT);
    let mut cmd = Command::new(openssl);
    cmd.args(["s_client", "-connect", &addr.to_string(), "-showcerts"]);
    let run = run_command("openssl", cmd, None, scaled(Duration::from_secs(30)))?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = run
        .stdout
        .find(begin)
        .with_context(|| format!("no certificate in the output: {run}"))?;
    let stop = run.stdout[start..]
        .find(end)
        .with_context(|| format!("certificate cut short: {run}"))?;
    fingerprint(&run.stdout[start..start + stop + end.len()])
}

/// A TLS connection held open by `openssl s_client` (alice's client certificate, the serving
/// certificate verified), carrying HTTP/1.1 requests one after another.
struct OpenConnection {
    addr: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
    output: Receiver<Vec<u8>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    buffer: Vec<u8>,
}

impl OpenConnection {
    fn open(addr: SocketAddr, pki: &Pki) -> Result<OpenConnection> {
        let openssl = require_program("openssl", OPENSSL_HINT);
        let mut child = Command::new(openssl)
            .args(["s_client", "-connect", &addr.to_string(), "-quiet"])
            .arg("-verify_return_error")
            .arg("-CAfile")
            .arg(&pki.serving_ca)
            .arg("-cert")
            .arg(&pki.alice.cert)
            .arg("-key")
            .arg(&pki.alice.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting openssl s_client")?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().context("openssl stdout")?;
        let mut stderr_pipe = child.stderr.take().context("openssl stderr")?;
        let (tx, output) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        Ok(OpenConnection {
            addr,
            child,
            stdin,
            output,
            stderr,
            buffer: Vec::new(),
        })
    }

    /// Sends `GET path` (the last request when `close`) and reads its response.
    fn request(&mut self, path: &str, close: bool) -> Result<HttpResponse> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pipeline-tests\r\nAccept: \
             application/json\r\nAccept-Encoding: identity\r\nConnection: {}\r\n\r\n",
            self.addr,
            if close { "close" } else { "keep-alive" }
        );
        let stdin = self.stdin.as_mut().context("the connection was closed")?;
        stdin
            .write_all(request.as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("sending GET {path}: {}", self.stderr_text()))?;
        if close {
            self.stdin = None;
        }
        self.read_response(scaled(Duration::from_secs(30)))
            .with_context(|| format!("GET {path}; openssl said: {}", self.stderr_text()))
    }

    fn read_response(&mut self, limit: Duration) -> Result<HttpResponse> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(len) = response_len(&self.buffer)? {
                let response = parse_response(&self.buffer[..len]);
                self.buffer.drain(..len);
                return response;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.buffer.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "no complete response after {limit:?}: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                ),
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "the connection closed before a complete response: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                ),
            }
        }
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The length of the first complete HTTP/1.1 response in `buf` (framed by Content-Length or
/// chunked encoding), `None` while it is incomplete.
fn response_len(buf: &[u8]) -> Result<Option<usize>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut pos = head_end + 4;
    if header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        loop {
            let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let line = std::str::from_utf8(&buf[pos..pos + eol]).context("bad chunk size line")?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            pos += eol + 2 + size + 2;
            if buf.len() < pos {
                return Ok(None);
            }
            if size == 0 {
                return Ok(Some(pos));
            }
        }
    }
    let len: usize = header("content-length")
        .context("a kept-alive response without Content-Length or chunked encoding")?
        .parse()
        .context("bad Content-Length")?;
    Ok((buf.len() >= pos + len).then_some(pos + len))
}
