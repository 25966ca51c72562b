//! The certificates of a small cluster, made with `rcgen` and written as PEM files into a temp
//! dir: what kube-apiserver's front proxy, a user, an impostor and the adapter's serving side
//! present.
//!
//! - The front-proxy CA signs the aggregator's client certificate (CN [`FRONT_PROXY_CN`]) and
//!   one with another CN ([`STRANGER_CN`]), for `--requestheader-allowed-names`.
//! - The cluster client CA signs a user certificate (CN [`ALICE`], O [`ALICE_GROUP`]).
//! - The rogue CA signs a certificate that claims CN [`FRONT_PROXY_CN`] but chains to nothing
//!   the adapter trusts.
//! - The serving CA signs two serving certificates for `127.0.0.1` and `localhost`, the second
//!   for rotation, so clients can verify the adapter with `--cacert`.
//!
//! Keys are ECDSA P-256; every certificate has a serial of its own (see [`CertPair::serial`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use tempfile::TempDir;

/// The common name kube-apiserver's front-proxy client certificate has by convention (and the
/// name in `--requestheader-allowed-names`).
pub const FRONT_PROXY_CN: &str = "front-proxy-client";

/// The CN of a certificate from the front-proxy CA that is not on the allowed-names list.
pub const STRANGER_CN: &str = "not-the-front-proxy";

/// The user of the cluster client certificate.
pub const ALICE: &str = "alice";

/// Alice's group (the certificate's O).
pub const ALICE_GROUP: &str = "devs";

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Its serial number.
    pub serial: u64,
}

/// Every CA and leaf the auth tests use, as files in one temp dir (removed on drop).
pub struct Pki {
    dir: TempDir,
    /// The front-proxy CA (`--requestheader-client-ca-file`).
    pub front_proxy_ca: PathBuf,
    /// The aggregator's client certificate: CN [`FRONT_PROXY_CN`], EKU clientAuth.
    pub front_proxy_client: CertPair,
    /// From the front-proxy CA with CN [`STRANGER_CN`].
    pub front_proxy_stranger: CertPair,
    /// The cluster client CA (`--client-ca-file`).
    pub client_ca: PathBuf,
    /// A user certificate: CN [`ALICE`], O [`ALICE_GROUP`], EKU clientAuth.
    pub alice: CertPair,
    /// A CA nobody trusts.
    pub rogue_ca: PathBuf,
    /// From the rogue CA, claiming CN [`FRONT_PROXY_CN`].
    pub rogue_front_proxy: CertPair,
    /// The CA of the adapter's serving certificates (what clients pass as `--cacert`).
    pub serving_ca: PathBuf,
    /// Serving certificate 1 for `127.0.0.1` and `localhost`, EKU serverAuth.
    pub serving: CertPair,
    /// Serving certificate 2, same names, another key: what rotation swaps in.
    pub serving_next: CertPair,
}

impl Pki {
    /// The adapter's flags for a cluster's setup with these certificates: `serving` as the
    /// serving pair, the kube-apiserver at `kubeconfig` for TokenReview and
    /// SubjectAccessReview, and, with `ca_flags`, the front-proxy and client CAs as
    /// kube-apiserver's delegation names them.
    pub fn adapter_flags(
        &self,
        serving: &CertPair,
        kubeconfig: &Path,
        ca_flags: bool,
    ) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut args = vec![
            "--tls-cert-file".to_owned(),
            path(&serving.cert),
            "--tls-private-key-file".to_owned(),
            path(&serving.key),
            "--authentication-kubeconfig".to_owned(),
            path(kubeconfig),
            "--authorization-kubeconfig".to_owned(),
            path(kubeconfig),
        ];
        if ca_flags {
            args.extend([
                "--requestheader-client-ca-file".to_owned(),
                path(&self.front_proxy_ca),
                "--requestheader-allowed-names".to_owned(),
                FRONT_PROXY_CN.to_owned(),
                "--client-ca-file".to_owned(),
                path(&self.client_ca),
            ]);
        }
        args
    }

    /// Reading the adapter as [`ALICE`] with her client certificate, trusting the serving CA.
    pub fn as_alice(&self) -> crate::promadapter::Security {
        crate::promadapter::Security::Secured {
            ca: Some(self.serving_ca.clone()),
            user: crate::kubectl::KubeconfigUser::ClientCert {
                cert: self.alice.cert.clone(),
                key: self.alice.key.clone(),
            },
        }
    }

    /// Has `fake` publish these CAs as kube-apiserver does (the front-proxy and client CAs
    /// in the `extension-apiserver-authentication` ConfigMap, the front proxy's CN allowed)
    /// and answer SubjectAccessReviews with `policy`.
    pub fn delegate_from(
        &self,
        fake: &crate::kubeapi::FakeKubeApi,
        policy: impl Fn(&crate::kubeapi::AccessReview) -> crate::kubeapi::Decision
        + Send
        + Sync
        + 'static,
    ) {
        fake.set_policy(policy);
        fake.set_auth_config(Some(crate::kubeapi::auth_config_data(
            Some(&pem(&self.client_ca)),
            Some(&pem(&self.front_proxy_ca)),
            &[FRONT_PROXY_CN],
        )));
    }

    /// Generates everything into a new temp dir.
    ///
    /// # Errors
    /// When a key or certificate can't be made or a file can't be written.
    pub fn generate() -> Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("pki-")
            .tempdir()
            .context("creating a temp dir for the PKI")?;
        let mut next_serial = 1000u64;
        let mut serial = || {
            next_serial += 1;
            next_serial
        };
        let path = |name: &str| dir.path().join(name);

        let front_proxy = Ca::new("front-proxy-ca", serial())?;
        front_proxy.write(&path("front-proxy-ca.crt"))?;
        let front_proxy_client = front_proxy.leaf(
            &LeafSpec::client(FRONT_PROXY_CN, &[]),
            serial(),
            &path("front-proxy-client"),
        )?;
        let front_proxy_stranger = front_proxy.leaf(
            &LeafSpec::client(STRANGER_CN, &[]),
            serial(),
            &path("front-proxy-stranger"),
        )?;

        let client = Ca::new("cluster-client-ca", serial())?;
        client.write(&path("client-ca.crt"))?;
        let alice = client.leaf(
            &LeafSpec::client(ALICE, &[ALICE_GROUP]),
            serial(),
            &path("alice"),
        )?;

        let rogue = Ca::new("front-proxy-ca", serial())?;
        rogue.write(&path("rogue-ca.crt"))?;
        let rogue_front_proxy = rogue.leaf(
            &LeafSpec::client(FRONT_PROXY_CN, &[]),
            serial(),
            &path("rogue-front-proxy"),
        )?;

        let serving_ca = Ca::new("serving-ca", serial())?;
        serving_ca.write(&path("serving-ca.crt"))?;
        let serving = serving_ca.leaf(&LeafSpec::serving(), serial(), &path("serving-1"))?;
        let serving_next = serving_ca.leaf(&LeafSpec::serving(), serial(), &path("serving-2"))?;

        Ok(Pki {
            front_proxy_ca: path("front-proxy-ca.crt"),
            front_proxy_client,
            front_proxy_stranger,
            client_ca: path("client-ca.crt"),
            alice,
            rogue_ca: path("rogue-ca.crt"),
            rogue_front_proxy,
            serving_ca: path("serving-ca.crt"),
            serving,
            serving_next,
            dir,
        })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The text of a PEM file (for a ConfigMap's `client-ca-file` and the like).
///
/// # Panics
/// When it can't be read.
pub fn pem(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A self-signed CA and its key.
struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(common_name: &str, serial: u64) -> Result<Ca> {
        let key = KeyPair::generate().context("generating a CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params
            .self_signed(&key)
            .with_context(|| format!("self-signing CA {common_name}"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.cert_pem).with_context(|| format!("writing {}", path.display()))
    }

    /// Signs a leaf and writes `<stem>.crt` and `<stem>.key`.
    fn leaf(&self, spec: &LeafSpec, serial: u64, stem: &Path) -> Result<CertPair> {
        let key = KeyPair::generate().context("generating a leaf key")?;
        let mut params =
            CertificateParams::new(spec.alt_names.clone()).context("certificate parameters")?;
        params.distinguished_name = name(&spec.common_name, &spec.organizations);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![spec.usage.clone()];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing {}", spec.common_name))?;
        let pair = CertPair {
            cert: stem.with_extension("crt"),
            key: stem.with_extension("key"),
            serial,
        };
        std::fs::write(&pair.cert, cert.pem())
            .with_context(|| format!("writing {}", pair.cert.display()))?;
        std::fs::write(&pair.key, key.serialize_pem())
            .with_context(|| format!("writing {}", pair.key.display()))?;
        Ok(pair)
    }
}

/// What a leaf certificate says.
struct LeafSpec {
    common_name: String,
    organizations: Vec<String>,
    alt_names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
}

impl LeafSpec {
    fn client(common_name: &str, organizations: &[&str]) -> LeafSpec {
        LeafSpec {
            common_name: common_name.to_owned(),
            organizations: organizations.iter().map(|o| (*o).to_owned()).collect(),
            alt_names: Vec::new(),
            usage: ExtendedKeyUsagePurpose::ClientAuth,
        }
    }

    fn serving() -> LeafSpec {
        LeafSpec {
            common_name: "prom-adapter".to_owned(),
            organizations: Vec::new(),
            alt_names: vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            usage: ExtendedKeyUsagePurpose::ServerAuth,
        }
    }
}

fn name(common_name: &str, organizations: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// `openssl verify` agrees with the intended chains (and rejects the rogue one).
    #[test]
    fn chains_verify_with_openssl() {
        let Some(openssl) = crate::util::find_program("openssl") else {
            panic!("openssl not found on PATH: install it with `apt-get install openssl`");
        };
        let pki = Pki::generate().unwrap();
        let verify = |ca: &Path, leaf: &Path, purpose: &str| -> bool {
            Command::new(&openssl)
                .arg("verify")
                .arg("-CAfile")
                .arg(ca)
                .arg("-purpose")
                .arg(purpose)
                .arg(leaf)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify(
            &pki.front_proxy_ca,
            &pki.front_proxy_client.cert,
            "sslclient"
        ));
        assert!(verify(&pki.client_ca, &pki.alice.cert, "sslclient"));
        assert!(verify(&pki.serving_ca, &pki.serving.cert, "sslserver"));
        assert!(verify(&pki.serving_ca, &pki.serving_next.cert, "sslserver"));
        assert!(!verify(
            &pki.front_proxy_ca,
            &pki.rogue_front_proxy.cert,
            "sslclient"
        ));
        let subject = Command::new(&openssl)
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(&pki.alice.cert)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&subject.stdout).trim(),
            "subject=CN=alice,O=devs"
        );
        assert_ne!(pki.serving.serial, pki.serving_next.serial);
    }
}
