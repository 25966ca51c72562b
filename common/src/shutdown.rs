//! The one place that listens for termination signals.

/// Resolves when the process receives SIGTERM or SIGINT.
///
/// If a handler can't be installed the signal is treated as never arriving, and the failure
/// is logged: the process keeps serving rather than exiting at once.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot install the SIGTERM handler.");
                std::future::pending::<()>().await;
            }
        }
    };
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "Cannot install the SIGINT handler.");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => tracing::info!("Received SIGTERM."),
        () = int => tracing::info!("Received SIGINT."),
    }
}
