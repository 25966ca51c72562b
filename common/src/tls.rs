//! Serving certificates and the rustls server configuration built from them.
//!
//! A [`ServingCert`] comes from PEM files ([`load_pem`]) or is generated ([`self_signed`], the
//! way `k8s.io/apiserver` does when no certificate is configured). It goes into a [`CertStore`],
//! the certificate resolver of the [`rustls::ServerConfig`] that [`server_config_with`] builds,
//! so a new certificate can be swapped in with [`CertStore::replace`] without rebuilding the
//! config or restarting the listener.
//!
//! Every place that needs cryptography uses the *ring* provider explicitly; nothing here relies
//! on a process-wide default provider being installed.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

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
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&PROVIDER))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
    let write_error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_error(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(write_error)?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(write_error)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_error)
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
