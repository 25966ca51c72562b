//! The `prom-adapter` binary: flags and config in, [`prom_adapter::run`] out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use prom_adapter::RunError;
use prom_adapter::cli::{Cli, Command, strip_ignored};
use prom_adapter::config::{AdapterConfig, Config, load_pipeline};

/// Config or usage error (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;

/// The config from `--config` (rules YAML, or pipeline.toml when it ends in `.toml`) with
/// the flags applied.
fn load(cli: &Cli, file: Option<&Path>) -> Result<Config, String> {
    let (mut adapter, src, path, base) = match file {
        Some(p) if p.extension().is_some_and(|e| e == "toml") => {
            let (adapter, src) = load_pipeline(p).map_err(|e| e.to_string())?;
            let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
            (adapter, src, p.to_path_buf(), base)
        }
        Some(p) => {
            let adapter = AdapterConfig {
                rules_file: toml::Spanned::new(0..0, p.display().to_string()),
                ..AdapterConfig::default()
            };
            (
                adapter,
                String::new(),
                PathBuf::from("<flags>"),
                PathBuf::new(),
            )
        }
        None => (
            AdapterConfig::default(),
            String::new(),
            PathBuf::from("<defaults>"),
            PathBuf::new(),
        ),
    };
    cli.apply(&mut adapter)?;
    Config::validate(adapter, &src, &path, &base).map_err(|e| e.to_string())
}

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("prom-adapter: {e}");
    ExitCode::from(EX_USAGE)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let mmap_threshold = common::malloc::keep_large_buffers_mapped();
    let (args, ignored) = strip_ignored(std::env::args().collect());
    let cli = Cli::parse_from(args);
    match &cli.command {
        Some(Command::CheckConfig { file }) => {
            let file = file
                .clone()
                .or_else(|| cli.config.clone())
                .unwrap_or_else(|| "pipeline.toml".into());
            return match load(&cli, Some(&file)) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => usage_error(e),
            };
        }
        Some(cmd @ Command::Render { .. }) => {
            let cfg = match load(&cli, cli.config.as_deref()) {
                Ok(cfg) => cfg,
                Err(e) => return usage_error(e),
            };
            let rendered = runtime()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(prom_adapter::render(cfg, cmd)));
            return match rendered {
                Ok(promql) => {
                    println!("{promql}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("prom-adapter: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Status { remote }) => {
            return ask(remote, "/status".into(), |body| {
                serde_json::from_slice::<prom_adapter::status::Report>(body)
                    .map(|r| prom_adapter::status::render(&r, &remote.url))
            });
        }
        Some(Command::Explain {
            metric,
            namespace,
            selector,
            resource,
            name,
            metric_selector,
            remote,
        }) => {
            let req = prom_adapter::status::ExplainRequest {
                metric: metric.clone(),
                namespace: namespace.clone(),
                selector: selector.clone(),
                resource: resource.clone(),
                name: name.clone(),
                metric_selector: metric_selector.clone(),
            };
            return ask(remote, format!("/explain?{}", req.to_query()), |body| {
                serde_json::from_slice::<prom_adapter::status::Explanation>(body)
                    .map(|e| prom_adapter::status::render_explanation(&e))
            });
        }
        None => {}
    }
    let cfg = match load(&cli, cli.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(e) => return usage_error(e),
    };
    let directives = common::telemetry::directives_for_level(
        cfg.adapter.log_level.get_ref(),
        &["prom_adapter", "common"],
    );
    if let Err(e) = directives.and_then(|d| common::telemetry::init(&d, cfg.adapter.log_format)) {
        return usage_error(e);
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = ?cli.config, rules = cfg.rules.custom.len(), external_rules = cfg.rules.external.len(), resource_rules = cfg.rules.resource.is_some(), backends = ?cfg.backends.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), "Starting prom-adapter.");
    tracing::debug!(?mmap_threshold, "glibc's mmap threshold.");
    for flag in ignored {
        tracing::warn!(
            flag,
            "Accepted a prometheus-adapter flag that has no effect here."
        );
    }
    for w in &cfg.warnings {
        tracing::warn!(warning = %w, "Config warning.");
    }
    let certs = match prom_adapter::serving_cert(&cfg.adapter) {
        Ok(certs) => certs,
        Err(e) => return usage_error(e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the async runtime.");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let prepared = prom_adapter::prepare(&cfg).await?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| RunError::Bind(format!("cannot listen on {}: {e}", cfg.listen)))?;
        let bound = listener
            .local_addr()
            .map_err(|e| RunError::Bind(e.to_string()))?;
        tracing::info!(address = %bound, "Serving HTTPS.");
        if let Some(path) = &cli.ready_file
            && let Err(e) =
                write_ready_file(path, &serde_json::json!({ "secure": bound.to_string() }))
        {
            tracing::error!(path = %path.display(), error = %e, "Cannot write the ready file.");
        }
        let reload_cli = cli.clone();
        let reloader: prom_adapter::Reloader =
            Arc::new(move || load(&reload_cli, reload_cli.config.as_deref()));
        prom_adapter::run(
            cfg,
            prepared,
            listener,
            Arc::clone(&certs),
            Some(reloader),
            common::shutdown::signal(),
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Config(usage)) => {
            tracing::error!(error = %usage, "prom-adapter cannot start.");
            usage_error(usage)
        }
        Err(e) => {
            tracing::error!(error = %e, "prom-adapter failed.");
            ExitCode::FAILURE
        }
    }
}

/// Runs a `status`/`explain` request and prints its answer: JSON with `--json`, else
/// `render`'s text. 1 when the adapter can't be asked or refuses.
fn ask(
    remote: &prom_adapter::cli::Remote,
    path_and_query: String,
    render: impl Fn(&[u8]) -> Result<String, serde_json::Error>,
) -> ExitCode {
    let answer = runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(prom_adapter::ask_adapter(remote, &path_and_query)));
    let printed = answer.and_then(|body| {
        if remote.json {
            Ok(String::from_utf8_lossy(&body).into_owned())
        } else {
            render(&body).map_err(|e| format!("cannot read the adapter's answer: {e}"))
        }
    });
    match printed {
        Ok(text) => {
            print!("{}", text.trim_end());
            println!();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("prom-adapter: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_ready_file(path: &Path, body: &serde_json::Value) -> std::io::Result<()> {
    common::files::write_atomically(path, body.to_string().as_bytes(), 0o644)
}
