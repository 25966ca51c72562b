//! Serving certificates and the rustls server configuration built from them.
//!
//! A [`ServingCert`] comes from PEM files ([`load_pem`]) or is generated ([`self_signed`], the
//! way `k8s.io/apiserver` does when no certificate is configured). It goes into a [`CertStore`],
//! the certificate resolver of the [`rustls::ServerConfig`] that [`server_config_with`] builds,
//! so a new certificate can be swapped in with [`CertStore::replace`] without rebuilding the
//! config or restarting the listener; [`CertStore::watch_files`] does that whenever the PEM
//! files change, as `k8s.io/apiserver`'s dynamic serving certificate controller does.
//!
//! Client certificates follow kube-apiserver too: [`server_config_for`] with
//! [`ClientCerts::Request`] asks for one without requiring it ([`RequestClientCert`], Go's
//! `tls.RequestClientCert`), and whoever handles the request decides afterwards whether to trust
//! the chain, typically with [`ClientCa::verify`]. A certificate from the wrong CA therefore
//! becomes an HTTP 401, not a failed handshake.
//!
//! Every place that needs cryptography uses the *ring* provider explicitly; nothing here relies
//! on a process-wide default provider being installed.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ParsedCertificate, ResolvesServerCert, ServerConfig, VerifierBuilderError,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// How long a generated certificate is valid, as `k8s.io/client-go/util/cert` does (one year).
const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// `notBefore` of a generated certificate lies this far in the past, to tolerate clock skew.
const SELF_SIGNED_BACKDATE: Duration = Duration::from_secs(60 * 60);
/// A stored self-signed certificate that expires within this margin is replaced, not reused.
const SELF_SIGNED_RENEW_MARGIN: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// File names inside `cert_dir`, as `k8s.io/apiserver` names them.
const SELF_SIGNED_CERT_FILE: &str = "apiserver.crt";
/// See [`SELF_SIGNED_CERT_FILE`].
const SELF_SIGNED_KEY_FILE: &str = "apiserver.key";

/// The one crypto provider used for serving, key loading and certificate checks.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// A serving certificate chain and its key, loaded from PEM files or generated.
pub struct ServingCert {
    /// The end-entity certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the end-entity certificate (PKCS#1, PKCS#8 or SEC1).
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ServingCert")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Why a serving certificate could not be loaded, generated or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A generated certificate or key could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("{}: malformed PEM", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("{}: no certificate found", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key section.
    #[error("{}: no private key found", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A [`ServingCert`] was built with an empty chain.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// The private key is of a type or encoding the crypto provider cannot use.
    #[error("unsupported private key")]
    UnsupportedKey(#[source] rustls::Error),
    /// The end-entity certificate cannot be parsed.
    #[error("malformed certificate")]
    BadCertificate(#[source] rustls::Error),
    /// The private key belongs to a different certificate.
    #[error("key does not match certificate")]
    KeyMismatch,
    /// A stored self-signed certificate is expired (or about to be), or does not cover a host.
    #[error("{}: certificate is not valid for serving", path.display())]
    Unusable {
        /// The certificate file.
        path: PathBuf,
        /// Why the check failed.
        #[source]
        source: rustls::Error,
    },
    /// [`self_signed`] was given no host names.
    #[error("no host names for the self-signed certificate")]
    NoHosts,
    /// [`self_signed`] was given something that is neither a DNS name nor an IP address.
    #[error("invalid host name {host:?}")]
    InvalidHost {
        /// The offending entry.
        host: String,
    },
    /// Generating a self-signed certificate failed.
    #[error("cannot generate a self-signed certificate")]
    Generate(#[source] rcgen::Error),
    /// The provider rejected the TLS protocol versions.
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
    /// A client CA bundle is not well-formed PEM.
    #[error("{origin}: malformed PEM")]
    CaPem {
        /// Where the bundle came from: a file, or e.g. a ConfigMap key.
        origin: String,
        /// What is wrong with it.
        #[source]
        source: pem::Error,
    },
    /// A client CA bundle holds no `CERTIFICATE` section.
    #[error("{origin}: no CA certificate found")]
    NoCaCertificate {
        /// Where the bundle came from.
        origin: String,
    },
    /// A certificate in a client CA bundle cannot be parsed into a trust anchor.
    #[error("{origin}: malformed CA certificate")]
    BadCaCertificate {
        /// Where the bundle came from.
        origin: String,
        /// Why it cannot be used.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused to build a client certificate verifier from a CA bundle.
    #[error("{origin}: cannot build a client certificate verifier")]
    ClientVerifier {
        /// Where the bundle came from.
        origin: String,
        /// Why.
        #[source]
        source: VerifierBuilderError,
    },
}

/// Loads a certificate chain and its private key from PEM files, and checks they belong together.
///
/// The certificate file may hold intermediates after the end-entity certificate; the key file
/// may hold other sections (the first private key is used).
pub fn load_pem(cert_file: &Path, key_file: &Path) -> Result<ServingCert, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(cert_file, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let key = load_key(key_file)?;
    let cert = ServingCert { chain, key };
    certified_key(&cert)?;
    Ok(cert)
}

/// A self-signed pair for `hosts` (DNS names and IPs, e.g. `["localhost", "127.0.0.1",
/// "prom-adapter.monitoring.svc"]`), as `k8s.io/apiserver` does when no certificate is given.
///
/// With `cert_dir`, `<dir>/apiserver.crt` and `<dir>/apiserver.key` are reused if present and
/// valid (the key matches, every host is covered, and the certificate is not within a week of
/// expiry); otherwise a new pair is generated and written there (the key with mode 0600).
/// Returns the certificate and its PEM (for logging, or as an APIService `caBundle`).
///
/// The certificate is its own trust anchor: a single leaf, valid for one year, with the
/// `serverAuth` extended key usage.
pub fn self_signed(
    hosts: &[String],
    cert_dir: Option<&Path>,
) -> Result<(ServingCert, String), TlsError> {
    if hosts.is_empty() {
        return Err(TlsError::NoHosts);
    }
    for host in hosts {
        if ServerName::try_from(host.as_str()).is_err() {
            return Err(TlsError::InvalidHost { host: host.clone() });
        }
    }
    let Some(dir) = cert_dir else {
        let generated = generate(hosts)?;
        return Ok((generated.cert, generated.cert_pem));
    };

    let cert_file = dir.join(SELF_SIGNED_CERT_FILE);
    let key_file = dir.join(SELF_SIGNED_KEY_FILE);
    match reuse(&cert_file, &key_file, hosts) {
        Ok(Some(pair)) => {
            tracing::info!(path = %cert_file.display(), "Reusing the stored self-signed certificate.");
            return Ok(pair);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(
            error = %ErrorChain(&e),
            "Stored self-signed certificate is unusable; generating a new one."
        ),
    }

    let generated = generate(hosts)?;
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_atomically(&key_file, generated.key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert_file, generated.cert_pem.as_bytes(), 0o644)?;
    tracing::info!(path = %cert_file.display(), "Wrote a new self-signed certificate.");
    Ok((generated.cert, generated.cert_pem))
}

/// A rustls [`ServerConfig`] serving `cert`: ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3, the ring
/// provider, no client authentication.
///
/// Use [`server_config_with`] and keep the [`CertStore`] to replace the certificate later.
pub fn server_config(cert: ServingCert) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(Arc::new(CertStore::new(cert)?))
}

/// Like [`server_config`], but serving whatever certificate `store` holds at handshake time.
pub fn server_config_with(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_for(store, ClientCerts::None)
}

/// Like [`server_config_with`], and asking clients for a certificate as `client_certs` says.
///
/// With [`ClientCerts::Request`] the chain a client presents reaches the handler unjudged (in
/// [`crate::http::ConnInfo::client_certs`]); check it there, e.g. with [`ClientCa::verify`].
pub fn server_config_for(
    store: Arc<CertStore>,
    client_certs: ClientCerts,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::clone(&PROVIDER))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?;
    let builder = match client_certs {
        ClientCerts::None => builder.with_no_client_auth(),
        ClientCerts::Request => builder.with_client_cert_verifier(Arc::new(RequestClientCert)),
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Whether a server asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCerts {
    /// Clients are not asked (Go's `tls.NoClientCert`); they cannot present one.
    #[default]
    None,
    /// Clients are asked but may connect without one, and any chain they present is accepted
    /// by the handshake: see [`RequestClientCert`]. This is what kube-apiserver does.
    Request,
}

/// Asks for a client certificate without requiring one, and without judging the chain, like
/// Go's `tls.RequestClientCert` in kube-apiserver.
///
/// The handshake still proves the client holds the key of the certificate it presents: its
/// `CertificateVerify` signature is checked with the ring provider's algorithms. Whether the
/// chain is trusted (which CA, which usages, whether it has expired) is left to the
/// application, so that an untrusted certificate can be answered with an HTTP 401 rather than
/// a failed handshake. No CA names are hinted to the client, so it sends whatever certificate
/// it has.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestClientCert;

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Accepts any chain that parses: Go's server also parses every certificate the client
    /// sends and ends the handshake if one is malformed, but trusts none of them.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        for cert in std::iter::once(end_entity).chain(intermediates) {
            ParsedCertificate::try_from(cert)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The CAs a client certificate must chain to, loaded from a PEM bundle: what kube-apiserver's
/// `--client-ca-file` and `--requestheader-client-ca-file` hold.
///
/// Cheap to clone; the trust anchors are shared.
#[derive(Clone)]
pub struct ClientCa {
    origin: Arc<str>,
    roots: usize,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    /// Loads every `CERTIFICATE` in the PEM file at `path` as a trust anchor.
    pub fn from_pem_file(path: &Path) -> Result<Self, TlsError> {
        let pem = fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&pem, &path.display().to_string())
    }

    /// Loads every `CERTIFICATE` in `pem` as a trust anchor; other sections are skipped.
    ///
    /// `source` names where the PEM came from in errors, e.g. `configmap
    /// kube-system/extension-apiserver-authentication key requestheader-client-ca-file`.
    pub fn from_pem(pem: &[u8], source: &str) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::CaPem {
                origin: source.to_owned(),
                source: e,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCaCertificate {
                origin: source.to_owned(),
            });
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::BadCaCertificate {
                origin: source.to_owned(),
                source: e,
            })?;
        }
        let count = roots.len();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&PROVIDER))
                .build()
                .map_err(|e| TlsError::ClientVerifier {
                    origin: source.to_owned(),
                    source: e,
                })?;
        Ok(Self {
            origin: source.into(),
            roots: count,
            verifier,
        })
    }

    /// Checks a client's chain (end-entity first, then any intermediates, as
    /// [`crate::http::ConnInfo::client_certs`] holds it) as kube-apiserver's x509 authenticator
    /// does: it must chain to one of the CAs, be valid now, and allow client authentication
    /// (an extended key usage extension, where present, must include `clientAuth`).
    ///
    /// Returns the end-entity certificate's subject names. Never panics, whatever the bytes.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<VerifiedClient, ClientCertError> {
        let (end_entity, intermediates) =
            chain.split_first().ok_or(ClientCertError::NoCertificate)?;
        self.verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(ClientCertError::from_rustls)?;
        VerifiedClient::from_der(end_entity)
    }
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa")
            .field("origin", &self.origin)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// Who a verified client certificate names: in Kubernetes, the user and their groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifiedClient {
    /// The subject's common name (the last one if there are several, as Go reads it); `None`
    /// if absent or empty.
    pub common_name: Option<String>,
    /// The subject's organizations, in certificate order.
    pub organizations: Vec<String>,
}

impl VerifiedClient {
    fn from_der(der: &CertificateDer<'_>) -> Result<Self, ClientCertError> {
        use x509_parser::prelude::{FromDer as _, X509Certificate};

        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|_| ClientCertError::Malformed)?;
        let subject = cert.subject();
        Ok(Self {
            common_name: subject
                .iter_common_name()
                .filter_map(attribute_string)
                .last()
                .filter(|cn| !cn.is_empty()),
            organizations: subject
                .iter_organization()
                .filter_map(attribute_string)
                .collect(),
        })
    }
}

/// A name attribute as text, for the string types Go's `crypto/x509` decodes; `None` otherwise.
fn attribute_string(attr: &x509_parser::x509::AttributeTypeAndValue<'_>) -> Option<String> {
    use x509_parser::asn1_rs::Tag;

    if let Ok(s) = attr.as_str() {
        return Some(s.to_owned());
    }
    let value = attr.attr_value();
    match value.tag() {
        Tag::BmpString => {
            let (units, rest) = value.data.as_chunks::<2>();
            if !rest.is_empty() {
                return None;
            }
            char::decode_utf16(units.iter().map(|unit| u16::from_be_bytes(*unit)))
                .collect::<Result<String, _>>()
                .ok()
        }
        // Latin-1, the usual reading of T61String in practice.
        Tag::TeletexString => Some(value.data.iter().copied().map(char::from).collect()),
        _ => None,
    }
}

/// Why a client certificate chain is not accepted. The messages follow Go's `crypto/x509`
/// without its `x509: ` prefix, since clients of Kubernetes API servers see them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientCertError {
    /// The client presented no certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// A certificate in the chain is not well-formed DER.
    #[error("malformed client certificate")]
    Malformed,
    /// The chain does not lead to any of the trusted CAs: no issuer is known, or one with the
    /// right name did not sign it (which Go reports the same way).
    #[error("certificate signed by unknown authority")]
    UnknownAuthority(#[source] rustls::Error),
    /// A certificate in the chain has expired or is not valid yet.
    #[error("certificate has expired or is not yet valid")]
    NotValidNow(#[source] rustls::Error),
    /// A certificate's extended key usage does not allow client authentication.
    #[error("certificate specifies an incompatible key usage")]
    IncompatibleUsage(#[source] rustls::Error),
    /// Anything else webpki rejects (a CA used as end-entity, an unknown critical extension, a
    /// violated name constraint, …).
    #[error("certificate is not valid for client authentication")]
    Invalid(#[source] rustls::Error),
}

impl ClientCertError {
    fn from_rustls(e: rustls::Error) -> Self {
        let rustls::Error::InvalidCertificate(cert_error) = &e else {
            return Self::Invalid(e);
        };
        match cert_error {
            CertificateError::BadEncoding => Self::Malformed,
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Self::UnknownAuthority(e)
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Self::NotValidNow(e),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Self::IncompatibleUsage(e)
            }
            _ => Self::Invalid(e),
        }
    }
}

/// The certificate a server presents, replaceable while it runs (for reloading on change).
///
/// Handshakes already under way keep the certificate they started with.
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// A store presenting `cert`; fails if the key is unusable or does not match.
    pub fn new(cert: ServingCert) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(Arc::new(certified_key(&cert)?)),
        })
    }

    /// Presents `cert` from the next handshake on. On error the current certificate stays.
    pub fn replace(&self, cert: ServingCert) -> Result<(), TlsError> {
        let next = Arc::new(certified_key(&cert)?);
        // A poisoned lock still holds a whole `Arc`: writers only assign.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// The certificate and key presented right now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reloads the pair from `cert_file` and `key_file` whenever they change, until `stop` is
    /// cancelled.
    ///
    /// Every `every` (at least 1 ms) the files' modification time, length and inode are
    /// compared with those of the pair last loaded; the files are followed through symlinks, so
    /// a Kubernetes Secret volume's atomic update is seen. The first check loads the files
    /// regardless, so a change made before this was called is not missed; a pair identical to
    /// the one being served is not reported. On a change, the pair is loaded as [`load_pem`]
    /// does and presented from the next handshake on; connections already open keep the
    /// certificate they started with.
    ///
    /// A pair that cannot be loaded (unreadable, malformed, or half-written, such as a new
    /// certificate next to the old key) leaves the current certificate in place and is retried
    /// at every check until it loads. Each outcome is logged and passed to `on_reload`: a
    /// success once, and a failure once for each distinct error on each distinct state of the
    /// files, not at every retry. The file I/O runs on Tokio's blocking pool.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub fn watch_files(
        self: Arc<Self>,
        cert_file: PathBuf,
        key_file: PathBuf,
        every: Duration,
        stop: CancellationToken,
        on_reload: impl Fn(Result<(), &TlsError>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let watch = FileWatch {
            store: self,
            cert_file,
            key_file,
            loaded: None,
            failed: None,
        };
        tokio::spawn(watch.run(every, stop, on_reload).in_current_span())
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("chain_len", &self.current().cert.len())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// How often [`CertStore::watch_files`] checks, at the least.
const MIN_WATCH_PERIOD: Duration = Duration::from_millis(1);

/// The state of a file as far as change detection goes; `None` if it cannot be examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp(Option<(Option<SystemTime>, u64, u64, u64)>);

impl FileStamp {
    fn of(path: &Path) -> Self {
        Self(
            fs::metadata(path)
                .ok()
                .map(|m| (m.modified().ok(), m.len(), m.dev(), m.ino())),
        )
    }
}

/// The certificate file's and the key file's stamps.
type PairStamp = (FileStamp, FileStamp);

/// The state of [`CertStore::watch_files`].
struct FileWatch {
    store: Arc<CertStore>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The files as they were when last loaded into the store; `None` before the first load.
    loaded: Option<PairStamp>,
    /// The last failure reported, as the files were then and the error's text.
    failed: Option<(PairStamp, String)>,
}

impl FileWatch {
    async fn run(
        mut self,
        every: Duration,
        stop: CancellationToken,
        on_reload: impl Fn(Result<(), &TlsError>),
    ) {
        let mut ticks = tokio::time::interval(every.max(MIN_WATCH_PERIOD));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let checked = tokio::task::spawn_blocking(move || {
                let outcome = self.check();
                (self, outcome)
            })
            .await;
            let outcome;
            (self, outcome) = match checked {
                Ok(done) => done,
                // The runtime is shutting down.
                Err(e) if e.is_cancelled() => return,
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "Serving certificate watch panicked; it has stopped."
                    );
                    return;
                }
            };
            match outcome {
                None => {}
                Some(Ok(())) => {
                    tracing::info!(
                        cert_file = %self.cert_file.display(),
                        key_file = %self.key_file.display(),
                        "Reloaded the serving certificate."
                    );
                    on_reload(Ok(()));
                }
                Some(Err(e)) => {
                    tracing::warn!(
                        error = %ErrorChain(&e),
                        "Cannot reload the serving certificate; keeping the current one."
                    );
                    on_reload(Err(&e));
                }
            }
        }
    }

    /// Loads the pair if the files changed (or the last attempt failed). Returns what to report:
    /// nothing, a reload, or a failure not reported before.
    fn check(&mut self) -> Option<Result<(), TlsError>> {
        let stamp = (
            FileStamp::of(&self.cert_file),
            FileStamp::of(&self.key_file),
        );
        if self.loaded == Some(stamp) && self.failed.is_none() {
            return None;
        }
        // The stamps are taken before reading, so a write that lands during the read is seen
        // as a change at the next check.
        let cert = match load_pem(&self.cert_file, &self.key_file) {
            Ok(cert) => cert,
            Err(e) => return self.fail(stamp, e),
        };
        let unchanged = cert.chain == self.store.current().cert;
        if !unchanged && let Err(e) = self.store.replace(cert) {
            return self.fail(stamp, e);
        }
        self.loaded = Some(stamp);
        let recovered = self.failed.take().is_some();
        (!unchanged || recovered).then_some(Ok(()))
    }

    fn fail(&mut self, stamp: PairStamp, e: TlsError) -> Option<Result<(), TlsError>> {
        let text = ErrorChain(&e).to_string();
        if self
            .failed
            .as_ref()
            .is_some_and(|(s, t)| *s == stamp && *t == text)
        {
            return None;
        }
        self.failed = Some((stamp, text));
        Some(Err(e))
    }
}

/// Parses the key with the ring provider and checks it against the end-entity certificate.
fn certified_key(cert: &ServingCert) -> Result<CertifiedKey, TlsError> {
    if cert.chain.is_empty() {
        return Err(TlsError::EmptyChain);
    }
    let key = PROVIDER
        .key_provider
        .load_private_key(cert.key.clone_key())
        .map_err(TlsError::UnsupportedKey)?;
    let certified = CertifiedKey::new(cert.chain.clone(), key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // ring's signing keys always report their public key, so `Unknown` does not occur
        // with this provider; should it ever, refuse rather than serve an unchecked pair.
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch),
        Err(e) => Err(TlsError::BadCertificate(e)),
    }
}

fn load_key(key_file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_file.to_owned(),
        },
        e => pem_error(key_file, e),
    })
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    }
}

/// The stored pair, `None` if there is none, or why it cannot be used.
fn reuse(
    cert_file: &Path,
    key_file: &Path,
    hosts: &[String],
) -> Result<Option<(ServingCert, String)>, TlsError> {
    let cert_pem = match fs::read_to_string(cert_file) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TlsError::Read {
                path: cert_file.to_owned(),
                source,
            });
        }
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_file, e))?;
    let cert = ServingCert {
        chain,
        key: load_key(key_file)?,
    };
    certified_key(&cert)?;
    check_serves(&cert, hosts).map_err(|source| TlsError::Unusable {
        path: cert_file.to_owned(),
        source,
    })?;
    Ok(Some((cert, cert_pem)))
}

/// Checks a self-signed certificate as a client trusting only it would: its signature, every
/// host name, and its validity now and [`SELF_SIGNED_RENEW_MARGIN`] from now.
fn check_serves(cert: &ServingCert, hosts: &[String]) -> Result<(), rustls::Error> {
    let leaf = cert
        .chain
        .first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let mut roots = RootCertStore::empty();
    roots.add(leaf.clone())?;
    let parsed = ParsedCertificate::try_from(leaf)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let algs = PROVIDER.signature_verification_algorithms.all;
    for at in [now, now.saturating_add(SELF_SIGNED_RENEW_MARGIN)] {
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            UnixTime::since_unix_epoch(at),
            algs,
        )?;
    }
    for host in hosts {
        let name = ServerName::try_from(host.as_str())
            .map_err(|_| rustls::Error::General(format!("invalid host name {host:?}")))?;
        rustls::client::verify_server_name(&parsed, &name)?;
    }
    Ok(())
}

struct Generated {
    cert: ServingCert,
    cert_pem: String,
    key_pem: String,
}

fn generate(hosts: &[String]) -> Result<Generated, TlsError> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
        KeyUsagePurpose,
    };

    let mut params = CertificateParams::new(hosts.to_vec()).map_err(TlsError::Generate)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(SELF_SIGNED_BACKDATE);
    params.not_after = epoch + now.saturating_add(SELF_SIGNED_VALIDITY);
    // `<first host>@<unix seconds>`, the subject k8s.io/client-go/util/cert gives its certificates.
    let mut subject = DistinguishedName::new();
    let first = hosts.first().map_or("localhost", String::as_str);
    subject.push(DnType::CommonName, format!("{first}@{}", now.as_secs()));
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

    let key_pair = KeyPair::generate().map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key_pair).map_err(TlsError::Generate)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
        cert: ServingCert {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key_pair.serialize_der()).into(),
        },
    })
}

/// Writes `path` through a temporary file and a rename, so readers never see half a file and
/// the key is never readable by others, not even briefly.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    crate::files::write_atomically(path, contents, mode).map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Displays an error and its sources as `outer: inner: …`, for log fields.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// Accepts any server certificate but still checks the handshake's signatures, so the
/// connection is at least encrypted to whoever holds the key: `--insecure-skip-tls-verify`
/// for backends, and the benches' client of a self-signed adapter on loopback.
#[derive(Debug)]
pub struct AnyServerCert(Arc<CryptoProvider>);

impl AnyServerCert {
    /// Checks signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self(provider)
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a handshake in memory; `Err` when either side refuses.
    fn handshake(
        mut client: rustls::ClientConnection,
        mut server: rustls::ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn any_server_cert_accepts_a_self_signed_server_that_roots_refuse() {
        let (cert, _) = self_signed(&["localhost".to_owned()], None).unwrap();
        let server = server_config(cert).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = |verifier: Option<AnyServerCert>| {
            let b = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .unwrap();
            let config = match verifier {
                Some(v) => b
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(v))
                    .with_no_client_auth(),
                None => b
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth(),
            };
            rustls::ClientConnection::new(
                Arc::new(config),
                ServerName::try_from("localhost").unwrap(),
            )
            .unwrap()
        };
        let conn = || rustls::ServerConnection::new(Arc::clone(&server)).unwrap();
        handshake(
            client(Some(AnyServerCert::new(Arc::clone(&provider)))),
            conn(),
        )
        .unwrap();
        assert!(handshake(client(None), conn()).is_err());
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("common-tls-unit-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn pair() -> Generated {
        generate(&["localhost".to_owned()]).unwrap()
    }

    #[test]
    fn file_watch_reports_each_change_and_each_distinct_failure_once() {
        let dir = TempDir::new("watch-check");
        let cert_file = dir.0.join("tls.crt");
        let key_file = dir.0.join("tls.key");
        let a = pair();
        fs::write(&cert_file, &a.cert_pem).unwrap();
        fs::write(&key_file, &a.key_pem).unwrap();
        let store = Arc::new(CertStore::new(load_pem(&cert_file, &key_file).unwrap()).unwrap());
        let served = || store.current().cert[0].clone();
        let mut watch = FileWatch {
            store: Arc::clone(&store),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            loaded: None,
            failed: None,
        };

        // The first check loads the pair already served: nothing to report.
        assert!(watch.check().is_none());
        assert!(watch.check().is_none());

        // Half-written: the new certificate next to the old key. Reported once, retried quietly.
        let b = pair();
        fs::write(&cert_file, &b.cert_pem).unwrap();
        assert!(matches!(watch.check(), Some(Err(TlsError::KeyMismatch))));
        assert!(watch.check().is_none());
        assert!(watch.check().is_none());
        assert_eq!(served(), a.cert.chain[0]);

        // A different failure is reported again.
        fs::write(&cert_file, "garbage").unwrap();
        assert!(matches!(
            watch.check(),
            Some(Err(TlsError::NoCertificate { .. }))
        ));
        assert!(watch.check().is_none());
        // So is the same error on files written again: it is a new failed attempt.
        fs::write(&cert_file, "more garbage").unwrap();
        assert!(matches!(
            watch.check(),
            Some(Err(TlsError::NoCertificate { .. }))
        ));
        assert!(watch.check().is_none());
        fs::write(&cert_file, &b.cert_pem).unwrap();
        fs::remove_file(&key_file).unwrap();
        assert!(matches!(
            watch.check(),
            Some(Err(TlsError::Read { path, .. })) if path == key_file
        ));
        assert!(watch.check().is_none());
        assert_eq!(served(), a.cert.chain[0]);

        // The complete new pair.
        fs::write(&cert_file, &b.cert_pem).unwrap();
        fs::write(&key_file, &b.key_pem).unwrap();
        assert!(matches!(watch.check(), Some(Ok(()))));
        assert_eq!(served(), b.cert.chain[0]);
        assert!(watch.check().is_none());

        // Rewritten with the same contents: nothing to report.
        fs::write(&cert_file, &b.cert_pem).unwrap();
        assert!(watch.check().is_none());

        // Broken, then restored to the pair still served: the recovery is reported.
        fs::write(&key_file, "").unwrap();
        assert!(matches!(watch.check(), Some(Err(TlsError::NoKey { .. }))));
        fs::write(&key_file, &b.key_pem).unwrap();
        assert!(matches!(watch.check(), Some(Ok(()))));
        assert!(watch.check().is_none());
        assert_eq!(served(), b.cert.chain[0]);
    }

    #[test]
    fn file_watch_reports_a_bad_pair_at_the_first_check() {
        let dir = TempDir::new("watch-first");
        let cert_file = dir.0.join("tls.crt");
        let key_file = dir.0.join("tls.key");
        let a = pair();
        let store = Arc::new(CertStore::new(a.cert).unwrap());
        let mut watch = FileWatch {
            store,
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            loaded: None,
            failed: None,
        };
        assert!(matches!(
            watch.check(),
            Some(Err(TlsError::Read { path, .. })) if path == cert_file
        ));
        assert!(watch.check().is_none());

        // Files that differ from the pair served are loaded at the first good check.
        let b = pair();
        fs::write(&cert_file, &b.cert_pem).unwrap();
        fs::write(&key_file, &b.key_pem).unwrap();
        assert!(matches!(watch.check(), Some(Ok(()))));
        assert_eq!(watch.store.current().cert[0], b.cert.chain[0]);
    }
}
