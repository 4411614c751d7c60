//! Building and running the server: data directory, keys, database, routes, shutdown.

use crate::api;
use crate::config::Settings;
use crate::connections::egress::EgressPolicy;
use crate::connections::{ConnectionService, Deps, TrustedProxies};
use crate::crypto::MasterKeyRing;
use crate::functions::FunctionService;
use crate::governance::Governance;
use crate::pg::ManagedPostgres;
use crate::vault::VaultService;
use anyhow::{Context, Result};
use base64::Engine;
use secrecy::ExposeSecret;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A server that is bound and ready to run.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    managed: Option<ManagedPostgres>,
    /// Closed before a managed PostgreSQL stops, so its connections end cleanly.
    pool: deadpool_postgres::Pool,
    vault: VaultService,
    gov: Arc<Governance>,
    header_read_timeout: std::time::Duration,
}

impl Application {
    /// Builds from settings: uses `STRONGROOM_DATABASE_URL` or starts the server's own PostgreSQL.
    pub async fn build(settings: Settings) -> Result<Application> {
        Application::build_with(settings, None).await
    }

    /// Like [`Application::build`], with an explicit database (the test harness uses this).
    pub async fn build_with(
        settings: Settings,
        database: Option<tokio_postgres::Config>,
    ) -> Result<Application> {
        prepare_data_dir(&settings.data_dir)?;
        let ring = Arc::new(master_keys(&settings)?);
        let admin = admin_key(&settings)?;

        let mut managed = None;
        let db_config = match (database, &settings.database_url) {
            (Some(config), _) => config,
            (None, Some(url)) => url
                .expose_secret()
                .parse::<tokio_postgres::Config>()
                // The URL may hold a password: say what is wrong without repeating it.
                .map_err(|_| {
                    anyhow::anyhow!(
                        "STRONGROOM_DATABASE_URL is not a valid PostgreSQL connection string"
                    )
                })?,
            (None, None) => {
                let pg = ManagedPostgres::start(&settings.data_dir).await?;
                let config = pg.config();
                managed = Some(pg);
                config
            }
        };
        let pool = crate::db::pool(
            db_config,
            settings.db_pool_size,
            settings.db_wait_timeout(),
            settings.statement_timeout(),
        )?;
        crate::db::migrate(&pool).await.context(
            "could not prepare the database (is it reachable, and may this user create tables?)",
        )?;
        let vault = VaultService::new(pool.clone(), ring.clone());
        let pool_for_functions = pool.clone();
        let pool_for_connections = pool.clone();
        let pool_to_close = pool.clone();
        vault
            .check_keys_and_resume()
            .await
            .context("the stored vault keys do not open with the configured master keys")?;
        let gov = match Governance::start(
            pool,
            &ring,
            &admin,
            !settings.allow_plaintext_cards,
            settings.audit_timeout(),
        )
        .await
        {
            Ok(gov) => gov,
            Err(crate::governance::GovError::Policies(problems)) => {
                let list: Vec<String> = problems
                    .iter()
                    .map(|p| format!("{} (policy {:?}, line {:?})", p.reason, p.policy, p.line))
                    .collect();
                anyhow::bail!(
                    "the active Cedar policy set does not validate against policies/schema.cedarschema; refusing to serve: {}",
                    list.join("; ")
                );
            }
            Err(e) => return Err(e).context("could not start governance"),
        };

        let gov = Arc::new(gov);
        let functions = Arc::new(
            FunctionService::new(
                pool_for_functions,
                &settings.data_dir,
                vault.clone(),
                gov.clone(),
            )
            .context("could not start the function runtime")?,
        );
        let egress = EgressPolicy::parse(
            &settings.egress_allow_http_hosts,
            &settings.egress_allow_networks,
        )
        .context("the egress allow-lists (STRONGROOM_EGRESS_ALLOW_*) do not parse")?;
        if !settings.egress_allow_networks.is_empty()
            || !settings.egress_allow_http_hosts.is_empty()
        {
            tracing::warn!(
                networks = %settings.egress_allow_networks,
                http_hosts = %settings.egress_allow_http_hosts,
                "connections may reach these otherwise refused networks and plain-http hosts"
            );
        }
        let trusted_proxies = TrustedProxies::parse(&settings.trusted_proxies)
            .context("STRONGROOM_TRUSTED_PROXIES does not parse")?;
        if !trusted_proxies.is_empty() {
            tracing::warn!(
                proxies = %settings.trusted_proxies,
                "requests from these proxies are taken to come from the client their X-Forwarded-For names"
            );
        }
        let secrets_key = crate::governance::server_key(&pool_for_connections, &ring, "secrets")
            .await
            .context("could not load the secrets key")?;
        let connections = Arc::new(ConnectionService::new(
            pool_for_connections,
            Deps {
                vault: vault.clone(),
                gov: gov.clone(),
                functions: functions.clone(),
            },
            egress,
            trusted_proxies,
            secrets_key,
        ));
        let router = api::router(
            vault.clone(),
            gov.clone(),
            functions,
            connections,
            settings.max_body_bytes,
        );
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Ok(Application {
            listener,
            router,
            managed,
            pool: pool_to_close,
            vault,
            gov,
            header_read_timeout: settings.header_read_timeout(),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The vault service (for tools that run beside the server, such as benchmarks).
    pub fn vault(&self) -> &VaultService {
        &self.vault
    }

    /// Governance (accounts, policies, audit), for tools that run beside the server.
    pub fn governance(&self) -> &Arc<Governance> {
        &self.gov
    }

    /// Serves until SIGINT or SIGTERM, drains in-flight requests, then stops PostgreSQL.
    pub async fn run_until_stopped(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        tracing::info!(address = %self.local_addr(), "strongroom listening");
        let served = serve(
            self.listener,
            self.router,
            self.header_read_timeout,
            shutdown,
        )
        .await;
        drop(self.vault);
        self.pool.close();
        if let Some(pg) = self.managed.as_mut() {
            pg.stop().await?;
        }
        tracing::info!("strongroom stopped");
        served.context("the server failed")
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}

fn prepare_data_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    }
    Ok(())
}

fn master_keys(settings: &Settings) -> Result<MasterKeyRing> {
    if let Some(spec) = &settings.master_keys {
        return Ok(MasterKeyRing::parse(spec.expose_secret())?);
    }
    let path = settings.data_dir.join("master.key");
    let (ring, generated) = MasterKeyRing::load_or_generate_dev(&path)?;
    tracing::warn!(
        path = %path.display(),
        generated,
        "STRONGROOM_MASTER_KEYS is not set: using a master key from the data directory. This is for development only"
    );
    Ok(ring)
}

fn admin_key(settings: &Settings) -> Result<zeroize::Zeroizing<String>> {
    if let Some(key) = &settings.admin_key {
        return Ok(zeroize::Zeroizing::new(key.expose_secret().to_string()));
    }
    let path = settings.data_dir.join("admin.key");
    if path.exists() {
        let key = zeroize::Zeroizing::new(std::fs::read_to_string(&path)?);
        return Ok(zeroize::Zeroizing::new(key.trim().to_string()));
    }
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut());
    let key = zeroize::Zeroizing::new(format!(
        "sr_admin_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
    ));
    write_secret_file(&path, key.as_bytes())?;
    // Shown once, on the terminal only (not through the log pipeline), as the contract says.
    println!(
        "Generated the admin API key (shown once; also saved to {}):\n\n    {}\n",
        path.display(),
        key.as_str()
    );
    Ok(key)
}

fn write_secret_file(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish. axum's own `serve` cannot set a deadline on reading a request's headers, so a
/// client could hold a connection open for ever by trickling them; here each connection gets
/// `header_read_timeout` for every request's headers (on a kept-alive connection, from the
/// end of the previous answer).
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    header_read_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;

    let mut shutdown = std::pin::pin!(shutdown);
    // Every connection holds a receiver: the sender learns when the last one is done.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment rather than spin.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers go out at once: without TCP_NODELAY, a reply written in two parts waits for
        // the client's delayed ACK of the first.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        // Peer addresses: public inbound routes are rate-limited per client.
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req.map(axum::body::Body::new)
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(service);
        let mut stop = stop_rx.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            let mut conn = std::pin::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.changed(), if !stopping => {
                        // Finish the request in flight, then close.
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            // `stop` drops here: the last receiver gone tells the accept loop all are done.
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    stop_tx.closed().await;
    Ok(())
}
