//! Client certificates: `ClientCerts::Request` through `serve_tls` (asked for, not required,
//! judged by the application), and `ClientCa::verify` against CAs, intermediates and leaves
//! generated here with rcgen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::http::{ConnInfo, serve_tls, text};
use common::tls::{self, CertStore, ClientCa, ClientCertError, ClientCerts, TlsError};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

/// Guards against a hang only; nothing here is expected to take more than milliseconds.
const PATIENCE: Duration = Duration::from_secs(30);
/// A day in seconds.
const DAY: i64 = 24 * 60 * 60;

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A CA (root or intermediate) that can sign further certificates.
struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn root(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn client_ca(&self) -> ClientCa {
        ClientCa::from_pem(self.pem().as_bytes(), "test CA").unwrap()
    }

    /// A client certificate for CN `alice`, O `system:masters` and `dev`, EKU `clientAuth`,
    /// valid from yesterday until tomorrow, after `tweak` has had its say.
    fn leaf(&self, tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, "alice");
        subject.push(DnType::OrganizationName, "system:masters");
        subject.push(ORGANIZATION_AGAIN.clone(), "dev");
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        valid(&mut params, -DAY, DAY);
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.der().clone(),
            key,
        }
    }
}

/// `organizationName` under another key: rcgen keeps one value per attribute type, and a
/// custom type with the same OID is how to get a second one.
static ORGANIZATION_AGAIN: std::sync::LazyLock<DnType> =
    std::sync::LazyLock::new(|| DnType::CustomDnType(vec![2, 5, 4, 10]));

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    valid(&mut params, -DAY, 365 * DAY);
    params
}

/// Makes `params` valid from `from` until `until`, in seconds from now (negative: ago).
fn valid(params: &mut CertificateParams, from: i64, until: i64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = |offset: i64| {
        let secs = now.checked_add_signed(offset).unwrap();
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs)
    };
    params.not_before = at(from);
    params.not_after = at(until);
}

struct Leaf {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl Leaf {
    /// This certificate, signing with its own key.
    fn identity(&self, intermediates: &[&Ca]) -> Arc<CertifiedKey> {
        self.identity_signing_with(&self.key, intermediates)
    }

    /// This certificate, signing with `key` (which may not be its key).
    fn identity_signing_with(&self, key: &KeyPair, intermediates: &[&Ca]) -> Arc<CertifiedKey> {
        let chain = std::iter::once(self.cert.clone())
            .chain(intermediates.iter().map(|ca| ca.der()))
            .collect();
        let key = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(PrivatePkcs8KeyDer::from(key.serialize_der()).into())
            .unwrap();
        Arc::new(CertifiedKey::new(chain, key))
    }
}

// ---------------------------------------------------------------------------------------------
// A server that asks for client certificates
// ---------------------------------------------------------------------------------------------

struct Server {
    addr: SocketAddr,
    root: CertificateDer<'static>,
    /// What the handler saw of each request's connection.
    seen: mpsc::UnboundedReceiver<Arc<ConnInfo>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves with `client_certs`; the handler answers as an API server would: `anonymous`
    /// without a certificate, `user=<cn> groups=<o,…>` for one that `trusted` verifies, and 401
    /// with the reason for any other.
    async fn start(client_certs: ClientCerts, trusted: ClientCa) -> Self {
        let (cert, _) = tls::self_signed(&["localhost".to_owned()], None).unwrap();
        let root = cert.chain[0].clone();
        let store = Arc::new(CertStore::new(cert).unwrap());
        let config = tls::server_config_for(store, client_certs).unwrap();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let handler = move |_req: Request<Incoming>, info: Arc<ConnInfo>| {
            let _ = seen_tx.send(Arc::clone(&info));
            let resp = if info.client_certs.is_empty() {
                text(StatusCode::OK, "anonymous")
            } else {
                match trusted.verify(&info.client_certs) {
                    Ok(client) => text(
                        StatusCode::OK,
                        format!(
                            "user={} groups={}",
                            client.common_name.unwrap_or_default(),
                            client.organizations.join(",")
                        ),
                    ),
                    Err(e) => text(StatusCode::UNAUTHORIZED, e.to_string()),
                }
            };
            std::future::ready(resp)
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_tls(listener, config, handler, stop.clone(), PATIENCE));
        Self {
            addr,
            root,
            seen,
            stop,
            task,
        }
    }

    async fn connect(
        &self,
        identity: Option<Arc<CertifiedKey>>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            Some(key) => builder.with_client_cert_resolver(Arc::new(Identity(key))),
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(self.addr).await?;
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// One HTTP/1.1 request on a new connection, and what the handler saw of the connection.
    async fn get(
        &mut self,
        identity: Option<Arc<CertifiedKey>>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (StatusCode, String, Arc<ConnInfo>) {
        let tls = self.connect(identity, version).await.unwrap();
        let (status, body) = get_http1(tls).await.unwrap();
        let info = self.seen.try_recv().expect("the handler saw the request");
        (status, body, info)
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("serve_tls returns after cancellation")
            .unwrap();
    }
}

/// A client that always presents one certificate.
#[derive(Debug)]
struct Identity(Arc<CertifiedKey>);

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

async fn get_http1(tls: TlsStream<TcpStream>) -> hyper::Result<(StatusCode, String)> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap()))
}

const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test]
async fn request_serves_a_client_without_a_certificate() {
    let ca = Ca::root("client-ca");
    let mut server = Server::start(ClientCerts::Request, ca.client_ca()).await;
    for version in VERSIONS {
        let (status, body, info) = server.get(None, version).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
        assert!(info.client_certs.is_empty(), "{info:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn request_passes_a_trusted_chain_to_the_handler() {
    let root = Ca::root("client-ca");
    let intermediate = root.intermediate("client-intermediate");
    let direct = root.leaf(|_| {});
    let indirect = intermediate.leaf(|p| {
        p.distinguished_name.push(DnType::CommonName, "bob");
    });
    let mut server = Server::start(ClientCerts::Request, root.client_ca()).await;
    for version in VERSIONS {
        let (status, body, info) = server.get(Some(direct.identity(&[])), version).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "user=alice groups=system:masters,dev"),
            "{version:?}"
        );
        assert_eq!(info.client_certs, std::slice::from_ref(&direct.cert));

        let identity = indirect.identity(&[&intermediate]);
        let (status, body, info) = server.get(Some(identity), version).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "user=bob groups=system:masters,dev"),
            "{version:?}"
        );
        assert_eq!(
            info.client_certs,
            [indirect.cert.clone(), intermediate.der()]
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn request_serves_a_certificate_from_an_unknown_ca_and_leaves_the_verdict_to_the_handler() {
    let trusted = Ca::root("client-ca");
    let other = Ca::root("someone-else");
    let stranger = other.leaf(|_| {});
    let mut server = Server::start(ClientCerts::Request, trusted.client_ca()).await;
    for version in VERSIONS {
        let (status, body, info) = server.get(Some(stranger.identity(&[])), version).await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::UNAUTHORIZED,
                "certificate signed by unknown authority"
            ),
            "{version:?}"
        );
        assert_eq!(info.client_certs, std::slice::from_ref(&stranger.cert));
    }
    // An expired certificate and a server certificate also get through the handshake.
    let expired = trusted.leaf(|p| valid(p, -3 * DAY, -2 * DAY));
    let (status, body, _) = server
        .get(Some(expired.identity(&[])), &rustls::version::TLS13)
        .await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::UNAUTHORIZED,
            "certificate has expired or is not yet valid"
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn request_refuses_a_client_that_does_not_hold_the_key() {
    let ca = Ca::root("client-ca");
    let leaf = ca.leaf(|_| {});
    let wrong_key = KeyPair::generate().unwrap();
    let mut server = Server::start(ClientCerts::Request, ca.client_ca()).await;
    for version in VERSIONS {
        let identity = leaf.identity_signing_with(&wrong_key, &[]);
        // TLS 1.2 fails the handshake itself; a TLS 1.3 client learns of the alert only when
        // it next reads, so its first request fails instead.
        let outcome = match server.connect(Some(identity), version).await {
            Ok(tls) => get_http1(tls).await.err().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        assert!(outcome.is_some(), "{version:?} client was served");
    }
    // The handler never saw those connections; a well-behaved client is still served.
    let (status, _, _) = server
        .get(Some(leaf.identity(&[])), &rustls::version::TLS13)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(server.seen.try_recv().is_err());
    server.stop().await;
}

#[tokio::test]
async fn no_client_certs_does_not_ask_for_one() {
    let ca = Ca::root("client-ca");
    let leaf = ca.leaf(|_| {});
    let mut server = Server::start(ClientCerts::None, ca.client_ca()).await;
    for version in VERSIONS {
        let (status, body, info) = server.get(Some(leaf.identity(&[])), version).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
        assert!(info.client_certs.is_empty(), "{info:?}");
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// ClientCa::verify
// ---------------------------------------------------------------------------------------------

#[test]
fn verify_accepts_a_leaf_of_the_ca_and_reads_its_names() {
    let ca = Ca::root("client-ca");
    let leaf = ca.leaf(|_| {});
    let client = ca.client_ca().verify(&[leaf.cert]).unwrap();
    assert_eq!(client.common_name.as_deref(), Some("alice"));
    assert_eq!(client.organizations, ["system:masters", "dev"]);
}

#[test]
fn verify_accepts_a_leaf_through_an_intermediate_the_client_sends() {
    let root = Ca::root("client-ca");
    let intermediate = root.intermediate("client-intermediate");
    let leaf = intermediate.leaf(|_| {});
    let trusted = root.client_ca();
    trusted
        .verify(&[leaf.cert.clone(), intermediate.der()])
        .unwrap();
    // Without the intermediate there is no path to the root.
    let err = trusted.verify(&[leaf.cert]).unwrap_err();
    assert!(
        matches!(err, ClientCertError::UnknownAuthority(_)),
        "{err:?}"
    );
}

#[test]
fn verify_accepts_any_ca_of_a_bundle() {
    let first = Ca::root("first");
    let second = Ca::root("second");
    // Other sections, such as a key, are skipped.
    let bundle = format!(
        "{}{}{}",
        first.pem(),
        KeyPair::generate().unwrap().serialize_pem(),
        second.pem()
    );
    let trusted = ClientCa::from_pem(bundle.as_bytes(), "bundle").unwrap();
    trusted.verify(&[first.leaf(|_| {}).cert]).unwrap();
    trusted.verify(&[second.leaf(|_| {}).cert]).unwrap();
    let err = trusted
        .verify(&[Ca::root("third").leaf(|_| {}).cert])
        .unwrap_err();
    assert!(
        matches!(err, ClientCertError::UnknownAuthority(_)),
        "{err:?}"
    );
}

#[test]
fn verify_rejects_a_leaf_of_another_ca() {
    let trusted = Ca::root("client-ca").client_ca();
    // Another name, and the same name with another key (an impostor of the trusted CA).
    for other in [Ca::root("someone-else"), Ca::root("client-ca")] {
        let err = trusted.verify(&[other.leaf(|_| {}).cert]).unwrap_err();
        assert!(
            matches!(err, ClientCertError::UnknownAuthority(_)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "certificate signed by unknown authority");
    }
}

#[test]
fn verify_rejects_a_leaf_outside_its_validity() {
    let ca = Ca::root("client-ca");
    let trusted = ca.client_ca();
    let expired = ca.leaf(|p| valid(p, -3 * DAY, -60));
    let not_yet = ca.leaf(|p| valid(p, 3600, 2 * DAY));
    for leaf in [expired, not_yet] {
        let err = trusted.verify(&[leaf.cert]).unwrap_err();
        assert!(matches!(err, ClientCertError::NotValidNow(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "certificate has expired or is not yet valid"
        );
    }
}

#[test]
fn verify_requires_client_auth_when_key_usage_is_restricted() {
    let ca = Ca::root("client-ca");
    let trusted = ca.client_ca();
    let server_only = ca.leaf(|p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let err = trusted.verify(&[server_only.cert]).unwrap_err();
    assert!(
        matches!(err, ClientCertError::IncompatibleUsage(_)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "certificate specifies an incompatible key usage"
    );

    // As in Go, no extended key usage at all allows any usage; both together are fine too.
    let unrestricted = ca.leaf(|p| p.extended_key_usages.clear());
    trusted.verify(&[unrestricted.cert]).unwrap();
    let both = ca.leaf(|p| {
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    });
    trusted.verify(&[both.cert]).unwrap();
}

#[test]
fn verify_rejects_garbage_and_an_empty_chain() {
    let trusted = Ca::root("client-ca").client_ca();
    let err = trusted.verify(&[]).unwrap_err();
    assert!(matches!(err, ClientCertError::NoCertificate), "{err:?}");
    assert_eq!(err.to_string(), "no client certificate");

    for garbage in [&b""[..], b"garbage", &[0x30, 0x82, 0xff, 0xff, 0x00]] {
        let err = trusted
            .verify(&[CertificateDer::from(garbage.to_vec())])
            .unwrap_err();
        assert!(matches!(err, ClientCertError::Malformed), "{err:?}");
        assert_eq!(err.to_string(), "malformed client certificate");
    }
}

#[test]
fn verified_names_follow_go() {
    let ca = Ca::root("client-ca");
    let trusted = ca.client_ca();
    let names = |leaf: Leaf| trusted.verify(&[leaf.cert]).unwrap();

    // No common name and no organization.
    let client = names(ca.leaf(|p| p.distinguished_name = DistinguishedName::new()));
    assert_eq!(client.common_name, None);
    assert!(client.organizations.is_empty());

    // An empty common name counts as none.
    let client = names(ca.leaf(|p| p.distinguished_name.push(DnType::CommonName, "")));
    assert_eq!(client.common_name, None);

    // Of several common names, the last one counts.
    let client = names(ca.leaf(|p| {
        p.distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 3]), "alice-too");
    }));
    assert_eq!(client.common_name.as_deref(), Some("alice-too"));

    // Other string types: BMPString (UTF-16) and the PrintableString and TeletexString.
    let client = names(ca.leaf(|p| {
        let mut subject = DistinguishedName::new();
        subject.push(
            DnType::CommonName,
            DnValue::BmpString("zoë".try_into().unwrap()),
        );
        subject.push(
            DnType::OrganizationName,
            DnValue::PrintableString("printable".try_into().unwrap()),
        );
        subject.push(
            ORGANIZATION_AGAIN.clone(),
            DnValue::TeletexString("teletex".try_into().unwrap()),
        );
        p.distinguished_name = subject;
    }));
    assert_eq!(client.common_name.as_deref(), Some("zoë"));
    assert_eq!(client.organizations, ["printable", "teletex"]);
}

#[test]
fn client_ca_loading_errors_name_the_source() {
    let source = "configmap kube-system/extension-apiserver-authentication key client-ca-file";
    for pem in [
        &b""[..],
        b"not pem at all",
        KeyPair::generate().unwrap().serialize_pem().as_bytes(),
    ] {
        let err = ClientCa::from_pem(pem, source).unwrap_err();
        assert!(
            matches!(&err, TlsError::NoCaCertificate { origin } if origin == source),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("{source}: no CA certificate found")
        );
    }

    let malformed = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
    let err = ClientCa::from_pem(malformed, source).unwrap_err();
    assert!(
        matches!(&err, TlsError::CaPem { origin, .. } if origin == source),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("{source}: malformed PEM"));

    let not_a_cert = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n";
    let err = ClientCa::from_pem(not_a_cert.as_bytes(), source).unwrap_err();
    assert!(
        matches!(&err, TlsError::BadCaCertificate { origin, .. } if origin == source),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("{source}: malformed CA certificate")
    );

    let missing = std::env::temp_dir().join(format!(
        "common-client-ca-{}-absent.crt",
        std::process::id()
    ));
    let err = ClientCa::from_pem_file(&missing).unwrap_err();
    assert!(
        matches!(&err, TlsError::Read { path, .. } if *path == missing),
        "{err:?}"
    );
}

#[test]
fn client_ca_from_a_file_and_its_debug_form() {
    let ca = Ca::root("client-ca");
    let path = std::env::temp_dir().join(format!("common-client-ca-{}.crt", std::process::id()));
    std::fs::write(&path, ca.pem()).unwrap();
    let loaded = ClientCa::from_pem_file(&path);
    let _ = std::fs::remove_file(&path);
    let trusted = loaded.unwrap();
    trusted.verify(&[ca.leaf(|_| {}).cert]).unwrap();
    let debug = format!("{trusted:?}");
    assert!(
        debug.contains(&format!("{:?}", path.display().to_string())),
        "{debug}"
    );
    assert!(debug.contains("roots: 1"), "{debug}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the bytes, `verify` answers instead of panicking: damaged versions of a valid
    /// chain, and arbitrary bytes.
    #[test]
    fn verify_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        noise in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let (trusted, leaf, intermediate) = &*FIXTURE;
        let mut damaged = leaf.to_vec();
        for (at, byte) in &flips {
            let i = at.index(damaged.len());
            damaged[i] ^= byte | 1;
        }
        if truncate {
            damaged.truncate(cut.index(damaged.len()));
        }
        let _ = trusted.verify(&[CertificateDer::from(damaged), intermediate.clone()]);
        let _ = trusted.verify(&[leaf.clone(), CertificateDer::from(noise.clone())]);
        let _ = trusted.verify(&[CertificateDer::from(noise)]);
    }
}

/// A CA bundle, a leaf issued through an intermediate, and that intermediate.
static FIXTURE: std::sync::LazyLock<(ClientCa, CertificateDer<'static>, CertificateDer<'static>)> =
    std::sync::LazyLock::new(|| {
        let root = Ca::root("client-ca");
        let intermediate = root.intermediate("client-intermediate");
        let leaf = intermediate.leaf(|_| {});
        (root.client_ca(), leaf.cert, intermediate.der())
    });
