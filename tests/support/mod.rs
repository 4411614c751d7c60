//! Test support: a real PostgreSQL (started once per test binary with Strongroom's own manager),
//! a migrated template database, and [`TestApp`]: a real server on a free port over a fresh
//! database, spoken to over real HTTP.
//!
//! Setup failures panic: a harness that cannot start PostgreSQL or a server should stop the test
//! with the reason, which is what `expect` gives.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod upstream;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use strongroom::config::Settings;
use strongroom::pg::ManagedPostgres;
use strongroom::startup::Application;
use tokio::sync::oneshot;

/// The admin key every test server uses.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdefghijklmnop";

struct Cluster {
    pg: ManagedPostgres,
    root: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static TEMPLATE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// A fresh directory under the system temp dir (reachable by the `postgres` user when root).
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Everything every test server logged so far, at debug level.
pub fn logs() -> String {
    let buf = LOGS
        .get()
        .map(|b| b.lock().expect("log lock").clone())
        .unwrap_or_default();
    String::from_utf8_lossy(&buf).into_owned()
}

#[derive(Clone)]
struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = BufferWriter(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(strongroom::telemetry::filter("debug"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
        buf
    });
}

/// Starts the shared cluster in its own thread and runtime (so it outlives any one test's runtime).
fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let root = temp_dir("strongroom-test-pg");
                let pg = ManagedPostgres::start(&root)
                    .await
                    .expect("start PostgreSQL for the tests");
                reap_when_done(&root);
                Cluster { pg, root }
            })
        })
        .join()
        .expect("cluster thread")
    })
}

/// Statics are never dropped: a watchdog stops PostgreSQL and removes its files once this test
/// process has exited.
fn reap_when_done(root: &std::path::Path) {
    let pid_file = root.join("postgres/data/postmaster.pid");
    let Some(pg_pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
    else {
        return;
    };
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -INT {pg_pid} 2>/dev/null; sleep 3; rm -rf '{root}'",
        me = std::process::id(),
        root = root.display()
    );
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

async fn connect(config: tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to test PostgreSQL");
    tokio::spawn(conn);
    client
}

/// Creates a database migrated from the template.
pub async fn fresh_database() -> (String, tokio_postgres::Config) {
    let cluster = cluster();
    TEMPLATE
        .get_or_init(|| async {
            let admin = connect(cluster.pg.config()).await;
            admin
                .batch_execute("CREATE DATABASE sr_template")
                .await
                .expect("create template");
            let pool = strongroom::db::pool(
                cluster.pg.config_for("sr_template"),
                1,
                std::time::Duration::from_secs(30),
                std::time::Duration::from_secs(60),
            )
            .expect("pool");
            strongroom::db::migrate(&pool)
                .await
                .expect("migrate template");
            pool.close();
        })
        .await;
    let name = format!("sr_test_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(cluster.pg.config()).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE sr_template"))
        .await
        .expect("create test database");
    (name.clone(), cluster.pg.config_for(&name))
}

/// Settings of a test server: a free port, a temp data dir, fixed keys.
pub fn test_settings(data_dir: PathBuf) -> Settings {
    let mut s = Settings::from_lookup(|_| None).expect("default settings");
    s.listen = "127.0.0.1:0".parse().expect("addr");
    s.data_dir = data_dir;
    s.admin_key = Some(ADMIN_KEY.to_string().into());
    s.master_keys = Some(
        "test1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
            .to_string()
            .into(),
    );
    s.db_pool_size = 8;
    s
}

/// A running server over its own fresh database.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db_name: String,
    pub db: tokio_postgres::Config,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    /// Spawns with settings adjusted by `adjust`.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        init_logs();
        let (db_name, db) = fresh_database().await;
        let data_dir = temp_dir("strongroom-test-data");
        let mut settings = test_settings(data_dir.clone());
        adjust(&mut settings);
        TestApp::start(settings, db_name, db, data_dir).await
    }

    /// Starts a server on an existing database (e.g. to restart over the same data).
    pub async fn start(
        settings: Settings,
        db_name: String,
        db: tokio_postgres::Config,
        data_dir: PathBuf,
    ) -> TestApp {
        let app = Application::build_with(settings, Some(db.clone()))
            .await
            .expect("build app");
        let base = format!("http://{}", app.local_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        TestApp {
            base,
            client: reqwest::Client::new(),
            db_name,
            db,
            data_dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops this server and starts another on its database and data directory, with the test
    /// settings adjusted by `adjust`.
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        self.stop().await;
        self.start_again(adjust).await
    }

    /// Another server on this (stopped) server's database and data directory, with the test
    /// settings adjusted by `adjust`.
    pub async fn start_again(&self, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = test_settings(self.data_dir.clone());
        adjust(&mut settings);
        TestApp::start(
            settings,
            self.db_name.clone(),
            self.db.clone(),
            self.data_dir.clone(),
        )
        .await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("server stopped cleanly");
        }
    }

    /// A direct connection to this test's database, for assertions on what is stored.
    pub async fn db(&self) -> tokio_postgres::Client {
        connect(self.db.clone()).await
    }

    /// How many rows `table` of this server's database holds.
    pub async fn count(&self, table: &str) -> i64 {
        self.db()
            .await
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count rows")
            .get(0)
    }

    /// Sends a request with the admin key and a JSON body; returns status and JSON (Null if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(Some(ADMIN_KEY), method, path, body).await
    }

    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.request(key, None, method, path, body).await
    }

    /// Sends a request as `key` stating `purpose` (if any).
    pub async fn call_with(
        &self,
        key: &str,
        purpose: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.request(Some(key), purpose, method, path, body).await
    }

    async fn request(
        &self,
        key: Option<&str>,
        purpose: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(p) = purpose {
            req = req.header("x-strongroom-purpose", p);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        answer(req.send().await.expect("request")).await
    }

    /// Creates a service account; returns its API key.
    pub async fn service_account(&self, name: &str, roles: &[&str]) -> String {
        let (status, body) = self
            .post(
                "/v1/service-accounts",
                serde_json::json!({"name": name, "roles": roles}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["api_key"].as_str().expect("api_key").to_string()
    }

    /// Replaces the policy set (admin-all is kept so the test's admin can still work).
    pub async fn policies(&self, cedar: &str) -> (StatusCode, Value) {
        let source = format!(
            "@id(\"admin-all\")\npermit (principal in Strongroom::Role::\"admin\", action, resource);\n{cedar}"
        );
        self.raw(
            Method::PUT,
            "/v1/policies",
            "text/plain",
            source.into_bytes(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Sends raw bytes with a content type (for malformed-input tests).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let resp = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        answer(resp).await
    }

    /// Creates the `payments` vault of API.md and returns its echo.
    pub async fn payments_vault(&self) -> Value {
        let (status, body) = self.post("/v1/vaults", payments_schema()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The example schema of API.md.
pub fn payments_schema() -> Value {
    serde_json::json!({
        "name": "payments",
        "tables": [{"name": "customers", "columns": [
            {"name": "name", "type": "name"},
            {"name": "email", "type": "email", "tokenization": "deterministic", "unique": true},
            {"name": "card_number", "type": "card_number", "tokenization": "format_preserving"},
            {"name": "ssn", "type": "ssn"},
            {"name": "dob", "type": "date_of_birth"},
            {"name": "region", "type": "string", "policy_attribute": true}
        ]}]
    })
}

/// Asserts the contract's error shape and code; returns the error object.
pub fn assert_error(
    status: StatusCode,
    body: &Value,
    expected_status: StatusCode,
    code: &str,
) -> Value {
    assert_eq!(status, expected_status, "{body}");
    let err = &body["error"];
    assert_eq!(err["code"], code, "{body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        err["request_id"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["details"].is_array(), "{body}");
    err.clone()
}

/// The cluster's root directory (for `pg_dump`).
pub fn cluster_root() -> PathBuf {
    cluster().root.clone()
}

/// Connection settings of the shared cluster for database `name`.
pub fn cluster_config(name: &str) -> tokio_postgres::Config {
    cluster().pg.config_for(name)
}

/// The guest components in `functions-examples/`, built once per test run for
/// `wasm32-wasip2` (release), by the same cargo and toolchain that runs the tests.
pub fn guest(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../functions-examples");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
            ])
            .current_dir(&root)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("run cargo for the guest components");
        assert!(
            status.success(),
            "building functions-examples for wasm32-wasip2 failed"
        );
        root.join("target/wasm32-wasip2/release")
    });
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl TestApp {
    /// Uploads a function (`POST /v1/functions`, or a new version of `existing`).
    pub async fn upload_function(
        &self,
        manifest: Value,
        component: Vec<u8>,
        existing: Option<&str>,
    ) -> (StatusCode, Value) {
        let form = reqwest::multipart::Form::new()
            .part(
                "manifest",
                reqwest::multipart::Part::text(manifest.to_string())
                    .mime_str("application/json")
                    .expect("mime"),
            )
            .part(
                "component",
                reqwest::multipart::Part::bytes(component)
                    .mime_str("application/wasm")
                    .expect("mime"),
            );
        let path = match existing {
            Some(name) => format!("/v1/functions/{name}/versions"),
            None => "/v1/functions".to_string(),
        };
        let resp = self
            .client
            .post(format!("{}{}", self.base, path))
            .bearer_auth(ADMIN_KEY)
            .multipart(form)
            .send()
            .await
            .expect("request");
        answer(resp).await
    }
}

/// Status and JSON body of a response (`Null` when empty, a string when not JSON).
async fn answer(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, json)
}
