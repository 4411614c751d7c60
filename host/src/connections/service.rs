//! Connections as stored things: versions, validation against the vaults and functions they
//! name, the secret store, inbound keys, and the compiled form the gateway runs.

use super::config::{
    ConnectionConfig, Kind, Segment, TemplatePart, parse_template, secret_refs, template_parts,
};
use super::egress::{self, EgressError, EgressPolicy, Network, parse_networks};
use super::locations::Selector;
use super::{ConnError, Deps};
use crate::cache::VersionCache;
use crate::crypto::{Key, constant_time_eq, open, seal};
use crate::vault::{Detail, Redaction, VaultError};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use http::HeaderMap;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// A version compiled for calls: parsed URL, route templates and selectors, its HTTP client.
pub struct Compiled {
    pub name: String,
    pub version: i32,
    pub config: ConnectionConfig,
    pub base: url::Url,
    pub routes: Vec<CompiledRoute>,
    pub client: reqwest::Client,
    /// The configured headers with their secrets filled in (marked sensitive).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Inbound: the key that signs forwarded bodies.
    pub signing_key: Option<Zeroizing<String>>,
    /// Every secret value this version sends, as the leak check takes them: none may come
    /// back to the caller.
    pub secret_values: Vec<Zeroizing<Vec<u8>>>,
}

pub struct CompiledRoute {
    pub index: usize,
    pub method: Option<http::Method>,
    pub template: Vec<Segment>,
    /// Outbound request detokenize: selector, level, vault (rule's or connection's).
    pub detokenize: Vec<Selector>,
    pub detokenize_levels: Vec<(Redaction, Option<String>)>,
    /// Inbound request tokenize.
    pub tokenize_request: Vec<Selector>,
    pub tokenize_response: Vec<Selector>,
}

impl Compiled {
    pub fn route(&self, i: usize) -> &super::config::Route {
        &self.config.routes[i]
    }
}

/// Fixed one-minute windows per (connection, client), for public inbound routes. A client is
/// an IPv4 address or an IPv6 /64 (one subscriber's usual allocation, which it can rotate
/// through freely); an IPv4-mapped IPv6 address counts as its IPv4 address.
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    /// The minute every entry counts in; all of them start over when it changes.
    minute: i64,
    counts: HashMap<(String, std::net::IpAddr), u32>,
}

/// The most clients counted in one minute. A flood of distinct addresses fills the map at most
/// this far; new clients are then refused until the minute ends, and no call ever walks it.
const MAX_CLIENTS: usize = 100_000;

impl RateLimiter {
    /// Counts a call; false when over `per_minute` in the current minute.
    pub fn allow(&self, connection: &str, addr: std::net::IpAddr, per_minute: u32) -> bool {
        self.allow_at(Utc::now().timestamp() / 60, connection, addr, per_minute)
    }

    fn allow_at(
        &self,
        minute: i64,
        connection: &str,
        addr: std::net::IpAddr,
        per_minute: u32,
    ) -> bool {
        let Ok(mut w) = self.windows.lock() else {
            return false;
        };
        if w.minute != minute {
            w.minute = minute;
            w.counts.clear();
        }
        let key = (connection.to_string(), client_of(addr));
        if w.counts.len() >= MAX_CLIENTS && !w.counts.contains_key(&key) {
            return false;
        }
        let count = w.counts.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count <= per_minute
    }
}

/// The client a public route's limit counts: an IPv4 address, or an IPv6 address's /64.
fn client_of(addr: std::net::IpAddr) -> std::net::IpAddr {
    match addr {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !(u128::from(u64::MAX)),
            )),
        },
        v4 => v4,
    }
}

/// The proxies in front of the server (`STRONGROOM_TRUSTED_PROXIES`), and how the client of a
/// request is found behind them.
#[derive(Debug, Default)]
pub struct TrustedProxies(Vec<Network>);

impl TrustedProxies {
    pub fn parse(list: &str) -> Result<Self, EgressError> {
        parse_networks(list, "STRONGROOM_TRUSTED_PROXIES").map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(ip))
    }

    /// The client of a request that came from `peer`: `peer` itself, unless it is a trusted
    /// proxy. Then the nearest address of `X-Forwarded-For` (read from the right, across every
    /// such header) that is not a trusted proxy. An entry that is not an address ends the walk
    /// and the last address read stands, so nothing a client writes further left is believed.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        let values: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        for value in values.into_iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for item in text.rsplit(',') {
                let Some(ip) = forwarded_address(item.trim()) else {
                    return client;
                };
                client = ip.to_canonical();
                if !self.trusts(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, an IPv6 address in brackets, either with a port.
fn forwarded_address(item: &str) -> Option<IpAddr> {
    item.parse::<IpAddr>()
        .ok()
        .or_else(|| item.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            item.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })
}

/// Connections: configuration, secrets, keys and the compiled versions the gateway uses.
pub struct ConnectionService {
    pub(super) pool: Pool,
    pub(super) deps: Deps,
    pub(super) egress: Arc<EgressPolicy>,
    secrets_key: Key,
    /// The compiled versions by connection name (a change forgets the name, or all of them
    /// when a secret changes).
    compiled: VersionCache<Arc<Compiled>>,
    /// Held while a version compiles, so that the calls that all miss at once (the first ones
    /// after a start or a change) compile it once between them, not once each: a compile
    /// opens secrets and loads the system's root certificates, tens of milliseconds of CPU.
    /// Each call reads its row before it waits here; the insert keeps the generation seen
    /// before that read, so a change meanwhile still leaves nothing stale cached.
    compiling: tokio::sync::Mutex<()>,
    pub(super) limiter: RateLimiter,
    trusted_proxies: TrustedProxies,
}

fn invalid(details: Vec<Detail>) -> ConnError {
    ConnError::Vault(VaultError::invalid(
        "the connection is not valid; see details",
        details,
    ))
}

fn not_found(what: String) -> ConnError {
    ConnError::Vault(VaultError::NotFound(what))
}

impl ConnectionService {
    pub fn new(
        pool: Pool,
        deps: Deps,
        egress: EgressPolicy,
        trusted_proxies: TrustedProxies,
        secrets_key: Key,
    ) -> Self {
        ConnectionService {
            trusted_proxies,
            pool,
            deps,
            egress: Arc::new(egress),
            secrets_key,
            compiled: VersionCache::new(),
            compiling: tokio::sync::Mutex::new(()),
            limiter: RateLimiter::default(),
        }
    }

    /// The client of a request that came from `peer` (see [`TrustedProxies::client`]).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.trusted_proxies.client(peer, headers)
    }

    // ---- secrets -------------------------------------------------------------------------

    /// `PUT /v1/secrets/{name}`.
    pub async fn put_secret(&self, name: &str, value: &str) -> Result<Value, ConnError> {
        if !crate::vault::schema::valid_name(name) {
            return Err(invalid(vec![Detail::field(
                "name",
                "must match ^[a-z][a-z0-9_-]{0,62}$",
            )]));
        }
        if value.is_empty() || value.len() > 64 * 1024 {
            return Err(invalid(vec![Detail::field(
                "value",
                "must be 1 to 65536 bytes",
            )]));
        }
        let sealed = seal(&self.secrets_key, value.as_bytes(), &secret_aad(name));
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "INSERT INTO secrets (name, sealed) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET sealed = EXCLUDED.sealed, updated_at = now()
                 RETURNING updated_at",
                &[&name, &sealed],
            )
            .await?;
        // Clients built with the old value (a TLS client key) must be rebuilt.
        self.forget_all();
        let at: DateTime<Utc> = row.get(0);
        Ok(json!({"name": name, "updated_at": at}))
    }

    /// `GET /v1/secrets`: names only.
    pub async fn list_secrets(&self) -> Result<Value, ConnError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT name, updated_at FROM secrets ORDER BY name", &[])
            .await?;
        let list: Vec<Value> = rows
            .iter()
            .map(|r| json!({"name": r.get::<_, String>(0), "updated_at": r.get::<_, DateTime<Utc>>(1)}))
            .collect();
        Ok(json!({"secrets": list}))
    }

    /// `DELETE /v1/secrets/{name}`.
    pub async fn delete_secret(&self, name: &str) -> Result<(), ConnError> {
        let client = self.pool.get().await?;
        let n = client
            .execute("DELETE FROM secrets WHERE name = $1", &[&name])
            .await?;
        if n == 0 {
            return Err(not_found(format!("secret `{name}`")));
        }
        self.forget_all();
        Ok(())
    }

    /// The values of `names`, opened. Missing ones are an error naming the secret.
    pub(super) async fn secrets(
        &self,
        names: &[&str],
    ) -> Result<HashMap<String, Zeroizing<String>>, ConnError> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let client = self.pool.get().await?;
        let wanted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let rows = client
            .query(
                &client
                    .prepare_cached("SELECT name, sealed FROM secrets WHERE name = ANY($1)")
                    .await?,
                &[&wanted],
            )
            .await?;
        let mut out = HashMap::new();
        for row in rows {
            let name: String = row.get(0);
            let sealed: Vec<u8> = row.get(1);
            let plain = open(&self.secrets_key, &sealed, &secret_aad(&name))
                .map_err(|_| ConnError::Vault(VaultError::Integrity))?;
            let text = String::from_utf8(plain.to_vec())
                .map_err(|_| ConnError::Vault(VaultError::Integrity))?;
            out.insert(name, Zeroizing::new(text));
        }
        if let Some(missing) = names.iter().find(|n| !out.contains_key(**n)) {
            return Err(ConnError::Upstream {
                status: http::StatusCode::BAD_GATEWAY,
                code: "upstream_error",
                message: format!(
                    "the connection refers to secret `{missing}`, which does not exist"
                ),
            });
        }
        Ok(out)
    }

    // ---- configuration -------------------------------------------------------------------

    /// Validates a configuration against the vaults, functions and secrets it names.
    async fn validate(&self, c: &ConnectionConfig) -> Result<(), ConnError> {
        let mut details = Vec::new();
        super::config::check_shape(c, |field, reason| {
            details.push(Detail::field(field, reason))
        });
        let url = match c.kind {
            Kind::Outbound => c.base_url.as_deref().map(|u| ("base_url", u)),
            Kind::Inbound => c.upstream.as_deref().map(|u| ("upstream", u)),
        };
        if let Some((field, raw)) = url {
            match egress::validate_base_url(raw, &self.egress) {
                Ok(url) => {
                    if let Err(e) = egress::check_url_now(&url, &self.egress).await {
                        details.push(Detail::field(field, e.to_string()));
                    }
                }
                Err(e) => details.push(Detail::field(field, e.to_string())),
            }
        }
        let client = self.pool.get().await?;
        let mut secrets: Vec<(String, &str)> = Vec::new();
        for (name, value) in &c.headers {
            for s in secret_refs(value).unwrap_or_default() {
                secrets.push((format!("headers.{name}"), s));
            }
        }
        if let Some(s) = &c.signing_secret {
            secrets.push(("signing_secret".into(), s));
        }
        if let Some(s) = c.tls.as_ref().and_then(|t| t.client_key_secret.as_deref()) {
            secrets.push(("tls.client_key_secret".into(), s));
        }
        for (field, name) in secrets {
            let exists = client
                .query_opt("SELECT 1 FROM secrets WHERE name = $1", &[&name])
                .await?
                .is_some();
            if !exists {
                details.push(Detail::field(
                    field,
                    format!(
                        "refers to secret `{name}`, which does not exist (PUT /v1/secrets/{name})"
                    ),
                ));
            }
        }
        if let Some(tls) = &c.tls {
            if let Some(pem) = &tls.ca_pem
                && !usable_certificates(pem)
            {
                details.push(Detail::field(
                    "tls.ca_pem",
                    "is not a bundle of PEM certificates (-----BEGIN CERTIFICATE-----)",
                ));
            }
            if tls.client_cert_pem.is_some() != tls.client_key_secret.is_some() {
                details.push(Detail::field(
                    "tls",
                    "client_cert_pem and client_key_secret go together",
                ));
            }
            if let Some(cert) = &tls.client_cert_pem {
                if !usable_certificates(cert) {
                    details.push(Detail::field(
                        "tls.client_cert_pem",
                        "is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
                    ));
                } else if let Some(key) = &tls.client_key_secret
                    && let Ok(secrets) = self.secrets(&[key.as_str()]).await
                    && let Some(key_pem) = secrets.get(key.as_str())
                    && identity(cert, key_pem).is_none()
                {
                    details.push(Detail::field(
                        "tls.client_key_secret",
                        "holds no PEM private key that fits client_cert_pem",
                    ));
                }
            }
        }
        if let Some(v) = &c.vault
            && self.deps.vault.load(v).await.is_err()
        {
            details.push(Detail::field(
                "vault",
                format!("vault `{v}` does not exist"),
            ));
        }
        for (i, r) in c.routes.iter().enumerate() {
            for (hook, f) in [
                ("request", &r.request.function),
                ("response", &r.response.function),
            ] {
                let Some(f) = f else { continue };
                let exists = client
                    .query_opt("SELECT 1 FROM functions WHERE name = $1", &[f])
                    .await?
                    .is_some();
                if !exists {
                    details.push(Detail::field(
                        format!("routes[{i}].{hook}.function"),
                        format!("function `{f}` does not exist"),
                    ));
                }
            }
            for (j, d) in r.request.detokenize.iter().enumerate() {
                if let Some(v) = &d.vault
                    && self.deps.vault.load(v).await.is_err()
                {
                    details.push(Detail::field(
                        format!("routes[{i}].request.detokenize[{j}].vault"),
                        format!("vault `{v}` does not exist"),
                    ));
                }
            }
            for (at, t) in r.tokenize_rules(i) {
                let problem = match self.deps.vault.load(&t.vault).await {
                    Err(_) => Some(("vault", format!("vault `{}` does not exist", t.vault))),
                    Ok(v) => match v.table(&t.table) {
                        Err(_) => Some(("table", format!("table `{}` does not exist", t.table))),
                        Ok(table) => match table.column(&t.column) {
                            None => {
                                Some(("column", format!("column `{}` does not exist", t.column)))
                            }
                            Some(col) if col.tokenization == crate::tokens::Tokenization::None => {
                                Some(("column", format!("column `{}` is not tokenized", t.column)))
                            }
                            Some(_) => None,
                        },
                    },
                };
                if let Some((field, reason)) = problem {
                    details.push(Detail::field(format!("{at}.{field}"), reason));
                }
            }
        }
        if details.is_empty() {
            Ok(())
        } else {
            Err(invalid(details))
        }
    }

    /// `POST /v1/connections`: stores version 1; an inbound connection gets its first key.
    pub async fn create(&self, c: ConnectionConfig) -> Result<Value, ConnError> {
        self.validate(&c).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO connections (name, kind, active_version) VALUES ($1, $2, 1) ON CONFLICT DO NOTHING",
                &[&c.name, &c.kind.as_str()],
            )
            .await?;
        if inserted == 0 {
            return Err(ConnError::Vault(VaultError::Conflict {
                message: format!("connection `{}` already exists", c.name),
                details: vec![Detail::field("name", "is taken")],
            }));
        }
        let config = serde_json::to_value(&c).map_err(|e| ConnError::Internal(e.to_string()))?;
        tx.execute(
            "INSERT INTO connection_versions (name, version, config) VALUES ($1, 1, $2)",
            &[&c.name, &config],
        )
        .await?;
        let key = match c.kind {
            Kind::Inbound => Some(self.insert_key(&tx, &c.name).await?),
            Kind::Outbound => None,
        };
        tx.commit().await?;
        let mut view = self.view(&c.name, 1, 1, config);
        if let Some((id, secret)) = key {
            view["api_key"] = json!(secret.as_str());
            view["key_id"] = json!(id);
        }
        Ok(view)
    }

    fn view(&self, name: &str, version: i32, active: i32, mut config: Value) -> Value {
        config["name"] = json!(name);
        config["version"] = json!(version);
        config["active_version"] = json!(active);
        config
    }

    /// `PUT /v1/connections/{name}`: a new version, active at once.
    pub async fn update(&self, name: &str, c: ConnectionConfig) -> Result<Value, ConnError> {
        if c.name != name {
            return Err(invalid(vec![Detail::field(
                "name",
                "must be the connection's name (connections are not renamed)",
            )]));
        }
        self.validate(&c).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT kind, (SELECT max(version) FROM connection_versions WHERE name = $1)
                 FROM connections WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?
            .ok_or_else(|| not_found(format!("connection `{name}`")))?;
        let kind: String = row.get(0);
        if kind != c.kind.as_str() {
            return Err(invalid(vec![Detail::field(
                "kind",
                "cannot change; create a new connection",
            )]));
        }
        let version: i32 = row.get::<_, i32>(1) + 1;
        let config = serde_json::to_value(&c).map_err(|e| ConnError::Internal(e.to_string()))?;
        tx.execute(
            "INSERT INTO connection_versions (name, version, config) VALUES ($1, $2, $3)",
            &[&name, &version, &config],
        )
        .await?;
        tx.execute(
            "UPDATE connections SET active_version = $2, updated_at = now() WHERE name = $1",
            &[&name, &version],
        )
        .await?;
        tx.commit().await?;
        self.forget(name);
        Ok(self.view(name, version, version, config))
    }

    /// `POST /v1/connections/{name}/activate`.
    pub async fn activate(&self, name: &str, version: i32) -> Result<Value, ConnError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE connections SET active_version = $2, updated_at = now()
                 WHERE name = $1 AND EXISTS (SELECT 1 FROM connection_versions WHERE name = $1 AND version = $2)",
                &[&name, &version],
            )
            .await?;
        if n == 0 {
            return Err(not_found(format!("connection `{name}` version {version}")));
        }
        self.forget(name);
        self.get(name).await
    }

    /// `GET /v1/connections/{name}`: the active configuration and the versions.
    pub async fn get(&self, name: &str) -> Result<Value, ConnError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT c.active_version, v.config FROM connections c
                 JOIN connection_versions v ON v.name = c.name AND v.version = c.active_version
                 WHERE c.name = $1",
                &[&name],
            )
            .await?
            .ok_or_else(|| not_found(format!("connection `{name}`")))?;
        let active: i32 = row.get(0);
        let mut view = self.view(name, active, active, row.get(1));
        let versions = client
            .query(
                "SELECT version, created_at FROM connection_versions WHERE name = $1 ORDER BY version",
                &[&name],
            )
            .await?;
        view["versions"] = versions
            .iter()
            .map(|r| json!({"version": r.get::<_, i32>(0), "created_at": r.get::<_, DateTime<Utc>>(1)}))
            .collect();
        let keys = client
            .query(
                "SELECT key_id, created_at FROM connection_keys WHERE connection = $1 AND revoked_at IS NULL ORDER BY created_at",
                &[&name],
            )
            .await?;
        if !keys.is_empty() {
            view["keys"] = keys
                .iter()
                .map(|r| json!({"key_id": r.get::<_, String>(0), "created_at": r.get::<_, DateTime<Utc>>(1)}))
                .collect();
        }
        Ok(view)
    }

    /// `GET /v1/connections`.
    pub async fn list(&self) -> Result<Value, ConnError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT c.name, c.active_version, v.config FROM connections c
                 JOIN connection_versions v ON v.name = c.name AND v.version = c.active_version
                 ORDER BY c.name",
                &[],
            )
            .await?;
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                let active: i32 = r.get(1);
                self.view(&r.get::<_, String>(0), active, active, r.get(2))
            })
            .collect();
        Ok(json!({"connections": list}))
    }

    /// `DELETE /v1/connections/{name}`.
    pub async fn delete(&self, name: &str) -> Result<(), ConnError> {
        let client = self.pool.get().await?;
        let n = client
            .execute("DELETE FROM connections WHERE name = $1", &[&name])
            .await?;
        if n == 0 {
            return Err(not_found(format!("connection `{name}`")));
        }
        self.forget(name);
        Ok(())
    }

    // ---- inbound keys --------------------------------------------------------------------

    async fn insert_key(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        connection: &str,
    ) -> Result<(String, Zeroizing<String>), ConnError> {
        let (key, digest) = self.deps.gov.accounts.mint();
        client
            .execute(
                "INSERT INTO connection_keys (key_id, connection, hash) VALUES ($1, $2, $3)",
                &[&key.id, &connection, &digest.to_vec()],
            )
            .await?;
        Ok((key.id, key.secret))
    }

    /// `POST /v1/connections/{name}/keys`.
    pub async fn add_key(&self, name: &str) -> Result<Value, ConnError> {
        let client = self.pool.get().await?;
        let kind: Option<String> = client
            .query_opt("SELECT kind FROM connections WHERE name = $1", &[&name])
            .await?
            .map(|r| r.get(0));
        match kind.as_deref() {
            None => return Err(not_found(format!("connection `{name}`"))),
            Some("inbound") => {}
            Some(_) => {
                return Err(invalid(vec![Detail::field(
                    "name",
                    "only inbound connections have keys; outbound ones are called with service-account keys",
                )]));
            }
        }
        let (id, secret) = self.insert_key(&client, name).await?;
        Ok(json!({"key_id": id, "api_key": secret.as_str()}))
    }

    /// `DELETE /v1/connections/{name}/keys/{key_id}`.
    pub async fn revoke_key(&self, name: &str, key_id: &str) -> Result<(), ConnError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE connection_keys SET revoked_at = now() WHERE connection = $1 AND key_id = $2 AND revoked_at IS NULL",
                &[&name, &key_id],
            )
            .await?;
        if n == 0 {
            return Err(not_found(format!("key `{key_id}`")));
        }
        Ok(())
    }

    /// Whether `presented` is a live key of inbound connection `name`; the key id if so.
    pub(super) async fn check_key(
        &self,
        name: &str,
        presented: &str,
    ) -> Result<Option<String>, ConnError> {
        let Some((key_id, digest)) = self.deps.gov.accounts.digest(presented) else {
            return Ok(None);
        };
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT hash FROM connection_keys WHERE key_id = $1 AND connection = $2 AND revoked_at IS NULL",
                    )
                    .await?,
                &[&key_id, &name],
            )
            .await?;
        // INVARIANT: compared in constant time, as keyed hashes.
        Ok(row
            .filter(|r| constant_time_eq(&digest, &r.get::<_, Vec<u8>>(0)))
            .map(|_| key_id))
    }

    // ---- compiled versions ---------------------------------------------------------------

    fn forget(&self, name: &str) {
        self.compiled.forget(name);
    }

    fn forget_all(&self) {
        self.compiled.forget_all();
    }

    /// The active version of `name`, compiled (cached until the connection changes).
    pub(super) async fn active(&self, name: &str) -> Result<Arc<Compiled>, ConnError> {
        let generation = match self.compiled.get(name) {
            Ok(c) => return Ok(c),
            Err(generation) => generation,
        };
        // Looked up before the compile lock: a name that does not exist (anyone may send one
        // to `/v1/inbound`) never holds up the compiles of real connections.
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT c.active_version, v.config FROM connections c
                 JOIN connection_versions v ON v.name = c.name AND v.version = c.active_version
                 WHERE c.name = $1",
                &[&name],
            )
            .await?
            .ok_or_else(|| not_found(format!("connection `{name}`")))?;
        let version: i32 = row.get(0);
        let config: ConnectionConfig = serde_json::from_value(row.get(1))
            .map_err(|_| ConnError::Internal("a stored connection does not parse".into()))?;
        drop(client);
        let _compiling = self.compiling.lock().await;
        // Another call may have compiled it while this one waited.
        if let Ok(c) = self.compiled.get(name) {
            return Ok(c);
        }
        let compiled = Arc::new(self.compile(version, config).await?);
        self.compiled.insert(name, compiled.clone(), generation);
        Ok(compiled)
    }

    async fn compile(&self, version: i32, config: ConnectionConfig) -> Result<Compiled, ConnError> {
        let internal = |what: &str| ConnError::Internal(format!("stored connection: {what}"));
        let raw = match config.kind {
            Kind::Outbound => config.base_url.as_deref(),
            Kind::Inbound => config.upstream.as_deref(),
        }
        .ok_or_else(|| internal("no URL"))?;
        // Checked again here: the operator's allow-lists may have changed since it was stored.
        let base =
            egress::validate_base_url(raw, &self.egress).map_err(|e| ConnError::Upstream {
                status: http::StatusCode::BAD_GATEWAY,
                code: "upstream_error",
                message: format!("the connection's URL is refused: {e}"),
            })?;
        let mut routes = Vec::new();
        for (index, r) in config.routes.iter().enumerate() {
            let selectors = |rules: Vec<(super::locations::Place, &str)>| {
                rules
                    .into_iter()
                    .map(|(place, path)| Selector::parse(place, path))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| internal("a location does not parse"))
            };
            routes.push(CompiledRoute {
                index,
                method: match r.method.as_str() {
                    "*" => None,
                    m => Some(
                        http::Method::from_bytes(m.as_bytes()).map_err(|_| internal("method"))?,
                    ),
                },
                template: parse_template(&r.path).map_err(|_| internal("path"))?,
                detokenize: selectors(
                    r.request
                        .detokenize
                        .iter()
                        .map(|d| (d.location, d.path.as_str()))
                        .collect(),
                )?,
                detokenize_levels: r
                    .request
                    .detokenize
                    .iter()
                    .map(|d| {
                        (
                            Redaction::parse(&d.redaction).unwrap_or(Redaction::Redacted),
                            d.vault.clone().or_else(|| config.vault.clone()),
                        )
                    })
                    .collect(),
                tokenize_request: selectors(
                    r.request
                        .tokenize
                        .iter()
                        .map(|t| (t.location, t.path.as_str()))
                        .collect(),
                )?,
                tokenize_response: selectors(
                    r.response
                        .tokenize
                        .iter()
                        .map(|t| (t.location, t.path.as_str()))
                        .collect(),
                )?,
            });
        }
        // Secrets are opened once per compiled version (dropped when a secret changes).
        let mut names: Vec<&str> = config
            .headers
            .values()
            .flat_map(|v| secret_refs(v).unwrap_or_default())
            .collect();
        names.extend(config.signing_secret.as_deref());
        names.extend(
            config
                .tls
                .as_ref()
                .and_then(|t| t.client_key_secret.as_deref()),
        );
        names.sort_unstable();
        names.dedup();
        let secrets = self.secrets(&names).await?;
        let mut builder = egress::client_builder(self.egress.clone())
            .connect_timeout(std::time::Duration::from_millis(config.timeouts.connect_ms))
            .timeout(std::time::Duration::from_millis(config.timeouts.total_ms))
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .tcp_nodelay(true);
        if let Some(tls) = &config.tls {
            if let Some(pem) = &tls.ca_pem {
                for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(|_| internal("CA bundle"))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_secret) {
                let key_pem = secrets
                    .get(key.as_str())
                    .ok_or_else(|| internal("client key"))?;
                let identity = reqwest::Identity::from_pem(&identity_pem(cert, key_pem))
                    .map_err(|_| unusable_tls())?;
                builder = builder.identity(identity);
            }
        }
        // The secret holding the client key may have changed since validation.
        // Building reads and parses the system's root certificates: off the request threads.
        let client = tokio::task::spawn_blocking(move || builder.build())
            .await
            .map_err(|_| internal("client build"))?
            .map_err(|_| unusable_tls())?;
        let headers = config
            .headers
            .iter()
            .map(|(name, template)| header_with_secrets(name, template, &secrets))
            .collect::<Result<Vec<_>, _>>()?;
        let signing_key = match &config.signing_secret {
            Some(name) => Some(
                secrets
                    .get(name.as_str())
                    .cloned()
                    .ok_or_else(|| internal("signing secret"))?,
            ),
            None => None,
        };
        let secret_values = config
            .headers
            .values()
            .flat_map(|v| secret_refs(v).unwrap_or_default())
            .filter_map(|name| secrets.get(name))
            .map(|v| Zeroizing::new(v.as_bytes().to_vec()))
            .collect();
        Ok(Compiled {
            name: config.name.clone(),
            version,
            config,
            base,
            routes,
            client,
            headers,
            signing_key,
            secret_values,
        })
    }
}

/// A configured header with its `{{secret.<name>}}` references filled in.
fn header_with_secrets(
    name: &str,
    template: &str,
    secrets: &HashMap<String, Zeroizing<String>>,
) -> Result<(http::HeaderName, http::HeaderValue), ConnError> {
    let parts = template_parts(template)
        .map_err(|_| ConnError::Internal(format!("stored connection: header `{name}`")))?;
    // Sized up front: a growing buffer would leave copies of a secret behind, unzeroed.
    let len = parts
        .iter()
        .map(|part| match part {
            TemplatePart::Text(text) => text.len(),
            TemplatePart::Secret(secret) => secrets.get(*secret).map_or(0, |v| v.len()),
        })
        .sum();
    let mut value = Zeroizing::new(String::with_capacity(len));
    for part in parts {
        match part {
            TemplatePart::Text(text) => value.push_str(text),
            TemplatePart::Secret(secret) => {
                let plain = secrets.get(secret).ok_or_else(|| {
                    ConnError::Internal(format!("stored connection: secret of header `{name}`"))
                })?;
                value.push_str(plain);
            }
        }
    }
    let (Ok(header), Ok(mut value)) = (
        http::HeaderName::from_bytes(name.as_bytes()),
        http::HeaderValue::from_str(&value),
    ) else {
        return Err(ConnError::call(
            http::StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!(
                "the connection's header `{name}` is not valid HTTP once its secrets are filled in"
            ),
        ));
    };
    value.set_sensitive(true);
    Ok((header, value))
}

fn unusable_tls() -> ConnError {
    ConnError::Upstream {
        status: http::StatusCode::BAD_GATEWAY,
        code: "upstream_error",
        message: "the connection's TLS settings cannot be used: its client certificate and key do not parse or do not fit; fix the connection or its key secret".into(),
    }
}

/// Whether `pem` holds at least one certificate that a TLS client accepts as a root.
fn usable_certificates(pem: &str) -> bool {
    match reqwest::Certificate::from_pem_bundle(pem.as_bytes()) {
        Ok(certs) if !certs.is_empty() => certs
            .into_iter()
            .fold(reqwest::Client::builder(), |b, c| b.add_root_certificate(c))
            .build()
            .is_ok(),
        _ => false,
    }
}

fn identity_pem(cert: &str, key: &str) -> Zeroizing<Vec<u8>> {
    let mut pem = Zeroizing::new(cert.as_bytes().to_vec());
    pem.push(b'\n');
    pem.extend_from_slice(key.as_bytes());
    pem
}

/// A client identity from a certificate and its key, if they parse and fit together.
fn identity(cert: &str, key: &str) -> Option<()> {
    let identity = reqwest::Identity::from_pem(&identity_pem(cert, key)).ok()?;
    reqwest::Client::builder()
        .identity(identity)
        .build()
        .ok()
        .map(|_| ())
}

fn secret_aad(name: &str) -> Vec<u8> {
    [b"strongroom secret:".as_slice(), name.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|_| unreachable!("an address"))
    }

    #[test]
    fn secrets_fill_header_templates_in_one_pass() {
        let secrets: HashMap<String, Zeroizing<String>> =
            [("a", "{{secret.b}}"), ("b", "signing-secret-value")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Zeroizing::new(v.to_string())))
                .collect();
        let filled = |template: &str| {
            header_with_secrets("authorization", template, &secrets)
                .map(|(_, v)| v.to_str().map(str::to_string).unwrap_or_default())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            filled("Bearer {{ secret.b }}").as_deref(),
            Ok("Bearer signing-secret-value")
        );
        // a secret's value is text, never a template: `a` does not expand `b`
        assert_eq!(filled("k={{secret.a}};").as_deref(), Ok("k={{secret.b}};"));
        assert_eq!(
            filled("{{secret.b}}/{{ secret.a}}").as_deref(),
            Ok("signing-secret-value/{{secret.b}}")
        );
    }

    #[test]
    fn rate_limit_groups_ipv6_by_64_and_mapped_ipv4_with_ipv4() {
        let limiter = RateLimiter::default();
        let allowed = (1..=61)
            .filter(|i| limiter.allow_at(5, "signup", ip(&format!("2001:db8::{i:x}")), 60))
            .count();
        assert_eq!(allowed, 60, "one /64 is one client");
        assert!(limiter.allow_at(5, "signup", ip("2001:db8:0:1::1"), 60));
        assert!(!limiter.allow_at(5, "signup", ip("2001:db8::ffff:1"), 60));
        assert!(
            limiter.allow_at(5, "other", ip("2001:db8::1"), 60),
            "per connection"
        );
        for _ in 0..2 {
            assert!(limiter.allow_at(5, "signup", ip("192.0.2.1"), 3));
        }
        assert!(limiter.allow_at(5, "signup", ip("::ffff:192.0.2.1"), 3));
        assert!(!limiter.allow_at(5, "signup", ip("192.0.2.1"), 3));
        // a new minute starts over
        assert!(limiter.allow_at(6, "signup", ip("192.0.2.1"), 3));
        assert!(limiter.allow_at(6, "signup", ip("2001:db8::1"), 60));
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                "x-forwarded-for",
                http::HeaderValue::from_str(v).unwrap_or_else(|_| unreachable!("a value")),
            );
        }
        headers
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_nearest_untrusted_address() {
        let none = TrustedProxies::default();
        let lb = TrustedProxies::parse("10.0.0.0/8, ::1").unwrap_or_default();
        let cases: &[(&TrustedProxies, &str, &[&str], &str)] = &[
            // Untrusted peers are the client, whatever they claim.
            (&none, "10.1.1.1", &["198.51.100.7"], "10.1.1.1"),
            (&lb, "192.0.2.1", &["198.51.100.7"], "192.0.2.1"),
            // Through a proxy: the rightmost address, then past further proxies.
            (&lb, "10.1.1.1", &["198.51.100.7"], "198.51.100.7"),
            (
                &lb,
                "10.1.1.1",
                &["203.0.113.5, 198.51.100.7"],
                "198.51.100.7",
            ),
            (
                &lb,
                "10.1.1.1",
                &["203.0.113.5, 198.51.100.7, 10.2.2.2"],
                "198.51.100.7",
            ),
            (
                &lb,
                "10.1.1.1",
                &["203.0.113.5", "198.51.100.7, 10.2.2.2"],
                "198.51.100.7",
            ),
            // Ports, brackets, IPv6 and IPv4-mapped peers.
            (&lb, "10.1.1.1", &["198.51.100.7:4711"], "198.51.100.7"),
            (&lb, "::1", &["[2001:db8::7]:443"], "2001:db8::7"),
            (&lb, "::1", &["[2001:db8::7]"], "2001:db8::7"),
            (&lb, "::ffff:10.1.1.1", &["198.51.100.7"], "198.51.100.7"),
            // No header, or only proxies in it: the last address read.
            (&lb, "10.1.1.1", &[], "10.1.1.1"),
            (&lb, "10.1.1.1", &["10.2.2.2, 10.3.3.3"], "10.2.2.2"),
            // A malformed entry ends the walk: nothing left of it is believed.
            (
                &lb,
                "10.1.1.1",
                &["198.51.100.7, unknown, 10.2.2.2"],
                "10.2.2.2",
            ),
            (&lb, "10.1.1.1", &[""], "10.1.1.1"),
        ];
        for (proxies, peer, values, want) in cases {
            assert_eq!(
                proxies.client(ip(peer), &forwarded(values)),
                ip(want),
                "{peer} {values:?}"
            );
        }
        let message = TrustedProxies::parse("10.0.0.1/8")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("STRONGROOM_TRUSTED_PROXIES"), "{message}");
    }

    #[test]
    fn rate_limit_map_has_a_hard_cap() {
        let limiter = RateLimiter::default();
        for i in 0..MAX_CLIENTS as u32 {
            assert!(limiter.allow_at(1, "c", IpAddr::V4(std::net::Ipv4Addr::from_bits(i)), 5));
        }
        // full: known clients keep counting, new ones wait for the next minute
        assert!(limiter.allow_at(1, "c", IpAddr::V4(std::net::Ipv4Addr::from_bits(7)), 5));
        assert!(!limiter.allow_at(1, "c", ip("198.51.100.1"), 5));
        assert!(limiter.allow_at(2, "c", ip("198.51.100.1"), 5));
        assert_eq!(limiter.windows.lock().map(|w| w.counts.len()).ok(), Some(1));
    }
}
