//! kube-apiserver clients, shared by authentication (short calls) and the object cache
//! (long watches), which differ only in their timeouts.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A kubeconfig file could not be read or used.
    #[error("kubeconfig {}: {reason}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The error chain, flattened.
        reason: String,
    },
    /// The in-cluster configuration (service account token and CA) could not be loaded.
    #[error("in-cluster kubernetes configuration: {reason}")]
    InCluster {
        /// The error chain, flattened.
        reason: String,
    },
    /// The client could not be built from a configuration.
    #[error("kube-apiserver client: {reason}")]
    Client {
        /// The error chain, flattened.
        reason: String,
    },
}

/// An error and its sources on one line, without repeating a source the message already
/// contains (kube's errors often do).
pub fn flatten(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether this process runs in a pod (the in-cluster config applies).
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty())
}

/// The configuration in a kubeconfig file.
pub async fn from_kubeconfig(path: &Path) -> Result<kube::Config, ClientError> {
    let error = |reason: String| ClientError::Kubeconfig {
        path: path.to_owned(),
        reason,
    };
    let file = kube::config::Kubeconfig::read_from(path).map_err(|e| error(flatten(&e)))?;
    kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| error(flatten(&e)))
}

/// The in-cluster configuration.
pub fn incluster() -> Result<kube::Config, ClientError> {
    kube::Config::incluster().map_err(|e| ClientError::InCluster {
        reason: flatten(&e),
    })
}

/// The configuration to use: the kubeconfig file when given, else the in-cluster one in a
/// pod, else none.
pub async fn config(kubeconfig: Option<&Path>) -> Result<Option<kube::Config>, ClientError> {
    match kubeconfig {
        Some(path) => from_kubeconfig(path).await.map(Some),
        None if in_cluster() => incluster().map(Some),
        None => Ok(None),
    }
}

/// A client with these timeouts; the read timeout counts from each request, not from when a
/// pooled connection went idle.
pub fn build(
    mut config: kube::Config,
    connect: Duration,
    read: Duration,
    write: Option<Duration>,
) -> Result<kube::Client, ClientError> {
    config.connect_timeout = Some(connect);
    config.read_timeout = Some(read);
    if write.is_some() {
        config.write_timeout = write;
    }
    config.reset_reader_on_write = true;
    kube::Client::try_from(config).map_err(|e| ClientError::Client {
        reason: flatten(&e),
    })
}
