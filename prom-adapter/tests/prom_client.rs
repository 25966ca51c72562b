//! `prom::http::Client` against tiny in-process servers that record what they receive.
//!
//! Plain HTTP: a hyper 1 server on 127.0.0.1:0. Streaming bodies: a raw TCP responder.
//! HTTPS: a std-thread rustls server with certificates made by `openssl` at test time.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prom_adapter::prom::http::{BasicAuth, Client, ClientConfig, Verb};
use prom_adapter::prom::{PromApi, PromError, QueryResult, Sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const VECTOR_BODY: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","pod":"web-1"},"value":[1700000000.5,"1"]}]}}"#;
const SERIES_BODY: &str = r#"{"status":"success","data":[{"__name__":"up","pod":"web-1"},{"__name__":"up","pod":"web-2"}]}"#;

/// What the server saw.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: Option<String>,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Recorded {
    /// Parameters from the URL (GET) or the form body (POST).
    fn params(&self) -> Vec<(String, String)> {
        let raw: &[u8] = match self.method.as_str() {
            "POST" => &self.body,
            _ => self.query.as_deref().unwrap_or("").as_bytes(),
        };
        form_urlencoded::parse(raw).into_owned().collect()
    }

    fn param(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} sent {} times", all.len());
        all.into_iter().next()
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.params()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

enum Reply {
    Body(u16, String),
    /// Never answer.
    Hang,
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Server {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let recorded = recorded.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    let recorded = recorded.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let rec = Recorded {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_owned(),
                            query: parts.uri.query().map(str::to_owned),
                            headers: parts.headers,
                            body,
                        };
                        let reply = handler(&rec);
                        recorded.lock().unwrap().push(rec);
                        match reply {
                            Reply::Hang => std::future::pending().await,
                            Reply::Body(status, body) => {
                                let mut resp = Response::new(Full::new(Bytes::from(body)));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                resp.headers_mut().insert(
                                    hyper::header::CONTENT_TYPE,
                                    hyper::header::HeaderValue::from_static("application/json"),
                                );
                                Ok::<_, hyper::Error>(resp)
                            }
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            addr,
            requests,
            task,
        }
    }

    /// Answers every request with `status` and `body`.
    async fn answering(status: u16, body: &str) -> Server {
        let body = body.to_owned();
        Server::start(move |_| Reply::Body(status, body.clone())).await
    }

    /// Answers `/api/v1/query` with a vector and `/api/v1/series` with a series list.
    async fn prometheus() -> Server {
        Server::start(|r| {
            if r.path.ends_with("/api/v1/series") {
                Reply::Body(200, SERIES_BODY.to_owned())
            } else {
                Reply::Body(200, VECTOR_BODY.to_owned())
            }
        })
        .await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn config(&self) -> ClientConfig {
        ClientConfig {
            url: self.url(),
            ..Default::default()
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    fn last(&self) -> Recorded {
        self.requests().pop().expect("the server got a request")
    }
}

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

fn expected_vector() -> QueryResult {
    QueryResult::Vector(vec![Sample {
        labels: BTreeMap::from([
            ("__name__".to_owned(), "up".to_owned()),
            ("pod".to_owned(), "web-1".to_owned()),
        ]),
        timestamp: 1700000000.5,
        value: "1".to_owned(),
    }])
}

/// Sets a file's content and moves its mtime forward, as a rotation does.
fn rewrite(path: &Path, content: &str, age: u64) {
    std::fs::write(path, content).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(age))
        .unwrap();
}

#[tokio::test]
async fn get_query_puts_query_time_and_positive_timeout_in_the_url() {
    let server = Server::prometheus().await;
    let client = Client::new(server.config()).unwrap();
    let result = client
        .query(
            r#"sum(rate(x{pod=~"a|b"}[1m])) by (pod)"#,
            Some(at(1_700_000_000_500)),
        )
        .await;
    assert_eq!(result, Ok(expected_vector()));
    let req = server.last();
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/api/v1/query");
    assert!(req.body.is_empty());
    assert_eq!(
        req.param("query").as_deref(),
        Some(r#"sum(rate(x{pod=~"a|b"}[1m])) by (pod)"#)
    );
    assert_eq!(req.param("time").as_deref(), Some("1700000000.500"));
    assert_eq!(req.param("timeout").as_deref(), Some("30s"));
    assert_eq!(req.header("accept").as_deref(), Some("application/json"));
    assert!(req.header("authorization").is_none());
}

#[tokio::test]
async fn query_without_time_lets_the_backend_pick_now() {
    let server = Server::prometheus().await;
    let client = Client::new(server.config()).unwrap();
    client.query("up", None).await.unwrap();
    let req = server.last();
    assert_eq!(req.param("time"), None);
    assert_eq!(req.param("query").as_deref(), Some("up"));
}

#[tokio::test]
async fn post_query_sends_a_form_body() {
    let server = Server::prometheus().await;
    let client = Client::new(ClientConfig {
        verb: Verb::Post,
        timeout: Duration::from_millis(2500),
        ..server.config()
    })
    .unwrap();
    let result = client.query("a + b & c", Some(at(1_700_000_000_000))).await;
    assert_eq!(result, Ok(expected_vector()));
    let req = server.last();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/api/v1/query");
    assert_eq!(req.query, None);
    assert_eq!(
        req.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(req.param("query").as_deref(), Some("a + b & c"));
    assert_eq!(req.param("time").as_deref(), Some("1700000000"));
    assert_eq!(req.param("timeout").as_deref(), Some("2500ms"));
}

#[tokio::test]
async fn series_repeats_match_per_matcher_with_start_and_end() {
    let server = Server::prometheus().await;
    for verb in [Verb::Get, Verb::Post] {
        let client = Client::new(ClientConfig {
            verb,
            ..server.config()
        })
        .unwrap();
        let matchers = vec![
            r#"{__name__=~"^container_.*",container!="POD"}"#.to_owned(),
            r#"http_requests_total{namespace!=""}"#.to_owned(),
        ];
        let series = client
            .series(&matchers, at(1_699_999_400_000), at(1_700_000_000_250))
            .await
            .unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[1].get("pod").map(String::as_str), Some("web-2"));
        let req = server.last();
        assert_eq!(req.method, verb.as_str());
        assert_eq!(req.path, "/api/v1/series");
        assert_eq!(req.all("match[]"), matchers);
        assert_eq!(req.param("start").as_deref(), Some("1699999400"));
        assert_eq!(req.param("end").as_deref(), Some("1700000000.250"));
        assert_eq!(req.param("timeout"), None);
    }
}

#[tokio::test]
async fn path_prefix_is_kept() {
    let server = Server::prometheus().await;
    let client = Client::new(ClientConfig {
        url: format!("{}/prometheus/", server.url()),
        ..Default::default()
    })
    .unwrap();
    client.query("up", None).await.unwrap();
    client
        .series(&["up".to_owned()], at(0), at(1000))
        .await
        .unwrap();
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/prometheus/api/v1/query", "/prometheus/api/v1/series"]
    );
}

#[tokio::test]
async fn custom_headers_are_sent_on_every_request() {
    let server = Server::prometheus().await;
    let client = Client::new(ClientConfig {
        headers: vec![
            ("X-Scope-OrgID".to_owned(), "tenant-1".to_owned()),
            ("X-Extra".to_owned(), "a".to_owned()),
        ],
        ..server.config()
    })
    .unwrap();
    client.query("up", None).await.unwrap();
    client
        .series(&["up".to_owned()], at(0), at(0))
        .await
        .unwrap();
    for req in server.requests() {
        assert_eq!(req.header("x-scope-orgid").as_deref(), Some("tenant-1"));
        assert_eq!(req.header("x-extra").as_deref(), Some("a"));
    }
}

#[tokio::test]
async fn extra_query_params_are_sent_with_every_request_and_verb() {
    let server = Server::prometheus().await;
    for verb in [Verb::Get, Verb::Post] {
        let client = Client::new(ClientConfig {
            verb,
            query_params: vec![("partial_response".to_owned(), "false".to_owned())],
            ..server.config()
        })
        .unwrap();
        client.query("up", None).await.unwrap();
        client
            .series(&["up".to_owned()], at(0), at(0))
            .await
            .unwrap();
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    for req in requests {
        assert_eq!(req.param("partial_response").as_deref(), Some("false"));
    }
}

#[tokio::test]
async fn get_raw_sends_the_path_and_query_with_credentials_and_returns_any_status() {
    let server = Server::answering(404, r#"{"kind":"Status","code":404}"#).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let client = Client::new(ClientConfig {
        bearer_token_file: Some(token),
        ..server.config()
    })
    .unwrap();
    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/m?labelSelector=a%3Db";
    let (status, body) = client.get_raw(path).await.unwrap();
    assert_eq!(
        (status, body.as_ref()),
        (404, &br#"{"kind":"Status","code":404}"#[..])
    );
    let req = server.last();
    assert_eq!(req.method, "GET");
    assert_eq!(
        req.path,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/m"
    );
    assert_eq!(req.query.as_deref(), Some("labelSelector=a%3Db"));
    assert_eq!(
        req.header("authorization").as_deref(),
        Some("Bearer s3cret")
    );
}

#[tokio::test]
async fn bearer_token_file_is_sent_and_reread_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let server = Server::prometheus().await;
    let client = Client::new(ClientConfig {
        bearer_token_file: Some(token.clone()),
        ..server.config()
    })
    .unwrap();
    client.query("up", None).await.unwrap();
    assert_eq!(
        server.last().header("authorization").as_deref(),
        Some("Bearer first-token")
    );
    rewrite(&token, "rotated-token-2\n", 5);
    client.query("up", None).await.unwrap();
    assert_eq!(
        server.last().header("authorization").as_deref(),
        Some("Bearer rotated-token-2")
    );
    // A token file that disappears keeps the last good token.
    std::fs::remove_file(&token).unwrap();
    client.query("up", None).await.unwrap();
    assert_eq!(
        server.last().header("authorization").as_deref(),
        Some("Bearer rotated-token-2")
    );
}

#[tokio::test]
async fn basic_auth_from_url_userinfo_is_a_header_not_part_of_the_url() {
    let server = Server::prometheus().await;
    let client = Client::new(ClientConfig {
        url: format!("http://alice:s%3Acret@{}/prom", server.addr),
        ..Default::default()
    })
    .unwrap();
    client.query("up", None).await.unwrap();
    let req = server.last();
    // base64("alice:s:cret")
    assert_eq!(
        req.header("authorization").as_deref(),
        Some("Basic YWxpY2U6czpjcmV0")
    );
    assert_eq!(req.header("host"), Some(server.addr.to_string()));
    assert_eq!(req.path, "/prom/api/v1/query");
}

#[tokio::test]
async fn basic_auth_with_a_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "open sesame\n").unwrap();
    let server = Server::prometheus().await;
    let client = Client::new(ClientConfig {
        basic_auth: Some(BasicAuth {
            username: "Aladdin".to_owned(),
            password_file: Some(password.clone()),
            password: None,
        }),
        ..server.config()
    })
    .unwrap();
    client.query("up", None).await.unwrap();
    assert_eq!(
        server.last().header("authorization").as_deref(),
        Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    );
    rewrite(&password, "x", 5);
    client.query("up", None).await.unwrap();
    // base64("Aladdin:x")
    assert_eq!(
        server.last().header("authorization").as_deref(),
        Some("Basic QWxhZGRpbjp4")
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout() {
    let server = Server::start(|_| Reply::Hang).await;
    let client = Client::new(ClientConfig {
        timeout: Duration::from_millis(300),
        ..server.config()
    })
    .unwrap();
    let err = client.query("up", None).await.unwrap_err();
    assert_eq!(
        err,
        PromError::Timeout {
            after: Duration::from_millis(400)
        }
    );
    assert_eq!(err.kind(), "timeout");
    assert_eq!(server.last().param("timeout").as_deref(), Some("300ms"));
    let err = client
        .series(&["up".to_owned()], at(0), at(0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "timeout");
}

#[tokio::test]
async fn connection_refused_is_unreachable() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = Client::new(ClientConfig {
        url: format!("http://{addr}"),
        ..Default::default()
    })
    .unwrap();
    let err = client.query("up", None).await.unwrap_err();
    assert_eq!(err.kind(), "unreachable", "{err}");
    let PromError::Unreachable { reason } = &err else {
        panic!("{err:?}")
    };
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
}

#[tokio::test]
async fn api_error_bodies_become_api_errors() {
    let server = Server::answering(
        503,
        r#"{"status":"error","errorType":"unavailable","error":"TSDB not ready"}"#,
    )
    .await;
    let client = Client::new(server.config()).unwrap();
    let err = client.query("up", None).await.unwrap_err();
    assert_eq!(
        err,
        PromError::Api {
            status: 503,
            error_type: "unavailable".to_owned(),
            error: "TSDB not ready".to_owned()
        }
    );
    assert_eq!(err.kind(), "unavailable");

    let server = Server::answering(
        400,
        r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
    )
    .await;
    let client = Client::new(server.config()).unwrap();
    let err = client
        .series(&["up{".to_owned()], at(0), at(0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "bad_data");
}

#[tokio::test]
async fn other_error_answers_are_http_errors() {
    let server = Server::answering(404, "404 page not found\n").await;
    let client = Client::new(server.config()).unwrap();
    assert_eq!(
        client.query("up", None).await,
        Err(PromError::Http {
            status: 404,
            body: "404 page not found".to_owned()
        })
    );
    let server = Server::answering(502, &"<html>bad gateway</html>".repeat(1000)).await;
    let client = Client::new(server.config()).unwrap();
    match client.query("up", None).await {
        Err(PromError::Http { status: 502, body }) => {
            assert!(body.starts_with("<html>bad gateway"));
            assert!(body.len() <= 512);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_2xx_answer_that_is_not_the_api_json_is_a_decode_error() {
    let server = Server::answering(200, "<html>login</html>").await;
    let client = Client::new(server.config()).unwrap();
    let err = client.query("up", None).await.unwrap_err();
    assert_eq!(err.kind(), "decode", "{err}");
}

#[tokio::test]
async fn bodies_over_max_response_bytes_are_too_large() {
    let server = Server::answering(200, VECTOR_BODY).await;
    let exact = Client::new(ClientConfig {
        max_response_bytes: VECTOR_BODY.len(),
        ..server.config()
    })
    .unwrap();
    assert_eq!(exact.query("up", None).await, Ok(expected_vector()));
    let small = Client::new(ClientConfig {
        max_response_bytes: VECTOR_BODY.len() - 1,
        ..server.config()
    })
    .unwrap();
    assert_eq!(
        small.query("up", None).await,
        Err(PromError::TooLarge {
            limit: VECTOR_BODY.len() - 1
        })
    );
}

/// Answers one connection with a chunked body of `chunks` × `chunk` bytes of JSON whitespace.
async fn chunked_server(chunks: usize, chunk: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..chunks {
            out.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
            out.extend(std::iter::repeat_n(b' ', chunk));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        // The client may hang up early once it has seen enough.
        let _ = stream.write_all(&out).await;
    });
    addr
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_too_large() {
    let addr = chunked_server(64, 1024).await;
    let client = Client::new(ClientConfig {
        url: format!("http://{addr}"),
        max_response_bytes: 10_000,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        client.query("up", None).await,
        Err(PromError::TooLarge { limit: 10_000 })
    );
}

// ---- HTTPS -------------------------------------------------------------------------------

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run openssl ({e}); install it: apt-get install openssl"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a leaf signed by it, for `name` (`ca`, `server`, `client`, …) in `dir`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf(
            "server",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.leaf("client", "ca", "extendedKeyUsage=clientAuth\n");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self, name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=prom-adapter test {name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    fn leaf(&self, name: &str, ca: &str, extensions: &str) {
        std::fs::write(
            self.path(&format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{extensions}"),
        )
        .unwrap();
        openssl(
            self.dir.path(),
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

/// What the HTTPS server saw on one connection.
#[derive(Debug, Clone)]
struct TlsSeen {
    request_line: String,
    client_cert: bool,
}

/// A blocking rustls server on a std thread: answers each request with `VECTOR_BODY` and
/// `Connection: close`. With `client_ca`, client certificates signed by it are required.
fn https_server(pki: &Pki, client_ca: Option<&str>) -> (SocketAddr, Arc<Mutex<Vec<TlsSeen>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(pki.path(&format!("{ca}.pem"))).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = Arc::new(builder.with_single_cert(certs, key).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_server = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let complete = loop {
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    break true;
                }
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            };
            if !complete {
                continue;
            }
            let text = String::from_utf8_lossy(&head);
            seen_by_server.lock().unwrap().push(TlsSeen {
                request_line: text.lines().next().unwrap_or("").to_owned(),
                client_cert: tls.conn.peer_certificates().is_some_and(|c| !c.is_empty()),
            });
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{VECTOR_BODY}",
                VECTOR_BODY.len()
            );
            let _ = tls.write_all(response.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn https_with_ca_file_and_client_certificate() {
    let pki = Pki::new();

    // Server verified with the CA file.
    let (addr, seen) = https_server(&pki, None);
    let url = format!("https://{addr}/prefix");
    let client = Client::new(ClientConfig {
        url: url.clone(),
        ca_file: Some(pki.path("ca.pem")),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(client.query("up", None).await, Ok(expected_vector()));
    let first = seen.lock().unwrap()[0].clone();
    assert!(
        first
            .request_line
            .starts_with("GET /prefix/api/v1/query?query=up&timeout=30s"),
        "{first:?}"
    );
    assert!(!first.client_cert);

    // Signed by another CA: refused.
    let client = Client::new(ClientConfig {
        url: url.clone(),
        ca_file: Some(pki.path("other-ca.pem")),
        ..Default::default()
    })
    .unwrap();
    let err = client.query("up", None).await.unwrap_err();
    assert_eq!(err.kind(), "unreachable", "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // mTLS: a server that requires a client certificate.
    let (addr, seen) = https_server(&pki, Some("ca"));
    let url = format!("https://localhost:{}", addr.port());
    let client = Client::new(ClientConfig {
        url: url.clone(),
        verb: Verb::Post,
        ca_file: Some(pki.path("ca.pem")),
        client_cert_file: Some(pki.path("client.pem")),
        client_key_file: Some(pki.path("client.key")),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(client.query("up", None).await, Ok(expected_vector()));
    let first = seen.lock().unwrap()[0].clone();
    assert_eq!(first.request_line, "POST /api/v1/query HTTP/1.1");
    assert!(first.client_cert);

    // …and refuses a client without one.
    let client = Client::new(ClientConfig {
        url,
        ca_file: Some(pki.path("ca.pem")),
        ..Default::default()
    })
    .unwrap();
    let err = client.query("up", None).await.unwrap_err();
    assert_eq!(err.kind(), "unreachable", "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn tls_files_that_are_not_pem_are_refused_at_build() {
    let pki = Pki::new();
    let err = Client::new(ClientConfig {
        url: "https://localhost".to_owned(),
        ca_file: Some(pki.path("ca.pem")),
        client_cert_file: Some(pki.path("client.pem")),
        client_key_file: Some(pki.path("client.csr")),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!(
            "invalid prometheus client key file {}",
            pki.path("client.csr").display()
        )),
        "{err}"
    );
    // A key that doesn't belong to the certificate.
    let err = Client::new(ClientConfig {
        url: "https://localhost".to_owned(),
        ca_file: Some(pki.path("ca.pem")),
        client_cert_file: Some(pki.path("client.pem")),
        client_key_file: Some(pki.path("server.key")),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("invalid prometheus tls settings"), "{err}");
}
