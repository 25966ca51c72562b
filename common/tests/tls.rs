//! `common::tls` certificate handling and `common::http::serve_tls` end to end, with a rustls
//! client that trusts only the generated certificate.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::http::{Body, ConnInfo, serve, serve_tls, text};
use common::tls::{self, CertStore, ServingCert, TlsError};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

/// Guards against a hang only; nothing here is expected to take more than milliseconds.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("common-tls-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn hosts(names: &[&str]) -> Vec<String> {
    names.iter().map(|h| (*h).to_owned()).collect()
}

/// A generated certificate PEM and key PEM.
fn pem_pair(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn leaf(cert: &ServingCert) -> CertificateDer<'static> {
    cert.chain[0].clone()
}

#[test]
fn load_pem_reads_a_matching_pair() {
    let dir = TempDir::new("load-ok");
    let (cert_pem, key_pem) = pem_pair("localhost");
    let cert_file = dir.write("tls.crt", &cert_pem);
    let key_file = dir.write("tls.key", &key_pem);
    let cert = tls::load_pem(&cert_file, &key_file).unwrap();
    assert_eq!(cert.chain.len(), 1);
}

#[test]
fn load_pem_missing_file_is_a_read_error_naming_it() {
    let dir = TempDir::new("load-missing");
    let (_, key_pem) = pem_pair("localhost");
    let key_file = dir.write("tls.key", &key_pem);
    let cert_file = dir.0.join("absent.crt");
    let err = tls::load_pem(&cert_file, &key_file).unwrap_err();
    assert!(
        matches!(&err, TlsError::Read { path, source }
            if *path == cert_file && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("cannot read {}", cert_file.display())
    );

    let (cert_pem, _) = pem_pair("localhost");
    let cert_file = dir.write("tls.crt", &cert_pem);
    let key_file = dir.0.join("absent.key");
    let err = tls::load_pem(&cert_file, &key_file).unwrap_err();
    assert!(
        matches!(&err, TlsError::Read { path, .. } if *path == key_file),
        "{err:?}"
    );
}

#[test]
fn load_pem_without_a_certificate_says_so() {
    let dir = TempDir::new("load-no-cert");
    let (_, key_pem) = pem_pair("localhost");
    // A key where the certificate should be, and an empty file: neither holds a certificate.
    for contents in [key_pem.as_str(), ""] {
        let cert_file = dir.write("tls.crt", contents);
        let key_file = dir.write("tls.key", &key_pem);
        let err = tls::load_pem(&cert_file, &key_file).unwrap_err();
        assert!(
            matches!(&err, TlsError::NoCertificate { path } if *path == cert_file),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("{}: no certificate found", cert_file.display())
        );
    }
}

#[test]
fn load_pem_without_a_key_says_so() {
    let dir = TempDir::new("load-no-key");
    let (cert_pem, _) = pem_pair("localhost");
    let cert_file = dir.write("tls.crt", &cert_pem);
    let key_file = dir.write("tls.key", &cert_pem);
    let err = tls::load_pem(&cert_file, &key_file).unwrap_err();
    assert!(
        matches!(&err, TlsError::NoKey { path } if *path == key_file),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("{}: no private key found", key_file.display())
    );
}

#[test]
fn load_pem_rejects_a_key_from_another_pair() {
    let dir = TempDir::new("load-mismatch");
    let (cert_pem, _) = pem_pair("localhost");
    let (_, other_key_pem) = pem_pair("localhost");
    let cert_file = dir.write("tls.crt", &cert_pem);
    let key_file = dir.write("tls.key", &other_key_pem);
    let err = tls::load_pem(&cert_file, &key_file).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch), "{err:?}");
    assert_eq!(err.to_string(), "key does not match certificate");
}

#[test]
fn load_pem_reports_malformed_pem() {
    let dir = TempDir::new("load-malformed");
    let (_, key_pem) = pem_pair("localhost");
    let cert_file = dir.write(
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let key_file = dir.write("tls.key", &key_pem);
    let err = tls::load_pem(&cert_file, &key_file).unwrap_err();
    assert!(
        matches!(&err, TlsError::Pem { path, .. } if *path == cert_file),
        "{err:?}"
    );
}

#[test]
fn self_signed_without_a_dir_generates_a_matching_pair() {
    let (cert, pem) = tls::self_signed(&hosts(&["localhost", "127.0.0.1"]), None).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    CertStore::new(cert).unwrap();
}

#[test]
fn self_signed_writes_to_cert_dir_then_reuses() {
    let dir = TempDir::new("self-signed-reuse");
    let cert_dir = dir.0.join("certs"); // created on demand
    let names = hosts(&["localhost", "127.0.0.1", "prom-adapter.monitoring.svc"]);

    let (first, first_pem) = tls::self_signed(&names, Some(&cert_dir)).unwrap();
    let cert_file = cert_dir.join("apiserver.crt");
    let key_file = cert_dir.join("apiserver.key");
    assert_eq!(fs::read_to_string(&cert_file).unwrap(), first_pem);
    let key_mode = fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600, "key mode {key_mode:o}");
    // What was written loads as an ordinary pair.
    tls::load_pem(&cert_file, &key_file).unwrap();

    let (second, second_pem) = tls::self_signed(&names, Some(&cert_dir)).unwrap();
    assert_eq!(leaf(&second), leaf(&first));
    assert_eq!(second_pem, first_pem);
    assert_eq!(second.key.secret_der(), first.key.secret_der());
    // A subset of the hosts is still covered.
    let (third, _) = tls::self_signed(&names[..1], Some(&cert_dir)).unwrap();
    assert_eq!(leaf(&third), leaf(&first));
}

#[test]
fn self_signed_replaces_a_stored_pair_that_does_not_fit() {
    let dir = TempDir::new("self-signed-replace");
    let cert_dir = dir.0.as_path();
    let (first, _) = tls::self_signed(&hosts(&["localhost"]), Some(cert_dir)).unwrap();

    // A host the stored certificate does not cover.
    let wider = hosts(&["localhost", "10.0.0.1"]);
    let (second, second_pem) = tls::self_signed(&wider, Some(cert_dir)).unwrap();
    assert_ne!(leaf(&second), leaf(&first));
    assert_eq!(
        fs::read_to_string(cert_dir.join("apiserver.crt")).unwrap(),
        second_pem
    );

    // A corrupt certificate file.
    fs::write(cert_dir.join("apiserver.crt"), "garbage").unwrap();
    let (third, _) = tls::self_signed(&wider, Some(cert_dir)).unwrap();
    assert_ne!(leaf(&third), leaf(&second));

    // A key that belongs to another certificate.
    let (_, other_key) = pem_pair("localhost");
    fs::write(cert_dir.join("apiserver.key"), other_key).unwrap();
    let (fourth, _) = tls::self_signed(&wider, Some(cert_dir)).unwrap();
    assert_ne!(leaf(&fourth), leaf(&third));
    let reloaded = tls::load_pem(
        &cert_dir.join("apiserver.crt"),
        &cert_dir.join("apiserver.key"),
    )
    .unwrap();
    assert_eq!(leaf(&reloaded), leaf(&fourth));
}

#[test]
fn self_signed_replaces_a_stored_certificate_near_expiry() {
    let dir = TempDir::new("self-signed-expiry");
    let cert_dir = dir.0.as_path();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let store = |valid_for: Duration| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = epoch + (now - Duration::from_secs(3600));
        params.not_after = epoch + (now + valid_for);
        let cert = params.self_signed(&key).unwrap();
        fs::write(cert_dir.join("apiserver.crt"), cert.pem()).unwrap();
        fs::write(cert_dir.join("apiserver.key"), key.serialize_pem()).unwrap();
        cert.der().clone()
    };

    // Valid for another 90 days: reused.
    let stored = store(Duration::from_secs(90 * 24 * 3600));
    let (cert, _) = tls::self_signed(&hosts(&["localhost"]), Some(cert_dir)).unwrap();
    assert_eq!(leaf(&cert), stored);

    // Expires tomorrow: replaced, and the replacement is what is stored now.
    let stored = store(Duration::from_secs(24 * 3600));
    let (cert, pem) = tls::self_signed(&hosts(&["localhost"]), Some(cert_dir)).unwrap();
    assert_ne!(leaf(&cert), stored);
    assert_eq!(
        fs::read_to_string(cert_dir.join("apiserver.crt")).unwrap(),
        pem
    );
}

#[test]
fn self_signed_rejects_bad_hosts() {
    let err = tls::self_signed(&[], None).unwrap_err();
    assert!(matches!(err, TlsError::NoHosts), "{err:?}");
    let err = tls::self_signed(&hosts(&["localhost", "not a host"]), None).unwrap_err();
    assert!(
        matches!(&err, TlsError::InvalidHost { host } if host == "not a host"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "invalid host name \"not a host\"");
}

#[test]
fn cert_store_replace_keeps_the_old_pair_on_error() {
    let (a, _) = tls::self_signed(&hosts(&["localhost"]), None).unwrap();
    let (b, _) = tls::self_signed(&hosts(&["localhost"]), None).unwrap();
    let (c, _) = tls::self_signed(&hosts(&["localhost"]), None).unwrap();
    let a_leaf = leaf(&a);
    let store = CertStore::new(a).unwrap();
    assert_eq!(store.current().cert[0], a_leaf);

    let mismatched = ServingCert {
        chain: b.chain.clone(),
        key: c.key,
    };
    let err = store.replace(mismatched).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch), "{err:?}");
    let empty = ServingCert {
        chain: Vec::new(),
        key: b.key.clone_key(),
    };
    assert!(matches!(store.replace(empty), Err(TlsError::EmptyChain)));
    assert_eq!(store.current().cert[0], a_leaf);

    let b_leaf = leaf(&b);
    store.replace(b).unwrap();
    assert_eq!(store.current().cert[0], b_leaf);
}

#[test]
fn server_config_offers_h2_then_http1() {
    let (cert, _) = tls::self_signed(&hosts(&["localhost"]), None).unwrap();
    let config = tls::server_config(cert).unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}

// ---------------------------------------------------------------------------------------------
// serve_tls end to end
// ---------------------------------------------------------------------------------------------

struct Server {
    addr: SocketAddr,
    root: CertificateDer<'static>,
    store: Arc<CertStore>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds before returning, so clients can connect at once: no readiness wait is needed.
    async fn start<H, F>(handler: H, drain: Duration) -> Self
    where
        H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let (cert, _) = tls::self_signed(&hosts(&["localhost", "127.0.0.1"]), None).unwrap();
        let root = leaf(&cert);
        let store = Arc::new(CertStore::new(cert).unwrap());
        Self::start_with(store, root, handler, drain).await
    }

    /// Like [`Server::start`], serving from `store`, whose certificate `root` is.
    async fn start_with<H, F>(
        store: Arc<CertStore>,
        root: CertificateDer<'static>,
        handler: H,
        drain: Duration,
    ) -> Self
    where
        H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let config = tls::server_config_with(Arc::clone(&store)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_tls(listener, config, handler, stop.clone(), drain));
        Self {
            addr,
            root,
            store,
            stop,
            task,
        }
    }

    async fn connect(&self, name: &str, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
        connect(self.addr, &self.root, name, alpn, None).await
    }

    /// Cancels and waits for `serve_tls` to return.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("serve_tls returns after cancellation")
            .unwrap();
    }
}

async fn connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    name: &str,
    alpn: &[&[u8]],
    versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = match versions {
        Some(v) => builder.with_protocol_versions(v),
        None => builder.with_safe_default_protocol_versions(),
    };
    let mut config = builder
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// Answers `<alpn> <version> <path> certs=<n>`.
async fn describe(req: Request<Incoming>, info: Arc<ConnInfo>) -> Response<Body> {
    let alpn = info.alpn.as_deref().map_or("none".to_owned(), |p| {
        String::from_utf8_lossy(p).into_owned()
    });
    text(
        StatusCode::OK,
        format!(
            "{alpn} {:?} {} certs={}",
            req.version(),
            req.uri().path(),
            info.client_certs.len()
        ),
    )
}

async fn get_http1(tls: TlsStream<TcpStream>, path: &str) -> (Version, String) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (version, String::from_utf8(body.to_vec()).unwrap())
}

async fn get_http2(tls: TlsStream<TcpStream>, uri: &str) -> (Version, String) {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (version, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn serves_http1_and_http2_by_alpn() {
    let server = Server::start(describe, PATIENCE).await;

    let tls = server.connect("localhost", &[b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (version, body) = get_http1(tls, "/one").await;
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(body, "http/1.1 HTTP/1.1 /one certs=0");

    // By IP address this time: the certificate carries an IP SAN as well.
    let tls = server
        .connect("127.0.0.1", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Several requests multiplexed on the one connection.
    let requests: Vec<_> = (0..4)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let req = Request::get(format!("https://127.0.0.1/two/{i}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.version(), Version::HTTP_2);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8(body.to_vec()).unwrap()
            })
        })
        .collect();
    for (i, request) in requests.into_iter().enumerate() {
        assert_eq!(
            request.await.unwrap(),
            format!("h2 HTTP/2.0 /two/{i} certs=0")
        );
    }
    drop(sender);

    // No ALPN at all means HTTP/1.1.
    let tls = server.connect("localhost", &[]).await.unwrap();
    let (version, body) = get_http1(tls, "/three").await;
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(body, "none HTTP/1.1 /three certs=0");

    server.stop().await;
}

#[tokio::test]
async fn tls12_clients_are_served() {
    let server = Server::start(describe, PATIENCE).await;
    let tls = connect(
        server.addr,
        &server.root,
        "localhost",
        &[b"h2"],
        Some(&[&rustls::version::TLS12]),
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let (version, body) = get_http2(tls, "https://localhost/tls12").await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(body, "h2 HTTP/2.0 /tls12 certs=0");
    server.stop().await;
}

#[tokio::test]
async fn a_non_tls_client_does_not_stop_the_server() {
    let server = Server::start(describe, PATIENCE).await;

    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // The server answers with at most a TLS alert and hangs up.
    let mut reply = Vec::new();
    let read = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut reply))
        .await
        .expect("server closes a non-TLS connection");
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert!(!reply.starts_with(b"HTTP/"), "{reply:?}");

    let tls = server.connect("localhost", &[b"http/1.1"]).await.unwrap();
    let (_, body) = get_http1(tls, "/after-garbage").await;
    assert_eq!(body, "http/1.1 HTTP/1.1 /after-garbage certs=0");
    server.stop().await;
}

#[tokio::test]
async fn replaced_certificate_is_served_to_new_connections() {
    let server = Server::start(describe, PATIENCE).await;
    let (next, _) = tls::self_signed(&hosts(&["localhost"]), None).unwrap();
    let next_root = leaf(&next);
    server.store.replace(next).unwrap();

    // The old root no longer verifies; the new one does.
    let err = server.connect("localhost", &[b"h2"]).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let tls = connect(server.addr, &next_root, "localhost", &[b"h2"], None)
        .await
        .unwrap();
    let (_, body) = get_http2(tls, "https://localhost/rotated").await;
    assert_eq!(body, "h2 HTTP/2.0 /rotated certs=0");
    server.stop().await;
}

/// A directory laid out as the kubelet lays out a Secret volume: `tls.crt` and `tls.key` are
/// symlinks through `..data`, itself a symlink to a timestamped directory, so that publishing
/// a new pair is one atomic rename.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: &TempDir) -> Self {
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.0.join(name)).unwrap();
        }
        Self {
            dir: dir.0.clone(),
            generation: 0,
        }
    }

    fn cert_file(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    fn publish(&mut self, cert_pem: &str, key_pem: &str) {
        self.generation += 1;
        let data = format!("..{}", self.generation);
        fs::create_dir(self.dir.join(&data)).unwrap();
        fs::write(self.dir.join(&data).join("tls.crt"), cert_pem).unwrap();
        fs::write(self.dir.join(&data).join("tls.key"), key_pem).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// The server's certificate as a client saw it.
fn server_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn watched_files_rotate_the_certificate_for_new_connections_only() {
    let dir = TempDir::new("watch-rotate");
    let mut volume = SecretVolume::new(&dir);
    let (a_pem, a_key) = pem_pair("localhost");
    volume.publish(&a_pem, &a_key);
    let a = tls::load_pem(&volume.cert_file(), &volume.key_file()).unwrap();
    let a_root = leaf(&a);
    let store = Arc::new(CertStore::new(a).unwrap());

    let (reloads_tx, mut reloads) = tokio::sync::mpsc::unbounded_channel();
    let watch_stop = CancellationToken::new();
    let watch = Arc::clone(&store).watch_files(
        volume.cert_file(),
        volume.key_file(),
        Duration::from_millis(50),
        watch_stop.clone(),
        move |r: Result<(), &TlsError>| {
            let _ = reloads_tx.send(r.map_err(ToString::to_string));
        },
    );
    let server = Server::start_with(store, a_root.clone(), describe, PATIENCE).await;

    // A connection made with A, kept open.
    let tls = server.connect("localhost", &[b"http/1.1"]).await.unwrap();
    assert_eq!(server_leaf(&tls), a_root);
    let (mut old, old_conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(old_conn);
    let get = |path: &'static str| {
        Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(
        old.send_request(get("/before")).await.unwrap().status(),
        StatusCode::OK
    );

    // B replaces A on disk; the watcher reports the reload (only that: the first check found
    // the pair already served, or found B).
    let (b_pem, b_key) = pem_pair("localhost");
    volume.publish(&b_pem, &b_key);
    let b_root = CertificateDer::from_pem_slice(b_pem.as_bytes()).unwrap();
    let reload = tokio::time::timeout(PATIENCE, reloads.recv())
        .await
        .unwrap();
    assert_eq!(reload, Some(Ok(())));

    // New connections see B, and no longer A.
    let tls = connect(server.addr, &b_root, "localhost", &[b"http/1.1"], None)
        .await
        .unwrap();
    assert_eq!(server_leaf(&tls), b_root);
    let (_, body) = get_http1(tls, "/after").await;
    assert_eq!(body, "http/1.1 HTTP/1.1 /after certs=0");
    assert!(server.connect("localhost", &[b"http/1.1"]).await.is_err());

    // The connection made with A still works.
    let resp = old.send_request(get("/still-open")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"http/1.1 HTTP/1.1 /still-open certs=0");

    // A corrupt replacement is reported and B stays.
    volume.publish("-----BEGIN CERTIFICATE-----\ntruncat", &b_key);
    let reload = tokio::time::timeout(PATIENCE, reloads.recv())
        .await
        .unwrap();
    let err = reload.unwrap().unwrap_err();
    assert!(err.contains("tls.crt: malformed PEM"), "{err}");
    let tls = connect(server.addr, &b_root, "localhost", &[b"http/1.1"], None)
        .await
        .unwrap();
    assert_eq!(server_leaf(&tls), b_root);

    watch_stop.cancel();
    tokio::time::timeout(PATIENCE, watch)
        .await
        .expect("the watcher stops when cancelled")
        .unwrap();
    server.stop().await;
    assert!(reloads.try_recv().is_err());
}

#[tokio::test]
async fn cancellation_stops_the_loop_and_closes_idle_connections() {
    // A drain far longer than the guard: returning in time means nothing waited for it.
    let server = Server::start(describe, Duration::from_secs(3600)).await;

    // An idle HTTP/1.1 keep-alive connection and an idle HTTP/2 connection.
    let tls = server.connect("localhost", &[b"http/1.1"]).await.unwrap();
    let (mut h1, h1_conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let h1_conn = tokio::spawn(h1_conn);
    let req = Request::get("/")
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h1.send_request(req).await.unwrap().status(), StatusCode::OK);

    let tls = server.connect("localhost", &[b"h2"]).await.unwrap();
    let (mut h2, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let req = Request::get("https://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), StatusCode::OK);

    // A client stuck before its handshake (it never sends a ClientHello). The request after it
    // proves the server has accepted it: connections are accepted in order.
    let _stalled = TcpStream::connect(server.addr).await.unwrap();
    let tls = server.connect("localhost", &[b"http/1.1"]).await.unwrap();
    get_http1(tls, "/").await;

    let addr = server.addr;
    // Well under the 10 s handshake timeout, so the stalled handshake must not be waited for.
    server.stop.cancel();
    tokio::time::timeout(Duration::from_secs(8), server.task)
        .await
        .expect("serve_tls returns without waiting for the drain or the stalled handshake")
        .unwrap();

    // Both idle connections were closed by the server, and the listener is gone.
    tokio::time::timeout(PATIENCE, h1_conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, h2_conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let release = Arc::clone(&release);
        move |_req: Request<Incoming>, _info: Arc<ConnInfo>| {
            let started = started_tx.clone();
            let release = Arc::clone(&release);
            async move {
                started.send(()).await.unwrap();
                release.notified().await;
                text(StatusCode::OK, "finished")
            }
        }
    };
    let server = Server::start(handler, PATIENCE).await;
    let tls = server.connect("localhost", &[b"h2"]).await.unwrap();
    let request = tokio::spawn(get_http2(tls, "https://localhost/slow"));
    started_rx.recv().await.unwrap();

    server.stop.cancel();
    // Still draining: the request has not finished.
    assert!(!server.task.is_finished());
    release.notify_one();
    let (_, body) = tokio::time::timeout(PATIENCE, request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "finished");
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn drain_overrun_closes_the_connection() {
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(1);
    let handler = move |_req: Request<Incoming>, _info: Arc<ConnInfo>| {
        let started = started_tx.clone();
        async move {
            started.send(()).await.unwrap();
            std::future::pending::<()>().await;
            text(StatusCode::OK, "never")
        }
    };
    let server = Server::start(handler, Duration::from_millis(50)).await;
    let tls = server.connect("localhost", &[b"http/1.1"]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/stuck")
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::spawn(sender.send_request(req));
    started_rx.recv().await.unwrap();

    server.stop().await;
    let result = tokio::time::timeout(PATIENCE, response)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err(), "{result:?}");
}

// ---------------------------------------------------------------------------------------------
// serve (plain HTTP/1.1) still works through the shared loop
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn plain_serve_answers_and_stops() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let handler =
        |req: Request<Incoming>| async move { text(StatusCode::OK, req.uri().path().to_owned()) };
    let task = tokio::spawn(serve(listener, handler, stop.clone(), PATIENCE));

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("/plain")
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"/plain");

    stop.cancel();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    tokio::time::timeout(PATIENCE, conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
