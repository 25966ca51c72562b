//! Rules: prometheus-adapter config (YAML) and `[adapter]` rules (TOML) compiled into one model.

pub mod template;
