//! Builds arti's configurations: the client's (arti's defaults, then the optional arti TOML
//! file, e.g. a private Tor network's authorities, then our storage folders) and the onion
//! service's (nickname, proof-of-work, the introduction rate limit sent to the introduction
//! points, streams per rendezvous circuit).

use std::path::PathBuf;

use arti_client::config::onion_service::OnionServiceConfigBuilder;
use arti_client::config::{CfgPath, TorClientConfigBuilder};
use arti_client::TorClientConfig;
use tor_hsservice::config::TokenBucketConfig;
use tor_hsservice::{HsNickname, OnionServiceConfig};

use crate::transport::OnionError;

/// Where arti keeps its files, what extra configuration to apply, and the onion service's
/// defences.
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
    /// The service's defences against floods.
    pub defences: Defences,
}

/// What the onion service does against a flood of introductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defences {
    /// Proof-of-work (proposal 327): under load, clients that solved a bigger puzzle are
    /// served first. Our own client always solves the puzzles of peers that ask for them.
    pub pow: bool,
    /// Introductions per second each introduction point lets through (sent to it as DoS
    /// parameters); 0 sends none (the introduction point then follows the consensus).
    pub intro_rate: u32,
    /// Introductions an introduction point lets through in one burst.
    pub intro_burst: u32,
    /// Streams one rendezvous circuit may have open at once; past it arti closes the
    /// circuit (C tor's HiddenServiceMaxStreams with HiddenServiceMaxStreamsCloseCircuit).
    pub max_streams_per_circuit: u32,
}

impl Default for Defences {
    fn default() -> Self {
        Defences {
            pow: true,
            intro_rate: 25,
            intro_burst: 200,
            max_streams_per_circuit: 8,
        }
    }
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

/// arti's configuration of our onion service: its nickname and [`Defences`].
pub fn service_config(settings: &OnionSettings) -> Result<OnionServiceConfig, OnionError> {
    let nickname = HsNickname::new(settings.nickname.clone())
        .map_err(|e| OnionError::Config(format!("onion service nickname: {e}")))?;
    let d = settings.defences;
    let rate_limit =
        (d.intro_rate > 0).then(|| TokenBucketConfig::new(d.intro_rate, d.intro_burst));
    OnionServiceConfigBuilder::default()
        .nickname(nickname)
        .enable_pow(d.pow)
        .rate_limit_at_intro(rate_limit)
        .max_concurrent_streams_per_circuit(d.max_streams_per_circuit)
        .build()
        .map_err(|e| OnionError::Config(format!("onion service: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(defences: Defences) -> OnionSettings {
        OnionSettings {
            state_dir: "/nonexistent/state".into(),
            cache_dir: "/nonexistent/cache".into(),
            arti_config: None,
            nickname: "smtorp".into(),
            connect_timeout: std::time::Duration::from_secs(30),
            defences,
        }
    }

    #[test]
    fn the_defences_reach_arti() {
        let config = service_config(&settings(Defences::default())).unwrap();
        assert!(*config.enable_pow());
        assert_eq!(
            config.rate_limit_at_intro(),
            &Some(TokenBucketConfig::new(25, 200))
        );
        assert_eq!(*config.max_concurrent_streams_per_circuit(), 8);
    }

    #[test]
    fn no_rate_limit_and_no_pow_when_asked() {
        let config = service_config(&settings(Defences {
            pow: false,
            intro_rate: 0,
            intro_burst: 0,
            max_streams_per_circuit: 4,
        }))
        .unwrap();
        assert!(!*config.enable_pow());
        assert_eq!(config.rate_limit_at_intro(), &None);
        assert_eq!(*config.max_concurrent_streams_per_circuit(), 4);
    }

    #[test]
    fn an_out_of_range_rate_is_refused_by_arti() {
        let e = service_config(&settings(Defences {
            intro_rate: u32::MAX,
            intro_burst: u32::MAX,
            ..Defences::default()
        }))
        .unwrap_err();
        assert!(e.to_string().contains("rate_limit_at_intro"), "{e}");
    }
}
