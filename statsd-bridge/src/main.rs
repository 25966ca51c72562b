//! The `statsd-bridge` binary: flags and config in, [`statsd_bridge::run`] out.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use statsd_bridge::cli::{Cli, Command};
use statsd_bridge::config::{BridgeConfig, Config};

/// Config or usage error (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;

/// The config from the file (or defaults) with flags applied, and the flags ignored here.
fn load(cli: &Cli, file: Option<&Path>) -> Result<(Config, Vec<&'static str>), String> {
    let (mut bridge, src, path) = match file {
        Some(path) => {
            let cfg = Config::load(path).map_err(|e| e.to_string())?;
            let src = std::fs::read_to_string(path).unwrap_or_default();
            (cfg.bridge, src, path.to_path_buf())
        }
        None => (
            BridgeConfig::default(),
            String::new(),
            PathBuf::from("<defaults>"),
        ),
    };
    let ignored = cli.apply(&mut bridge)?;
    let mut cfg = Config::validate(bridge, &src, &path).map_err(|e| e.to_string())?;
    cfg.path = file.map(Path::to_path_buf);
    cfg.mapping_override = cli.mapping_config.as_ref().map(|p| p.display().to_string());
    Ok((cfg, ignored))
}

fn write_ready_file(path: &Path, body: &serde_json::Value) -> std::io::Result<()> {
    common::files::write_atomically(path, body.to_string().as_bytes(), 0o644)
}

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("statsd-bridge: {e}");
    ExitCode::from(EX_USAGE)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Some(Command::Explain { lines }) => {
            let cfg = match load(&cli, cli.config.as_deref()) {
                Ok((cfg, _)) => cfg,
                Err(e) => return usage_error(e),
            };
            let input: Box<dyn Iterator<Item = String>> = if lines.is_empty() {
                Box::new(std::io::stdin().lock().lines().map_while(Result::ok))
            } else {
                Box::new(lines.clone().into_iter())
            };
            return match statsd_bridge::explain::explain(&cfg, input, &mut std::io::stdout().lock())
            {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => usage_error(e),
            };
        }
        None => {}
    }
    let (cfg, ignored) = match load(&cli, cli.config.as_deref()) {
        Ok(_) if cli.check_only() => {
            println!("config ok");
            return ExitCode::SUCCESS;
        }
        Ok(loaded) => loaded,
        Err(e) => return usage_error(e),
    };
    let directives = common::telemetry::directives_for_level(
        cfg.bridge.log_level.get_ref(),
        &["statsd_bridge", "common"],
    );
    if let Err(e) = directives.and_then(|d| common::telemetry::init(&d, cfg.bridge.log_format)) {
        return usage_error(e);
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = ?cli.config, "Starting statsd-bridge.");
    for flag in ignored {
        tracing::warn!(
            flag,
            "Accepted a statsd_exporter flag that has no effect here."
        );
    }
    if let Some(path) = cli.dump_fsm.as_deref().filter(|p| !p.is_empty()) {
        let dot = statsd_bridge::mapping::Mapper::compile(&cfg.mapping).map(|m| m.glob_dot());
        if let Err(e) = dot
            .map_err(|e| e.to_string())
            .and_then(|d| std::fs::write(path, d).map_err(|e| e.to_string()))
        {
            tracing::error!(path, error = %e, "Cannot write the mapping FSM dump.");
        }
    }
    let origin = match cfg.origin(|k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "Origin detection cannot start.");
            return usage_error(e);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the async runtime.");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listeners = statsd_bridge::Listeners::bind(&cfg)?;
        if let Some(path) = &cli.ready_file
            && let Err(e) = write_ready_file(path, &listeners.describe())
        {
            tracing::error!(path = %path.display(), error = %e, "Cannot write the ready file.");
        }
        statsd_bridge::run(cfg, origin, listeners, common::shutdown::signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, cause = ?std::error::Error::source(&e).map(ToString::to_string), "statsd-bridge failed.");
            ExitCode::FAILURE
        }
    }
}
