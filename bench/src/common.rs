//! What the benchmarks share: starting a release `strongroom serve` as a separate process (its
//! own PostgreSQL, in a temp data directory), building the guest components, and percentiles.
//! Each bench binary uses its part.
#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const ADMIN: &str = "bench-admin-key-0123456789abcdefghijklmnop";
pub const MASTER: &str = "bench:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

/// A running server; stopped (SIGTERM) and its data directory removed on drop.
pub struct Server {
    pub child: std::process::Child,
    pub dir: PathBuf,
    pub base: String,
    /// The managed cluster's WAL directory, when `BENCH_PG_WAL_DIR` put it elsewhere.
    pub wal_dir: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child, &self.dir);
        if let Some(wal) = &self.wal_dir {
            let _ = std::fs::remove_dir_all(wal);
        }
    }
}

/// Stops a child process with SIGTERM (an orderly stop), waits for it, removes its directory.
pub fn stop(child: &mut std::process::Child, dir: &Path) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}

/// The guest components' directory: builds `functions-examples/` for `wasm32-wasip2` first (an
/// existing build is used if cargo cannot run).
pub fn guests() -> Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../functions-examples");
    let dir = root.join("target/wasm32-wasip2/release");
    let built = std::process::Command::new("cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .current_dir(&root)
        .status();
    match built {
        Ok(s) if s.success() => {}
        _ if dir.join("hostile_trivial.wasm").exists() => {
            eprintln!("building the guest components failed; using the existing build");
        }
        _ => bail!("building the guest components failed"),
    }
    Ok(dir)
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `strongroom serve` (next to this executable) with the bench's admin and master keys,
/// plus `extra_env`, and waits until `/readyz` answers.
pub async fn start_server(extra_env: &[(&str, &str)]) -> Result<Server> {
    let exe = std::env::current_exe()?.with_file_name("strongroom");
    if !exe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p strongroom`",
            exe.display()
        );
    }
    let dir = std::env::temp_dir().join(format!(
        "strongroom-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    // BENCH_PG_WAL_DIR=/dev/shm (diagnostic): the managed cluster's WAL in a fresh directory
    // there, to see what commits cost the figures when their flushes do not wait on the disk.
    // On tmpfs this is not durable: never a setting for a real server.
    let wal_dir = std::env::var_os("BENCH_PG_WAL_DIR").map(|d| {
        PathBuf::from(d).join(format!(
            "strongroom-bench-wal-{}",
            uuid::Uuid::new_v4().simple()
        ))
    });
    let mut command = std::process::Command::new(exe);
    if let Some(wal) = &wal_dir {
        command.env("STRONGROOM_PG_WAL_DIR", wal);
    }
    let child = command
        .arg("serve")
        .env("STRONGROOM_DATA_DIR", &dir)
        .env("STRONGROOM_LISTEN", format!("127.0.0.1:{port}"))
        .env("STRONGROOM_ADMIN_KEY", ADMIN)
        .env("STRONGROOM_MASTER_KEYS", MASTER)
        // BENCH_SERVER_LOG=info (diagnostic): the server's request log, with each latency.
        .env(
            "STRONGROOM_LOG",
            std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("STRONGROOM_DB_POOL_SIZE", "16")
        .envs(extra_env.iter().copied())
        .spawn()?;
    let server = Server {
        child,
        dir,
        base: format!("http://127.0.0.1:{port}"),
        wal_dir,
    };
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{}/readyz", server.base)).send().await
            && r.status().is_success()
        {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("server did not become ready")
}

/// The `p` quantile (0..=1) of sorted durations (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Connects to the server's own PostgreSQL (socket and password under its data directory).
pub async fn connect_pg(dir: &Path) -> Result<tokio_postgres::Client> {
    let password =
        std::fs::read_to_string(dir.join("postgres/password")).context("read password")?;
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(dir.join("postgres/run"))
        .user("strongroom")
        .password(password.trim())
        .dbname("strongroom");
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// `http://host:port/path?query` as (`host:port`, `/path?query`).
pub fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .context("the load generator speaks plain http")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Ok((authority, if path.is_empty() { "/" } else { path }))
}

/// One load-generating caller: a single keep-alive HTTP/1.1 connection (hyper's low-level
/// client), with the admin key and JSON content type on every request. The benches run on the
/// same 2 cores as the server and its PostgreSQL, so the load generator must cost as little as
/// possible: a `reqwest::Client` (pool, redirect policy, more layers) took about a third of a
/// core at 6,000 requests/s. Connection set-up is outside the timing.
pub struct Caller {
    sender: Sender,
    authority: String,
    auth: hyper::header::HeaderValue,
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>;

impl Caller {
    /// Connects to the host of `url` (`http://host:port[/…]`).
    pub async fn connect(url: &str) -> Result<Caller> {
        let authority = split_url(url)?.0.to_string();
        let sender = Caller::open(&authority).await?;
        let auth = hyper::header::HeaderValue::from_str(&format!("Bearer {ADMIN}"))?;
        Ok(Caller {
            sender,
            authority,
            auth,
        })
    }

    async fn open(authority: &str) -> Result<Sender> {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// POSTs `body` as JSON to `path`; the status and the whole answer.
    pub async fn post(
        &mut self,
        path: &str,
        body: hyper::body::Bytes,
    ) -> Result<(hyper::StatusCode, hyper::body::Bytes)> {
        use http_body_util::BodyExt;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, self.auth.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(body))?;
        // A server may close a keep-alive connection after an answer (nginx does after 1,000
        // requests); like any client, open a new one then.
        if self.sender.ready().await.is_err() {
            self.sender = Caller::open(&self.authority).await?;
            self.sender.ready().await?;
        }
        let answer = self.sender.send_request(request).await?;
        let status = answer.status();
        let body = answer.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Open-loop load at a fixed rate: the `callers` together offer `rate` requests per second,
/// `calls` in all; caller `c` sends request `i = k·n + c` (n callers, round robin over `bodies`)
/// when it is due, at `i / rate` seconds after the start. A closed loop (each caller sends as
/// soon as its answer arrives) only measures the server at saturation, where p50 is the queue:
/// about callers ÷ throughput. This measures the latency a request sees at a given load.
///
/// A latency runs from the moment the request was due when its caller was still waiting for
/// its previous answer (the wait counts: no coordinated omission), and from the moment it was
/// sent otherwise (the timer's own lateness, up to a millisecond, does not). Every answer must
/// be 200 OK (unless `any_status`). The callers come back for the next phase; the latencies come back sorted.
///
/// `BENCH_TAILS=1` (diagnostic) prints each call slower than 5 ms to standard error with the
/// wall-clock time it was due, to line the tail up with the server's log or a CPU sampler.
/// With `any_status`, answers other than 200 count too (for a diagnostic path such as an
/// unknown `/v1` one, which is authenticated and audited but touches nothing else).
pub async fn paced(
    callers: Vec<Caller>,
    path: &str,
    bodies: &std::sync::Arc<Vec<hyper::body::Bytes>>,
    rate: f64,
    calls: usize,
    any_status: bool,
) -> Result<(Vec<Caller>, Vec<Duration>)> {
    let n = callers.len();
    let tails = std::env::var_os("BENCH_TAILS").is_some();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(n);
    for (c, mut caller) in callers.into_iter().enumerate() {
        let (path, bodies) = (path.to_string(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(calls / n + 1);
            for i in (c..calls).step_by(n) {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                let t0 = if tokio::time::Instant::now() >= due {
                    due
                } else {
                    tokio::time::sleep_until(due).await;
                    let woke = tokio::time::Instant::now();
                    if tails && woke - due > Duration::from_millis(5) {
                        eprintln!(
                            "late timer: woke {:.1} ms after its due time",
                            (woke - due).as_secs_f64() * 1e3
                        );
                    }
                    woke
                };
                let body = bodies[i % bodies.len()].clone();
                let (status, answer) = caller.post(&path, body).await?;
                lat.push(t0.elapsed());
                if tails && t0.elapsed() > Duration::from_millis(5) {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    eprintln!(
                        "slow call: due at second {:02}.{:03} of the minute (wall clock), {:.1} ms: {path}",
                        now.saturating_sub(t0.elapsed()).as_secs() % 60,
                        now.saturating_sub(t0.elapsed()).subsec_millis(),
                        t0.elapsed().as_secs_f64() * 1e3,
                    );
                }
                if status != hyper::StatusCode::OK && !any_status {
                    bail!("{path}: {status}: {}", String::from_utf8_lossy(&answer));
                }
            }
            Ok::<_, anyhow::Error>((caller, lat))
        }));
    }
    let (mut callers, mut lat) = (Vec::with_capacity(n), Vec::with_capacity(calls));
    for t in tasks {
        let (caller, l) = t.await??;
        callers.push(caller);
        lat.extend(l);
    }
    lat.sort();
    Ok((callers, lat))
}

/// A number from the environment variable `name`, or `default` when it is unset or not one.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// Offered rates for the paced phases, from `var` (comma-separated requests/s) or `default`.
pub fn rates(var: &str, default: &[f64]) -> Vec<f64> {
    match std::env::var(var) {
        Ok(s) => s
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .filter(|r: &f64| *r > 0.0)
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// CPU seconds used so far, per group of processes, read from `/proc` (Linux):
/// - `server`: the `strongroom` process with pid `server`;
/// - `postgres`: every process named `postgres` (the managed cluster; the benches run alone),
///   with the time of exited backends that the postmaster has reaped;
/// - `nginx`: every process named `nginx`;
/// - `upstream`: this process's threads named `upstream` (connection-bench's upstream);
/// - `bench`: this process's other threads (the load generator).
///
/// And `idle`: the machine's idle seconds over all cores (`/proc/stat`).
/// The benches share 2 cores with the server: this says which side a phase's cycles went to.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes {
    groups: std::collections::BTreeMap<&'static str, f64>,
    idle: f64,
    at: Option<std::time::Instant>,
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when it cannot be asked).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The name and the fields after it of a `/proc/…/stat` line (the name may hold spaces).
fn stat_fields(text: &str) -> Option<(&str, Vec<f64>)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = &text[open + 1..close];
    // Fields from the state (3rd) on; utime is the 14th field, so index 11 here.
    let rest = text[close + 1..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    Some((name, rest))
}

impl CpuTimes {
    pub fn now(server: u32) -> CpuTimes {
        let tick = clock_ticks();
        let mut groups = std::collections::BTreeMap::new();
        let own = std::process::id();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == own {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((name, f)) = stat_fields(&text) else {
                continue;
            };
            let (user, system) = (f.get(11).copied(), f.get(12).copied());
            let (Some(user), Some(system)) = (user, system) else {
                continue;
            };
            let group = match name {
                _ if pid == server => "server",
                "postgres" => "postgres",
                "nginx" => "nginx",
                _ => continue,
            };
            // Reaped children's time: exited backends, for the postmaster.
            let children = if group == "postgres" {
                f.get(13).copied().unwrap_or(0.0) + f.get(14).copied().unwrap_or(0.0)
            } else {
                0.0
            };
            *groups.entry(group).or_insert(0.0) += (user + system + children) / tick;
        }
        for entry in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((name, f)) = stat_fields(&text) else {
                continue;
            };
            let group = if name == "upstream" {
                "upstream"
            } else {
                "bench"
            };
            let used = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
            *groups.entry(group).or_insert(0.0) += used / tick;
        }
        let idle = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_string();
                // cpu user nice system idle iowait …: idle and iowait.
                let f: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .map(|x| x.parse().unwrap_or(0.0))
                    .collect();
                Some(f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0))
            })
            .unwrap_or(0.0)
            / tick;
        CpuTimes {
            groups,
            idle,
            at: Some(std::time::Instant::now()),
        }
    }

    /// What each group used between `before` and `self`, in microseconds per unit of work
    /// (`units` records, tokens or calls), and how busy the machine was:
    /// `server 14.2, postgres 52.0, bench 3.1 µs/record; machine 91 % busy`.
    pub fn per_unit_since(&self, before: &CpuTimes, units: usize, unit: &str) -> String {
        let units = units.max(1) as f64;
        let mut parts = Vec::new();
        for (group, after) in &self.groups {
            let used = after - before.groups.get(group).copied().unwrap_or(0.0);
            if used > 0.0 {
                parts.push(format!("{group} {:.1}", used / units * 1e6));
            }
        }
        let wall = match (before.at, self.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = if wall > 0.0 {
            (1.0 - (self.idle - before.idle) / (wall * cores)).clamp(0.0, 1.0) * 100.0
        } else {
            0.0
        };
        format!(
            "cpu {} µs/{unit}; machine {busy:.0} % busy",
            parts.join(", ")
        )
    }
}
