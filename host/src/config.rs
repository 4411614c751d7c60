//! Operator settings: environment variables, optionally a TOML file named by `STRONGROOM_CONFIG`.
//!
//! The environment wins over the file. Keys in the file are the variable names without the
//! `STRONGROOM_` prefix, in lower case (`listen`, `data_dir`, `database_url`, …).

use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything the server needs to start. Secrets are [`SecretString`]s: they never print.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on (`STRONGROOM_LISTEN`, default `127.0.0.1:8600`).
    pub listen: SocketAddr,
    /// Data directory (`STRONGROOM_DATA_DIR`, default `./strongroom-data`).
    pub data_dir: PathBuf,
    /// An existing database (`STRONGROOM_DATABASE_URL`); unset: the server runs its own PostgreSQL.
    pub database_url: Option<SecretString>,
    /// Master keys (`STRONGROOM_MASTER_KEYS`, `id:base64,…`); unset: a development key file.
    pub master_keys: Option<SecretString>,
    /// The bootstrap admin key (`STRONGROOM_ADMIN_KEY`); unset: generated on first start.
    pub admin_key: Option<SecretString>,
    /// Largest accepted request body in bytes (`STRONGROOM_MAX_BODY_BYTES`, default 8 MiB).
    pub max_body_bytes: usize,
    /// Database connections (`STRONGROOM_DB_POOL_SIZE`, default 16).
    pub db_pool_size: usize,
    /// How long a request waits for a database connection from the pool, and a new connection
    /// to open, before it is answered 503 `unavailable` (`STRONGROOM_DB_WAIT_TIMEOUT_MS`,
    /// default 10000).
    pub db_wait_timeout_ms: usize,
    /// How long one database statement may run, lock waits included, before PostgreSQL cancels
    /// it and the request is answered 503 `unavailable` (`STRONGROOM_STATEMENT_TIMEOUT_MS`,
    /// default 30000). Migrations and the deletes of a vault's data are not limited.
    pub statement_timeout_ms: usize,
    /// How long a request waits for its audit event to be stored before it is answered 503
    /// instead (`STRONGROOM_AUDIT_TIMEOUT_MS`, default 5000). A request is never answered
    /// unaudited; this bounds how long a stalled database holds every request.
    pub audit_timeout_ms: usize,
    /// How long a client may take to send a request's headers, and on a kept-alive connection
    /// to begin its next request, before the connection is closed
    /// (`STRONGROOM_HEADER_READ_TIMEOUT_MS`, default 10000). A client that trickles its
    /// headers cannot hold a connection, and the memory it pins, for ever.
    pub header_read_timeout_ms: usize,
    /// Lifts the card guardrail (`STRONGROOM_ALLOW_PLAINTEXT_CARDS=true`): service accounts may
    /// then receive plaintext card numbers where policies allow. Off by default; logged when on.
    pub allow_plaintext_cards: bool,
    /// Networks connections may reach although they are loopback, private or link-local
    /// (`STRONGROOM_EGRESS_ALLOW_NETWORKS`, e.g. `10.0.0.0/8,127.0.0.1/32`; default none).
    pub egress_allow_networks: String,
    /// Hosts connections may reach over plain http (`STRONGROOM_EGRESS_ALLOW_HTTP_HOSTS`,
    /// comma-separated; default none: https only).
    pub egress_allow_http_hosts: String,
    /// Proxies in front of the server, as networks (`STRONGROOM_TRUSTED_PROXIES`, e.g.
    /// `10.0.0.0/8`; default none). A request from one of them is the client's named in
    /// `X-Forwarded-For`: the nearest address there that is not itself a trusted proxy.
    pub trusted_proxies: String,
}

/// A setting that could not be used. Never includes a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file `{0}`: {1}")]
    File(String, std::io::Error),
    #[error("the config file `{0}` is not valid TOML: {1}")]
    Toml(String, String),
    #[error("`{0}` must be a string in the config file")]
    NotAString(String),
    #[error("unknown key `{0}` in the config file")]
    UnknownKey(String),
    #[error("STRONGROOM_LISTEN is not an address such as 127.0.0.1:8600")]
    Listen,
    #[error("{0} must be a positive whole number")]
    Number(&'static str),
    #[error("STRONGROOM_ADMIN_KEY must be at least 32 characters")]
    AdminKeyTooShort,
    #[error("{0} must be true or false")]
    Bool(&'static str),
}

const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "master_keys",
    "admin_key",
    "max_body_bytes",
    "db_pool_size",
    "audit_timeout_ms",
    "header_read_timeout_ms",
    "db_wait_timeout_ms",
    "statement_timeout_ms",
    "allow_plaintext_cards",
    "egress_allow_networks",
    "egress_allow_http_hosts",
    "trusted_proxies",
];

impl Settings {
    /// `db_wait_timeout_ms` as a duration.
    pub fn db_wait_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.db_wait_timeout_ms as u64)
    }

    /// `statement_timeout_ms` as a duration.
    pub fn statement_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.statement_timeout_ms as u64)
    }

    /// `audit_timeout_ms` as a duration.
    pub fn audit_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.audit_timeout_ms as u64)
    }

    /// `header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.header_read_timeout_ms.max(1) as u64)
    }

    /// Reads the process environment (and the file it may name).
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `env`, a stand-in for the environment (tests pass a map).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let file = match env("STRONGROOM_CONFIG") {
            Some(path) => read_file(&path)?,
            None => toml::Table::new(),
        };
        let get = |key: &str| -> Result<Option<String>, ConfigError> {
            if let Some(value) = env(&format!("STRONGROOM_{}", key.to_ascii_uppercase())) {
                return Ok(Some(value));
            }
            match file.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(toml::Value::Integer(i)) => Ok(Some(i.to_string())),
                Some(_) => Err(ConfigError::NotAString(key.to_string())),
            }
        };
        let listen = match get("listen")? {
            Some(s) => s.parse().map_err(|_| ConfigError::Listen)?,
            None => SocketAddr::from(([127, 0, 0, 1], 8600)),
        };
        let admin_key = get("admin_key")?.filter(|s| !s.is_empty());
        if admin_key.as_ref().is_some_and(|k| k.chars().count() < 32) {
            return Err(ConfigError::AdminKeyTooShort);
        }
        Ok(Settings {
            listen,
            data_dir: get("data_dir")?
                .filter(|s| !s.is_empty())
                .map_or_else(|| PathBuf::from("./strongroom-data"), PathBuf::from),
            database_url: get("database_url")?
                .filter(|s| !s.is_empty())
                .map(SecretString::from),
            master_keys: get("master_keys")?
                .filter(|s| !s.is_empty())
                .map(SecretString::from),
            admin_key: admin_key.map(SecretString::from),
            max_body_bytes: number(get("max_body_bytes")?, "STRONGROOM_MAX_BODY_BYTES", 8 << 20)?,
            db_pool_size: number(get("db_pool_size")?, "STRONGROOM_DB_POOL_SIZE", 16)?,
            db_wait_timeout_ms: number(
                get("db_wait_timeout_ms")?,
                "STRONGROOM_DB_WAIT_TIMEOUT_MS",
                10_000,
            )?,
            statement_timeout_ms: number(
                get("statement_timeout_ms")?,
                "STRONGROOM_STATEMENT_TIMEOUT_MS",
                30_000,
            )?,
            audit_timeout_ms: number(
                get("audit_timeout_ms")?,
                "STRONGROOM_AUDIT_TIMEOUT_MS",
                5000,
            )?,
            header_read_timeout_ms: number(
                get("header_read_timeout_ms")?,
                "STRONGROOM_HEADER_READ_TIMEOUT_MS",
                10_000,
            )?,
            allow_plaintext_cards: match get("allow_plaintext_cards")?.as_deref().map(str::trim) {
                None | Some("") | Some("false") => false,
                Some("true") => true,
                Some(_) => return Err(ConfigError::Bool("STRONGROOM_ALLOW_PLAINTEXT_CARDS")),
            },
            egress_allow_networks: get("egress_allow_networks")?.unwrap_or_default(),
            egress_allow_http_hosts: get("egress_allow_http_hosts")?.unwrap_or_default(),
            trusted_proxies: get("trusted_proxies")?.unwrap_or_default(),
        })
    }
}

fn number(value: Option<String>, name: &'static str, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(ConfigError::Number(name)),
    }
}

fn read_file(path: &str) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File(path.to_string(), e))?;
    // toml's messages quote the offending line, which could hold a secret: keep only the position.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| format!("at byte {}", s.start))
            .unwrap_or_default();
        ConfigError::Toml(path.to_string(), at)
    })?;
    if let Some(unknown) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(ConfigError::UnknownKey(unknown.clone()));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8600");
        assert_eq!(s.data_dir, PathBuf::from("./strongroom-data"));
        assert!(s.database_url.is_none() && s.master_keys.is_none() && s.admin_key.is_none());
        assert_eq!(s.audit_timeout_ms, 5000);
        assert_eq!(s.db_wait_timeout_ms, 10_000);
        assert_eq!(s.statement_timeout_ms, 30_000);
    }

    #[test]
    fn env_values_and_errors() {
        let s = settings(&[
            ("STRONGROOM_LISTEN", "0.0.0.0:9000"),
            ("STRONGROOM_ADMIN_KEY", "0123456789abcdef0123456789abcdef"),
        ])
        .unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.admin_key.unwrap().expose_secret().len(), 32);
        let s = settings(&[("STRONGROOM_AUDIT_TIMEOUT_MS", "250")]).unwrap();
        assert_eq!(s.audit_timeout_ms, 250);
        assert_eq!(s.audit_timeout(), std::time::Duration::from_millis(250));
        assert!(settings(&[("STRONGROOM_AUDIT_TIMEOUT_MS", "0")]).is_err());
        let s = settings(&[("STRONGROOM_STATEMENT_TIMEOUT_MS", "1500")]).unwrap();
        assert_eq!(
            s.statement_timeout(),
            std::time::Duration::from_millis(1500)
        );
        assert!(settings(&[("STRONGROOM_STATEMENT_TIMEOUT_MS", "0")]).is_err());
        assert!(matches!(
            settings(&[("STRONGROOM_LISTEN", "nope")]),
            Err(ConfigError::Listen)
        ));
        assert!(matches!(
            settings(&[("STRONGROOM_ADMIN_KEY", "short")]),
            Err(ConfigError::AdminKeyTooShort)
        ));
    }

    #[test]
    fn file_is_read_and_env_wins() {
        let dir = std::env::temp_dir().join(format!("sr-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("strongroom.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/x\"\n",
        )
        .unwrap();
        let p = path.to_string_lossy().to_string();
        let s = settings(&[("STRONGROOM_CONFIG", &p), ("STRONGROOM_DATA_DIR", "/tmp/y")]).unwrap();
        assert_eq!(s.listen.port(), 7000);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/y"));
        std::fs::write(&path, "lsten = \"x\"\n").unwrap();
        assert!(matches!(
            settings(&[("STRONGROOM_CONFIG", &p)]),
            Err(ConfigError::UnknownKey(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
