//! Builds arti's client configuration: arti's defaults, then the optional arti TOML file
//! (e.g. a private Tor network's authorities), then our storage folders.

use std::path::PathBuf;

use arti_client::config::{CfgPath, TorClientConfigBuilder};
use arti_client::TorClientConfig;

use crate::transport::OnionError;

/// Where arti keeps its files, and what extra configuration to apply.
#[derive(Debug, Clone)]
pub struct OnionSettings {
    /// arti's state (guards, onion service keys in `keystore/`): must persist.
    pub state_dir: PathBuf,
    /// arti's cache (directory documents): may be deleted.
    pub cache_dir: PathBuf,
    /// An arti TOML file applied on top of the defaults, if any.
    pub arti_config: Option<PathBuf>,
    /// The onion service's nickname in arti's keystore.
    pub nickname: String,
    /// Longest wait for an outbound onion connection.
    pub connect_timeout: std::time::Duration,
}

/// The arti client configuration for these settings.
pub fn client_config(settings: &OnionSettings) -> Result<TorClientConfig, OnionError> {
    let mut builder = match &settings.arti_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                OnionError::Config(format!("cannot read arti config {}: {e}", path.display()))
            })?;
            toml::from_str::<TorClientConfigBuilder>(&text)
                .map_err(|e| OnionError::Config(format!("arti config {}: {e}", path.display())))?
        }
        None => TorClientConfigBuilder::default(),
    };
    builder
        .storage()
        .state_dir(CfgPath::new_literal(settings.state_dir.clone()))
        .cache_dir(CfgPath::new_literal(settings.cache_dir.clone()));
    builder
        .build()
        .map_err(|e| OnionError::Config(format!("arti configuration: {e}")))
}
