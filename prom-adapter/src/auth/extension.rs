//! ConfigMap `kube-system/extension-apiserver-authentication` → authentication config.
//!
//! kube-apiserver's `ClusterAuthenticationTrustController` publishes there the CA that signs
//! its front-proxy client certificate, the names and headers that go with it, and its client
//! CA. The header and name keys hold JSON string arrays (`["X-Remote-User"]`), the CA keys PEM
//! bundles. A missing (or empty) key takes the Kubernetes default; an explicit `[]` or `null`
//! is an empty list, as Go decodes it.

use std::collections::BTreeMap;

use common::tls::{ClientCa, TlsError};

use super::authn::{
    DEFAULT_EXTRA_PREFIXES, DEFAULT_GROUP_HEADERS, DEFAULT_USERNAME_HEADERS, RequestHeaderConfig,
};
use super::kube_api::{CONFIG_MAP_NAME, CONFIG_MAP_NAMESPACE, KubeAuthApi, KubeError};

/// The client CA key.
pub const CLIENT_CA_KEY: &str = "client-ca-file";
/// The front-proxy CA key.
pub const REQUESTHEADER_CA_KEY: &str = "requestheader-client-ca-file";
/// The allowed front-proxy common names key.
pub const ALLOWED_NAMES_KEY: &str = "requestheader-allowed-names";
/// The user name headers key.
pub const USERNAME_HEADERS_KEY: &str = "requestheader-username-headers";
/// The group headers key.
pub const GROUP_HEADERS_KEY: &str = "requestheader-group-headers";
/// The extra header prefixes key.
pub const EXTRA_PREFIXES_KEY: &str = "requestheader-extra-headers-prefix";
/// The UID headers key.
pub const UID_HEADERS_KEY: &str = "requestheader-uid-headers";

/// Why the authentication config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A header or name key is not a JSON array of strings.
    #[error(
        "configmap kube-system/extension-apiserver-authentication key {key}: not a JSON array \
         of strings"
    )]
    Json {
        /// The ConfigMap key.
        key: &'static str,
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// A CA key is not a usable PEM bundle (the error names the key).
    #[error(transparent)]
    Ca(TlsError),
    /// The ConfigMap could not be read.
    #[error("cannot read configmap kube-system/extension-apiserver-authentication")]
    Fetch(#[source] KubeError),
    /// The ConfigMap does not exist (kube-apiserver creates it at startup).
    #[error("configmap kube-system/extension-apiserver-authentication does not exist")]
    Missing,
    /// There is no Kubernetes client to read the ConfigMap with (not in a pod, and no
    /// kubeconfig given).
    #[error(
        "cannot read configmap kube-system/extension-apiserver-authentication: no kubernetes \
         client is configured"
    )]
    NoClient,
}

/// The front-proxy config (when the ConfigMap has a front-proxy CA) and the client CA (when
/// it has one) that `data` describes.
pub fn from_config_map(
    data: &BTreeMap<String, String>,
) -> Result<(Option<RequestHeaderConfig>, Option<ClientCa>), AuthConfigError> {
    let allowed_names = strings(data, ALLOWED_NAMES_KEY, &[])?;
    let username_headers = strings(data, USERNAME_HEADERS_KEY, DEFAULT_USERNAME_HEADERS)?;
    let group_headers = strings(data, GROUP_HEADERS_KEY, DEFAULT_GROUP_HEADERS)?;
    let extra_prefixes = strings(data, EXTRA_PREFIXES_KEY, DEFAULT_EXTRA_PREFIXES)?;
    let uid_headers = strings(data, UID_HEADERS_KEY, &[])?;
    let client_ca = ca(data, CLIENT_CA_KEY)?;
    let requestheader = ca(data, REQUESTHEADER_CA_KEY)?.map(|ca| RequestHeaderConfig {
        ca,
        allowed_names,
        username_headers,
        group_headers,
        extra_prefixes,
        uid_headers,
    });
    Ok((requestheader, client_ca))
}

/// Reads the ConfigMap through `kube` and parses it with [`from_config_map`].
pub async fn load<K: KubeAuthApi>(
    kube: &K,
) -> Result<(Option<RequestHeaderConfig>, Option<ClientCa>), AuthConfigError> {
    let data = kube
        .authentication_config_map()
        .await
        .map_err(AuthConfigError::Fetch)?
        .ok_or(AuthConfigError::Missing)?;
    from_config_map(&data)
}

fn strings(
    data: &BTreeMap<String, String>,
    key: &'static str,
    default: &[&str],
) -> Result<Vec<String>, AuthConfigError> {
    match data.get(key).filter(|v| !v.is_empty()) {
        None => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
        Some(json) => serde_json::from_str::<Option<Vec<String>>>(json)
            .map(Option::unwrap_or_default)
            .map_err(|source| AuthConfigError::Json { key, source }),
    }
}

fn ca(
    data: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Option<ClientCa>, AuthConfigError> {
    match data.get(key).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(pem) => ClientCa::from_pem(
            pem.as_bytes(),
            &format!("configmap {CONFIG_MAP_NAMESPACE}/{CONFIG_MAP_NAME} key {key}"),
        )
        .map(Some)
        .map_err(AuthConfigError::Ca),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::kube_api::FakeKube;

    const FRONT_PROXY_CA: &str = include_str!("testdata/front-proxy-ca.pem");
    const CLIENT_CA: &str = include_str!("testdata/client-ca.pem");

    /// The ConfigMap as kube-apiserver 1.31+ writes it on a kubeadm cluster (see
    /// `getConfigMapDataFor` in `pkg/controlplane/controller/clusterauthenticationtrust`):
    /// every header key, `requestheader-uid-headers` as `[]` when not configured.
    fn kubeadm() -> BTreeMap<String, String> {
        BTreeMap::from([
            (CLIENT_CA_KEY.into(), CLIENT_CA.into()),
            (ALLOWED_NAMES_KEY.into(), r#"["front-proxy-client"]"#.into()),
            (REQUESTHEADER_CA_KEY.into(), FRONT_PROXY_CA.into()),
            (EXTRA_PREFIXES_KEY.into(), r#"["X-Remote-Extra-"]"#.into()),
            (GROUP_HEADERS_KEY.into(), r#"["X-Remote-Group"]"#.into()),
            (UID_HEADERS_KEY.into(), "[]".into()),
            (USERNAME_HEADERS_KEY.into(), r#"["X-Remote-User"]"#.into()),
        ])
    }

    #[test]
    fn kubeadm_config_map() {
        let (rh, client_ca) = from_config_map(&kubeadm()).unwrap();
        let rh = rh.expect("front-proxy CA present");
        assert_eq!(rh.allowed_names, ["front-proxy-client"]);
        assert_eq!(rh.username_headers, ["X-Remote-User"]);
        assert_eq!(rh.group_headers, ["X-Remote-Group"]);
        assert_eq!(rh.extra_prefixes, ["X-Remote-Extra-"]);
        assert!(rh.uid_headers.is_empty());
        assert!(client_ca.is_some());
    }

    #[test]
    fn uid_headers_and_several_names() {
        let mut data = kubeadm();
        data.insert(UID_HEADERS_KEY.into(), r#"["X-Remote-Uid"]"#.into());
        data.insert(
            ALLOWED_NAMES_KEY.into(),
            r#"["aggregator", "front-proxy-client"]"#.into(),
        );
        let (rh, _) = from_config_map(&data).unwrap();
        let rh = rh.unwrap();
        assert_eq!(rh.uid_headers, ["X-Remote-Uid"]);
        assert_eq!(rh.allowed_names, ["aggregator", "front-proxy-client"]);
    }

    #[test]
    fn missing_keys_take_kubernetes_defaults() {
        let data = BTreeMap::from([(REQUESTHEADER_CA_KEY.to_owned(), FRONT_PROXY_CA.to_owned())]);
        let (rh, client_ca) = from_config_map(&data).unwrap();
        let rh = rh.unwrap();
        assert!(rh.allowed_names.is_empty());
        assert_eq!(rh.username_headers, ["X-Remote-User"]);
        assert_eq!(rh.group_headers, ["X-Remote-Group"]);
        assert_eq!(rh.extra_prefixes, ["X-Remote-Extra-"]);
        assert!(rh.uid_headers.is_empty());
        assert!(client_ca.is_none());
        // Explicit empty lists stay empty; `null` is an empty list too.
        let mut data = data;
        data.insert(USERNAME_HEADERS_KEY.into(), "[]".into());
        data.insert(GROUP_HEADERS_KEY.into(), "null".into());
        let rh = from_config_map(&data).unwrap().0.unwrap();
        assert!(rh.username_headers.is_empty());
        assert!(rh.group_headers.is_empty());
    }

    #[test]
    fn only_a_client_ca() {
        let data = BTreeMap::from([(CLIENT_CA_KEY.to_owned(), CLIENT_CA.to_owned())]);
        let (rh, client_ca) = from_config_map(&data).unwrap();
        assert!(rh.is_none());
        assert!(client_ca.is_some());
        assert!(matches!(
            from_config_map(&BTreeMap::new()),
            Ok((None, None))
        ));
    }

    #[test]
    fn malformed_values_name_their_key() {
        for (key, value, message) in [
            (
                ALLOWED_NAMES_KEY,
                "front-proxy-client",
                "configmap kube-system/extension-apiserver-authentication key \
                 requestheader-allowed-names: not a JSON array of strings",
            ),
            (
                GROUP_HEADERS_KEY,
                r#"{"a": 1}"#,
                "configmap kube-system/extension-apiserver-authentication key \
                 requestheader-group-headers: not a JSON array of strings",
            ),
            (
                REQUESTHEADER_CA_KEY,
                "not pem",
                "configmap kube-system/extension-apiserver-authentication key \
                 requestheader-client-ca-file: no CA certificate found",
            ),
            (
                CLIENT_CA_KEY,
                "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
                "configmap kube-system/extension-apiserver-authentication key client-ca-file: \
                 malformed CA certificate",
            ),
        ] {
            let mut data = kubeadm();
            data.insert(key.into(), value.into());
            let err = from_config_map(&data).unwrap_err();
            assert_eq!(err.to_string(), message, "{key}");
        }
    }

    #[tokio::test]
    async fn load_reads_through_kube() {
        let kube = FakeKube::new();
        assert!(matches!(load(&kube).await, Err(AuthConfigError::Missing)));
        kube.set_config_map(Some(kubeadm()));
        assert!(matches!(load(&kube).await, Ok((Some(_), Some(_)))));
        kube.fail_config_map(Some(KubeError::Timeout {
            after: std::time::Duration::from_secs(5),
        }));
        assert!(matches!(load(&kube).await, Err(AuthConfigError::Fetch(_))));
    }
}
