//! The configuration file (`smtorp.toml`): its structure, defaults, loading and checks.
//!
//! Every key has a default that works, so a missing file means "all defaults". The names
//! here are a contract with the shipped `config/smtorp.toml`, the tests and the docs.

pub(crate) mod layout;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Where the configuration is read from when `--config` is not given and `$SMTORP_CONFIG`
/// is not set.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/smtorp/smtorp.toml";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Queue, maildrop, arti state and onion keys live here.
    pub(crate) data_dir: PathBuf,
    /// The onion service.
    pub(crate) onion: OnionConfig,
    /// The onion-side SMTP server (and extra TCP listeners with the same rules).
    pub(crate) smtp: SmtpConfig,
    /// The submission port for mail clients.
    pub(crate) submission: SubmissionConfig,
    /// Local domains, users, aliases and Maildirs.
    pub(crate) local: LocalConfig,
    /// The delivery scheduler.
    pub(crate) delivery: DeliveryConfig,
    /// What submitted mail loses or gains.
    pub(crate) privacy: PrivacyConfig,
    /// Logging.
    pub(crate) log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/smtorp"),
            onion: OnionConfig::default(),
            smtp: SmtpConfig::default(),
            submission: SubmissionConfig::default(),
            local: LocalConfig::default(),
            delivery: DeliveryConfig::default(),
            privacy: PrivacyConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// `[onion]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct OnionConfig {
    /// Publish port 25 as an onion service through arti.
    pub(crate) enabled: bool,
    /// An optional arti TOML file applied on top of the defaults (e.g. a private network).
    pub(crate) arti_config: String,
    /// Longest wait for an outbound connection to another onion service.
    #[serde(with = "humantime_serde")]
    pub(crate) connect_timeout: Duration,
    /// A C tor `hs_ed25519_secret_key` (or the imported key) to sign our mail with when the
    /// onion service is run by C tor (`enabled = false`); empty: none.
    pub(crate) key_file: String,
    /// Proof-of-work defence of our service (clients that solved a bigger puzzle first).
    pub(crate) pow: bool,
    /// Introductions per second each introduction point passes on (0: none sent).
    pub(crate) intro_rate: u32,
    /// Introductions an introduction point passes on in one burst.
    pub(crate) intro_burst: u32,
    /// Streams one rendezvous circuit may open at once; past it, the circuit is closed.
    pub(crate) max_streams_per_circuit: u32,
    /// How often the daemon connects to its own onion address (with random jitter).
    #[serde(with = "humantime_serde")]
    pub(crate) probe_interval: Duration,
    /// How long one self-probe may take.
    #[serde(with = "humantime_serde")]
    pub(crate) probe_timeout: Duration,
    /// Failed self-probes in a row before a repair (and before `status` says "down").
    pub(crate) probe_failures: u32,
}

impl Default for OnionConfig {
    fn default() -> Self {
        let defences = smtorp_onion::Defences::default();
        OnionConfig {
            enabled: true,
            arti_config: String::new(),
            connect_timeout: Duration::from_secs(120),
            key_file: String::new(),
            pow: defences.pow,
            intro_rate: defences.intro_rate,
            intro_burst: defences.intro_burst,
            max_streams_per_circuit: defences.max_streams_per_circuit,
            probe_interval: Duration::from_secs(600),
            probe_timeout: Duration::from_secs(120),
            probe_failures: 3,
        }
    }
}

/// `[smtp]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SmtpConfig {
    /// Extra plain TCP listeners with exactly the onion-side rules.
    pub(crate) listen: Vec<String>,
    /// Largest message in bytes (announced with SIZE).
    pub(crate) max_message_size: usize,
    /// Most recipients per message.
    pub(crate) max_recipients: usize,
    /// Most concurrent sessions per listener; more wait in line or get 421.
    pub(crate) max_sessions: usize,
    /// How long a newcomer that finds every session busy waits for a place (0: 421 at once).
    #[serde(with = "humantime_serde")]
    pub(crate) wait_for_session: Duration,
    /// Error replies allowed per session before it is closed.
    pub(crate) max_errors: usize,
    /// Idle time allowed while waiting for a command.
    #[serde(with = "humantime_serde")]
    pub(crate) command_timeout: Duration,
    /// Idle time allowed while reading DATA.
    #[serde(with = "humantime_serde")]
    pub(crate) data_timeout: Duration,
    /// `command_timeout` once three quarters of a listener's sessions are taken.
    #[serde(with = "humantime_serde")]
    pub(crate) stress_command_timeout: Duration,
    /// `data_timeout` under stress.
    #[serde(with = "humantime_serde")]
    pub(crate) stress_data_timeout: Duration,
    /// Lowest average rate of message text, bytes per second, after 30 s of DATA (0: none).
    pub(crate) min_data_rate: u64,
    /// Free space (bytes) the queue's disk keeps: below it (plus SIZE=), new mail gets 452.
    pub(crate) min_free_space: u64,
    /// XONIONAUTH sender authentication on the onion side (docs/sender-auth.md).
    pub(crate) sender_auth: SenderAuth,
}

/// `[smtp] sender_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SenderAuth {
    /// Not offered, nothing checked, no header.
    Off,
    /// Offered and checked; forgeries of our domains and of known peers refused.
    Verify,
    /// Every transaction must come from an authenticated session.
    Require,
}

/// `[delivery] route_auth`: when our client authenticates over a static route (plain TCP
/// authenticates no server, so a route can be a signing oracle: docs/sender-auth.md 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RouteAuth {
    /// Only to a loopback address on a privileged port (where only root can listen).
    Privileged,
    /// Over every route.
    Always,
    /// Never over a route.
    Never,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: Vec::new(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_sessions: 100,
            wait_for_session: Duration::from_secs(60),
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            stress_command_timeout: Duration::from_secs(10),
            stress_data_timeout: Duration::from_secs(30),
            min_data_rate: 1024,
            min_free_space: 64 * 1024 * 1024,
            sender_auth: SenderAuth::Verify,
        }
    }
}

/// `[submission]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SubmissionConfig {
    /// Submission listeners (STARTTLS + AUTH).
    pub(crate) listen: Vec<String>,
    /// PEM certificate; empty: the self-signed one made by `smtorp init`.
    pub(crate) tls_cert: String,
    /// PEM private key; empty: the one made by `smtorp init`.
    pub(crate) tls_key: String,
}

impl Default for SubmissionConfig {
    fn default() -> Self {
        SubmissionConfig {
            listen: vec!["127.0.0.1:587".into()],
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

/// `[local]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LocalConfig {
    /// Domains accepted as ours besides our own onion address.
    pub(crate) domains: Vec<String>,
    /// Local users; postmaster is always accepted.
    pub(crate) users: Vec<String>,
    /// Aliases: local part -> local user.
    pub(crate) aliases: BTreeMap<String, String>,
    /// Maildir of each user; `{data_dir}` and `{user}` are replaced.
    pub(crate) maildir: String,
    /// System users who may submit with any envelope sender through `sendmail` (besides
    /// root and the daemon's own user); everyone else sends as themselves.
    pub(crate) trusted_submitters: Vec<String>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            domains: Vec::new(),
            users: Vec::new(),
            aliases: BTreeMap::new(),
            maildir: "{data_dir}/mail/{user}".into(),
            trusted_submitters: Vec::new(),
        }
    }
}

/// `[delivery]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DeliveryConfig {
    /// Static routes: onion domain -> HOST:PORT over plain TCP.
    pub(crate) routes: BTreeMap<String, String>,
    /// Waits between attempts; the last one repeats.
    pub(crate) retry_after: Vec<humantime_serde::Serde<Duration>>,
    /// After this long a message still not delivered fails.
    #[serde(with = "humantime_serde")]
    pub(crate) max_lifetime: Duration,
    /// Deliveries at once.
    pub(crate) concurrency: usize,
    /// When to authenticate (XONIONAUTH) over a static route.
    pub(crate) route_auth: RouteAuth,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            routes: BTreeMap::new(),
            retry_after: [1, 2, 5, 10, 30, 60, 120, 240]
                .iter()
                .map(|m| Duration::from_secs(m * 60).into())
                .collect(),
            max_lifetime: Duration::from_secs(5 * 86400),
            concurrency: 8,
            route_auth: RouteAuth::Privileged,
        }
    }
}

/// `[privacy]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PrivacyConfig {
    /// Add `Date` (UTC) to submitted mail that lacks one.
    pub(crate) add_date: bool,
    /// Add `Message-ID <random@our domain>` to submitted mail that lacks one.
    pub(crate) add_message_id: bool,
    /// Rewrite a `Date` in a local time zone to the same instant in UTC (`+0000`).
    pub(crate) rewrite_date_to_utc: bool,
    /// Header fields removed from submitted mail (names, case-insensitive).
    pub(crate) strip_headers: Vec<String>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            add_date: true,
            add_message_id: true,
            rewrite_date_to_utc: true,
            strip_headers: ["User-Agent", "X-Mailer", "X-Originating-IP", "Received"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace` (or a tracing filter); `RUST_LOG` overrides.
    pub(crate) level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// The configuration with its addresses parsed and checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The raw configuration.
    pub(crate) config: Config,
    /// `[smtp] listen`, parsed.
    pub(crate) smtp_listen: Vec<SocketAddr>,
    /// `[delivery] retry_after`.
    pub(crate) retry_after: Vec<Duration>,
    /// `[delivery] routes`, parsed.
    pub(crate) routes: BTreeMap<String, SocketAddr>,
}

impl Settings {
    /// Where the queue's sled store lives.
    pub(crate) fn queue_dir(&self) -> PathBuf {
        self.config.data_dir.join("queue")
    }

    /// The maildrop folder `smtorp sendmail` writes into when the daemon does not run.
    pub(crate) fn maildrop_dir(&self) -> PathBuf {
        self.config.data_dir.join("maildrop")
    }

    /// Where maildrop files that cannot be queued are kept for the administrator.
    pub(crate) fn rejected_dir(&self) -> PathBuf {
        self.config.data_dir.join("rejected")
    }

    /// The socket `smtorp sendmail` hands messages to the running daemon through.
    pub(crate) fn submit_socket(&self) -> PathBuf {
        self.config.data_dir.join("submit.sock")
    }

    /// arti's state (onion service keys in `keystore/`): must be kept and backed up.
    pub(crate) fn arti_state_dir(&self) -> PathBuf {
        self.config.data_dir.join("arti").join("state")
    }

    /// arti's cache (Tor directory documents): may be deleted.
    pub(crate) fn arti_cache_dir(&self) -> PathBuf {
        self.config.data_dir.join("arti").join("cache")
    }

    /// The secret key of the known peers' hashes (docs/sender-auth.md).
    pub(crate) fn peers_key(&self) -> PathBuf {
        self.config.data_dir.join("peers.key")
    }

    /// The daemon's control socket.
    pub(crate) fn control_socket(&self) -> PathBuf {
        self.config.data_dir.join("control.sock")
    }

    /// The Maildir of a local user.
    pub(crate) fn maildir_of(&self, user: &str) -> PathBuf {
        PathBuf::from(
            self.config
                .local
                .maildir
                .replace("{data_dir}", &self.config.data_dir.to_string_lossy())
                .replace("{user}", user),
        )
    }

    /// Our domains, lower-cased: `[local] domains` (later our onion address too).
    pub(crate) fn local_domains(&self) -> Vec<String> {
        self.config
            .local
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect()
    }

    /// The name we use in the banner, EHLO, Received and Message-ID: the first local
    /// domain, or `localhost` when none is configured.
    pub(crate) fn primary_domain(&self) -> String {
        self.local_domains()
            .into_iter()
            .next()
            .unwrap_or_else(|| "localhost".into())
    }
}

/// Which file to read: `--config`, else `$SMTORP_CONFIG`, else the default path if it
/// exists, else none (all defaults).
pub(crate) fn resolve_path(cli: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = cli {
        return Some(path.to_path_buf());
    }
    if let Some(env) = std::env::var_os("SMTORP_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(env));
    }
    let default = PathBuf::from(DEFAULT_CONFIG_PATH);
    default.exists().then_some(default)
}

/// Reads, parses and checks the configuration.
pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
    let config = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read configuration {}", path.display()))?;
            parse(&text).with_context(|| format!("in configuration {}", path.display()))?
        }
        None => Config::default(),
    };
    check(config)
}

/// Parses configuration text (syntax and types; errors name the key and line).
pub(crate) fn parse(text: &str) -> anyhow::Result<Config> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
}

fn socket_addr(key: &str, text: &str) -> anyhow::Result<SocketAddr> {
    text.parse().map_err(|_| {
        anyhow::anyhow!("{key}: `{text}` is not an IP:PORT address (host names are not resolved)")
    })
}

/// A local user or alias name: what may become a folder name.
fn check_user_name(key: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if !ok || name.contains("..") {
        bail!("{key}: `{name}` is not a valid user name (letters, digits, . - _ +)");
    }
    Ok(())
}

/// The `[onion]` defences and the self-probe.
fn check_onion(onion: &OnionConfig) -> anyhow::Result<()> {
    let own = crate::daemon::SESSIONS_PER_DESTINATION;
    if (onion.max_streams_per_circuit as usize) < own {
        bail!(
            "onion.max_streams_per_circuit: must be at least {own}, the sessions smtorp itself \
             opens to one peer on one circuit (arti closes the whole circuit past the limit)"
        );
    }
    if onion.intro_rate == 0 && onion.intro_burst != 0 {
        bail!("onion.intro_burst: needs onion.intro_rate (0 sends no limit at all)");
    }
    if onion.intro_rate > 0 && onion.intro_burst < onion.intro_rate {
        bail!("onion.intro_burst: must be at least onion.intro_rate");
    }
    // The DoS parameters of the introduction protocol are 31-bit numbers.
    if onion.intro_burst > i32::MAX as u32 {
        bail!("onion.intro_burst: at most {}", i32::MAX);
    }
    if onion.probe_interval < Duration::from_secs(1) {
        bail!("onion.probe_interval: at least 1 s");
    }
    if onion.probe_timeout < Duration::from_secs(1) {
        bail!("onion.probe_timeout: at least 1 s");
    }
    if onion.probe_failures == 0 {
        bail!("onion.probe_failures: at least 1");
    }
    Ok(())
}

/// Semantic checks on a parsed configuration; errors name the key.
pub(crate) fn check(config: Config) -> anyhow::Result<Settings> {
    if config.delivery.retry_after.is_empty() {
        bail!("delivery.retry_after: needs at least one duration");
    }
    let retry_after: Vec<Duration> = config.delivery.retry_after.iter().map(|t| **t).collect();
    let smtp_listen = config
        .smtp
        .listen
        .iter()
        .map(|a| socket_addr("smtp.listen", a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for a in &config.submission.listen {
        socket_addr("submission.listen", a)?;
    }
    let mut routes = BTreeMap::new();
    for (domain, target) in &config.delivery.routes {
        let domain = domain.to_ascii_lowercase();
        if !domain.ends_with(".onion") {
            bail!("delivery.routes: `{domain}` is not an onion domain (smtorp routes only onion mail)");
        }
        routes.insert(domain, socket_addr("delivery.routes", target)?);
    }
    if config.delivery.concurrency == 0 {
        bail!("delivery.concurrency: must be at least 1");
    }
    if config.smtp.max_sessions == 0 {
        bail!("smtp.max_sessions: must be at least 1");
    }
    if config.smtp.max_recipients == 0 {
        bail!("smtp.max_recipients: must be at least 1");
    }
    if config.smtp.max_message_size < 1024 {
        bail!("smtp.max_message_size: must be at least 1024 bytes");
    }
    for user in &config.local.users {
        check_user_name("local.users", user)?;
    }
    for user in &config.local.trusted_submitters {
        check_user_name("local.trusted_submitters", user)?;
    }
    for (alias, target) in &config.local.aliases {
        check_user_name("local.aliases", alias)?;
        if !config.local.users.contains(target) {
            bail!("local.aliases: `{alias}` points at `{target}`, which is not in local.users");
        }
    }
    for domain in &config.local.domains {
        let ok = !domain.is_empty()
            && domain
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !ok {
            bail!("local.domains: `{domain}` is not a domain name");
        }
    }
    if !config.local.maildir.contains("{user}") {
        bail!("local.maildir: must contain {{user}}");
    }
    check_onion(&config.onion)?;
    if config.data_dir.as_os_str().is_empty() {
        bail!("data_dir: must not be empty");
    }
    Ok(Settings {
        config,
        smtp_listen,
        retry_after,
        routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = check(Config::default()).unwrap();
        assert_eq!(s.retry_after.len(), 8);
        assert_eq!(
            s.config.delivery.max_lifetime,
            Duration::from_secs(5 * 86400)
        );
        assert_eq!(s.config.smtp.command_timeout, Duration::from_secs(300));
    }

    #[test]
    fn shipped_config_parses_to_the_defaults() {
        let text = include_str!("../../../../config/smtorp.toml");
        let shipped = check(parse(text).unwrap()).unwrap();
        let default = check(Config::default()).unwrap();
        assert_eq!(
            format!("{:?}", shipped.config),
            format!("{:?}", default.config)
        );
    }

    /// Every key the program knows is written out (with its default) in the shipped file.
    #[test]
    fn shipped_config_documents_every_key() {
        fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
            if let toml::Value::Table(table) = value {
                for (k, v) in table {
                    let name = format!("{prefix}{k}");
                    out.push(name.clone());
                    if matches!(v, toml::Value::Table(_))
                        && !["aliases", "routes"].contains(&k.as_str())
                    {
                        keys(v, &format!("{name}."), out);
                    }
                }
            }
        }
        let known = toml::Value::try_from(Config::default()).unwrap();
        let shipped: toml::Value =
            toml::from_str(include_str!("../../../../config/smtorp.toml")).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        keys(&known, "", &mut a);
        keys(&shipped, "", &mut b);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn durations_are_read_as_humans_write_them() {
        let c = parse("[smtp]\ncommand_timeout = \"30s\"\n[delivery]\nretry_after = [\"5m\", \"2h\"]\nmax_lifetime = \"5d\"\n").unwrap();
        assert_eq!(c.smtp.command_timeout, Duration::from_secs(30));
        assert_eq!(c.delivery.max_lifetime, Duration::from_secs(432_000));
        let s = check(c).unwrap();
        assert_eq!(
            s.retry_after,
            vec![Duration::from_secs(300), Duration::from_secs(7200)]
        );
        let e = parse("[smtp]\ncommand_timeout = \"5x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("command_timeout"), "{e}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("data_dir = \"/x\"\n[smtp]\nmax_mesage_size = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_mesage_size"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        // A bad duration is refused at parse time, with the key and its line.
        let e = parse("[delivery]\nmax_lifetime = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_lifetime") && e.contains("line 2"), "{e}");
        let c = parse("[delivery]\nroutes = { \"example.com\" = \"127.0.0.1:25\" }\n").unwrap();
        assert!(check(c)
            .unwrap_err()
            .to_string()
            .contains("delivery.routes"));
        let c = parse("[local]\nusers = [\"../root\"]\n").unwrap();
        assert!(check(c).unwrap_err().to_string().contains("local.users"));
        let c = parse("[local]\nusers = [\"a\"]\naliases = { b = \"c\" }\n").unwrap();
        assert!(check(c).unwrap_err().to_string().contains("local.aliases"));
        let c = parse("[smtp]\nlisten = [\"localhost:25\"]\n").unwrap();
        assert!(check(c).unwrap_err().to_string().contains("smtp.listen"));
    }

    #[test]
    fn the_onion_keys_reach_arti_s_service_configuration() {
        let c = parse(
            "[onion]\npow = false\nintro_rate = 5\nintro_burst = 50\nmax_streams_per_circuit = 6\n",
        )
        .unwrap();
        let s = check(c).unwrap();
        let service = smtorp_onion::service_config(&crate::onion::onion_settings(&s)).unwrap();
        assert!(!*service.enable_pow());
        assert_eq!(
            format!("{:?}", service.rate_limit_at_intro()),
            "Some(TokenBucketConfig { rate: 5, burst: 50 })"
        );
        assert_eq!(*service.max_concurrent_streams_per_circuit(), 6);
        // The defaults: proof-of-work on, a limit at the introduction points, 8 streams.
        let s = check(Config::default()).unwrap();
        let service = smtorp_onion::service_config(&crate::onion::onion_settings(&s)).unwrap();
        assert!(*service.enable_pow());
        assert_eq!(
            format!("{:?}", service.rate_limit_at_intro()),
            "Some(TokenBucketConfig { rate: 25, burst: 200 })"
        );
        assert_eq!(*service.max_concurrent_streams_per_circuit(), 8);
    }

    #[test]
    fn onion_limits_are_checked() {
        let bad = |text: &str, key: &str| {
            let e = check(parse(text).unwrap()).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        };
        bad(
            "[onion]\nmax_streams_per_circuit = 3\n",
            "onion.max_streams_per_circuit",
        );
        bad(
            "[onion]\nintro_rate = 10\nintro_burst = 5\n",
            "onion.intro_burst",
        );
        bad(
            "[onion]\nintro_rate = 0\nintro_burst = 5\n",
            "onion.intro_burst",
        );
        bad("[onion]\nprobe_failures = 0\n", "onion.probe_failures");
        bad("[onion]\nprobe_interval = \"0s\"\n", "onion.probe_interval");
        // No limit at the introduction points at all is allowed.
        check(parse("[onion]\nintro_rate = 0\nintro_burst = 0\n").unwrap()).unwrap();
    }

    #[test]
    fn maildir_template() {
        let c = parse("data_dir = \"/srv/m\"\n[local]\nusers = [\"alice\"]\n").unwrap();
        let s = check(c).unwrap();
        assert_eq!(s.maildir_of("alice"), PathBuf::from("/srv/m/mail/alice"));
    }
}
