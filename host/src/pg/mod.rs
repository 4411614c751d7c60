//! The PostgreSQL the server runs itself when no `STRONGROOM_DATABASE_URL` is set.
//!
//! Layout under the data directory: `postgres/data` (the cluster), `postgres/run` (the unix
//! socket directory, 0700: no TCP listener at all), `postgres/log/postgres.log`, and
//! `postgres/password` (0600), the generated superuser password. When the server runs as root,
//! PostgreSQL (which refuses root) runs as the `postgres` system user.
//!
//! INVARIANT: PostgreSQL never logs statements or their parameters (they carry ciphertexts and
//! keyed hashes), and the password never appears in a log line, an error or a `Debug` output.

use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A PostgreSQL cluster that Strongroom runs itself under `<data_dir>/postgres`.
pub struct ManagedPostgres {
    root: PathBuf,
    bindir: PathBuf,
    run_as: Option<(u32, u32)>,
    password: SecretString,
    running: bool,
}

impl std::fmt::Debug for ManagedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedPostgres")
            .field("root", &self.root)
            .field("bindir", &self.bindir)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

/// Why the managed PostgreSQL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "no PostgreSQL server found: install it (Debian/Ubuntu: `apt-get install postgresql`) or set STRONGROOM_DATABASE_URL to use an existing database"
    )]
    NotInstalled,
    #[error(
        "running as root, but there is no `postgres` user to run PostgreSQL as: create one, or set STRONGROOM_DATABASE_URL"
    )]
    NoPostgresUser,
    #[error(
        "the `postgres` user cannot reach `{0}`: choose a STRONGROOM_DATA_DIR outside it (for example under /var/lib or /tmp)"
    )]
    NotTraversable(PathBuf),
    #[error("{0} failed: {1}")]
    Command(&'static str, String),
    #[error("PostgreSQL did not accept connections within {0} seconds (see {1})")]
    Timeout(u64, PathBuf),
    #[error("managed PostgreSQL: {0}")]
    Io(#[from] std::io::Error),
}

const SUPERUSER: &str = "strongroom";
const DATABASE: &str = "strongroom";

impl ManagedPostgres {
    /// Finds the binaries, creates the cluster on first start, starts it and waits until it
    /// accepts connections. Recovers from a crash: a stale pid file or socket is cleared, and
    /// a postmaster still running on this data directory from an earlier run is stopped first.
    pub async fn start(data_dir: &Path) -> Result<ManagedPostgres, PgError> {
        // Where the cluster keeps its WAL, if not inside it: read when the cluster is created.
        let wal_dir = std::env::var_os("STRONGROOM_PG_WAL_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Self::start_with_wal(data_dir, wal_dir.as_deref()).await
    }

    /// [`ManagedPostgres::start`], creating a new cluster with its WAL in `wal_dir` (an empty or
    /// missing directory; on its own device or filesystem, commits do not wait on the tables'
    /// writes). An existing cluster keeps its WAL where it was created.
    pub async fn start_with_wal(
        data_dir: &Path,
        wal_dir: Option<&Path>,
    ) -> Result<ManagedPostgres, PgError> {
        let bindir = find_bindir(std::env::var_os("STRONGROOM_PG_BINDIR").map(PathBuf::from))?;
        let data_dir = std::path::absolute(data_dir)?;
        let root = data_dir.join("postgres");
        let run_as = if is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let wal_dir = wal_dir.map(std::path::absolute).transpose()?;
        let pg = tokio::task::spawn_blocking(move || {
            prepare(&data_dir, root, bindir, run_as, wal_dir.as_deref())
        })
        .await
        .map_err(|e| PgError::Command("start", e.to_string()))??;
        pg.wait_ready().await?;
        pg.create_database().await?;
        Ok(pg)
    }

    /// Connection settings for the `strongroom` database.
    pub fn config(&self) -> tokio_postgres::Config {
        self.config_for(DATABASE)
    }

    /// Connection settings for database `dbname` on this cluster.
    pub fn config_for(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.root.join("run"))
            .user(SUPERUSER)
            .password(self.password.expose_secret())
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// Stops the cluster (fast shutdown: open sessions are ended, data is flushed).
    pub async fn stop(&mut self) -> Result<(), PgError> {
        if !self.running {
            return Ok(());
        }
        let (bindir, root, run_as) = (self.bindir.clone(), self.root.clone(), self.run_as);
        tokio::task::spawn_blocking(move || pg_ctl_stop(&bindir, &root, run_as))
            .await
            .map_err(|e| PgError::Command("pg_ctl stop", e.to_string()))??;
        self.running = false;
        tracing::info!("managed PostgreSQL stopped");
        Ok(())
    }

    async fn wait_ready(&self) -> Result<(), PgError> {
        for _ in 0..300 {
            if let Ok((client, conn)) = self
                .config_for("postgres")
                .connect(tokio_postgres::NoTls)
                .await
            {
                drop(client);
                let _ = conn.await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(PgError::Timeout(30, self.root.join("log/postgres.log")))
    }

    async fn create_database(&self) -> Result<(), PgError> {
        let (client, conn) = self
            .config_for("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| PgError::Command("connect", e.to_string()))?;
        let task = tokio::spawn(conn);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .await
            .map_err(|e| PgError::Command("query", e.to_string()))?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .await
                .map_err(|e| PgError::Command("CREATE DATABASE", e.to_string()))?;
        }
        drop(client);
        let _ = task.await;
        Ok(())
    }
}

impl Drop for ManagedPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_ctl_stop(&self.bindir, &self.root, self.run_as);
        }
    }
}

/// Where the server binaries are: `STRONGROOM_PG_BINDIR`, `pg_config --bindir`, the highest
/// `/usr/lib/postgresql/*/bin`, `/usr/local/pgsql/bin`, then `PATH`.
fn find_bindir(explicit: Option<PathBuf>) -> Result<PathBuf, PgError> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = explicit {
        return if has_all(&dir) {
            Ok(dir)
        } else {
            Err(PgError::NotInstalled)
        };
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                Some((
                    e.file_name().to_str()?.parse::<u32>().ok()?,
                    e.path().join("bin"),
                ))
            })
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
    }
    candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|d| has_all(d))
        .ok_or(PgError::NotInstalled)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_user() -> Result<(u32, u32), PgError> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .next()
        .ok_or(PgError::NoPostgresUser)
}

fn command(bindir: &Path, program: &str, root: &Path, run_as: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bindir.join(program));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", root)
        .env("LC_ALL", "C")
        .current_dir(root);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn check(name: &'static str, out: Output) -> Result<Output, PgError> {
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(PgError::Command(
        name,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
    ))
}

fn mkdir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), PgError> {
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Checks that the `postgres` user can traverse every directory above `dir`.
fn check_traversable(dir: &Path, uid: u32, gid: u32) -> Result<(), PgError> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let ok = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(PgError::NotTraversable(ancestor.to_path_buf()));
        }
    }
    Ok(())
}

/// Creates the cluster if needed, clears what a crash left behind, and starts PostgreSQL.
fn prepare(
    data_dir: &Path,
    root: PathBuf,
    bindir: PathBuf,
    run_as: Option<(u32, u32)>,
    wal_dir: Option<&Path>,
) -> Result<ManagedPostgres, PgError> {
    mkdir(data_dir, 0o700, None)?;
    if let Some((uid, gid)) = run_as {
        check_traversable(data_dir, uid, gid)?;
        // postgres must pass through the data directory to its own subdirectory.
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o711))?;
    }
    mkdir(&root, 0o700, run_as)?;
    mkdir(&root.join("run"), 0o700, run_as)?;
    mkdir(&root.join("log"), 0o700, run_as)?;
    let data = root.join("data");
    let password_file = root.join("password");

    if !data.join("PG_VERSION").exists() {
        let password = generate_password();
        write_private(&password_file, password.expose_secret().as_bytes(), None)?;
        // initdb reads the password from a file the cluster owner can read; removed right after.
        let pwfile = root.join(".initdb-pw");
        write_private(&pwfile, password.expose_secret().as_bytes(), run_as)?;
        let mut initdb = command(&bindir, "initdb", &root, run_as);
        if let Some(wal) = wal_dir {
            // Its own device or filesystem keeps commits from waiting on the tables' writes.
            if let (Some((uid, gid)), Some(parent)) = (run_as, wal.parent()) {
                check_traversable(parent, uid, gid)?;
            }
            mkdir(wal, 0o700, run_as)?;
            initdb.arg(format!("--waldir={}", wal.display()));
        }
        let out = initdb
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=scram-sha-256",
                "--username",
                SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output();
        let _ = std::fs::remove_file(&pwfile);
        check("initdb", out?)?;
        tracing::info!(path = %data.display(), "created the managed PostgreSQL cluster");
    }
    if let Some(wal) = wal_dir
        && std::fs::read_link(data.join("pg_wal")).ok().as_deref() != Some(wal)
    {
        tracing::warn!(
            wal_dir = %wal.display(),
            "STRONGROOM_PG_WAL_DIR is only used when the cluster is created; this cluster keeps its WAL where it was created"
        );
    }
    let password = SecretString::from(std::fs::read_to_string(&password_file)?.trim().to_string());

    // A postmaster left running by an earlier run of ours: stop it and start afresh. A pid file
    // whose process is gone (or a zombie, or another program reusing the pid) is stale.
    let pid_file = data.join("postmaster.pid");
    if pid_file.exists() {
        if postmaster_alive(&pid_file) {
            tracing::warn!(
                "a managed PostgreSQL from an earlier run is still running: restarting it"
            );
            pg_ctl_stop(&bindir, &root, run_as)?;
        } else {
            tracing::warn!("clearing a stale PostgreSQL pid file left by a crash");
            let _ = std::fs::remove_file(&pid_file);
        }
    }
    for entry in std::fs::read_dir(root.join("run"))?.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with(".s.PGSQL") {
            let _ = std::fs::remove_file(entry.path());
        }
    }

    let options = format!(
        "-c listen_addresses='' -c unix_socket_directories='{run}' -c unix_socket_permissions=0700 \
         -c shared_buffers=128MB -c max_connections=100 -c log_min_messages=warning \
         -c log_statement=none -c log_min_error_statement=panic -c log_min_duration_statement=-1 \
         -c log_error_verbosity=terse",
        run = root.join("run").display()
    );
    // After a crash, orphaned backends may hold the old shared memory for a moment: retry.
    let mut attempt = 0;
    loop {
        let out = command(&bindir, "pg_ctl", &root, run_as)
            .arg("start")
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(root.join("log/postgres.log"))
            .arg("-o")
            .arg(&options)
            .output()?;
        match check("pg_ctl start", out) {
            Ok(_) => break,
            Err(e) if attempt >= 5 => return Err(e),
            Err(_) => {
                attempt += 1;
                let _ = std::fs::remove_file(&pid_file);
                std::thread::sleep(Duration::from_millis(500 * attempt));
            }
        }
    }
    tracing::info!("managed PostgreSQL started");
    Ok(ManagedPostgres {
        root,
        bindir,
        run_as,
        password,
        running: true,
    })
}

/// Whether the pid in `postmaster.pid` is a live (not zombie) `postgres` process.
fn postmaster_alive(pid_file: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return false;
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let is_postgres =
        std::fs::read_to_string(proc_dir.join("comm")).is_ok_and(|c| c.trim() == "postgres");
    let zombie = std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    is_postgres && !zombie
}

fn pg_ctl_stop(bindir: &Path, root: &Path, run_as: Option<(u32, u32)>) -> Result<(), PgError> {
    let out = command(bindir, "pg_ctl", root, run_as)
        .arg("stop")
        .args(["-w", "-t", "60", "-m", "fast", "-D"])
        .arg(root.join("data"))
        .output()?;
    check("pg_ctl stop", out).map(|_| ())
}

fn generate_password() -> SecretString {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

fn write_private(path: &Path, contents: &[u8], owner: Option<(u32, u32)>) -> Result<(), PgError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_say_how_to_fix_it() {
        let empty =
            std::env::temp_dir().join(format!("sr-empty-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&empty).unwrap();
        let err = find_bindir(Some(empty.clone())).unwrap_err();
        assert!(matches!(err, PgError::NotInstalled));
        let text = err.to_string();
        assert!(
            text.contains("apt-get install postgresql") && text.contains("STRONGROOM_DATABASE_URL"),
            "{text}"
        );
        std::fs::remove_dir_all(empty).unwrap();
    }

    #[test]
    fn debug_hides_the_password() {
        let pg = ManagedPostgres {
            root: "/x".into(),
            bindir: "/y".into(),
            run_as: None,
            password: SecretString::from("hunter2-secret".to_string()),
            running: false,
        };
        assert!(!format!("{pg:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn creates_restarts_and_recovers_from_a_crash() {
        let dir = std::env::temp_dir().join(format!("sr-pg-{}", uuid::Uuid::new_v4().simple()));
        let mut pg = ManagedPostgres::start(&dir).await.unwrap();
        let (client, conn) = pg.config().connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
            .await
            .unwrap();
        drop(client);
        pg.stop().await.unwrap();
        assert!(!dir.join("postgres/data/postmaster.pid").exists());

        // restart reuses the cluster
        let mut pg = ManagedPostgres::start(&dir).await.unwrap();
        let (client, conn) = pg.config().connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let x: i32 = client
            .query_one("SELECT x FROM kept", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(x, 7);
        drop(client);

        // crash: kill -9 the postmaster, then start again
        let pid = std::fs::read_to_string(dir.join("postgres/data/postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().to_string();
        assert!(
            Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap()
                .success()
        );
        pg.running = false;
        std::thread::sleep(Duration::from_millis(300));
        let mut pg2 = ManagedPostgres::start(&dir).await.unwrap();
        let (client, conn) = pg2.config().connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let x: i32 = client
            .query_one("SELECT x FROM kept", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(x, 7);
        drop(client);
        pg2.stop().await.unwrap();
        drop(pg);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn keeps_its_wal_where_it_is_told_when_it_is_created() {
        let base = std::env::temp_dir().join(format!("sr-pgw-{}", uuid::Uuid::new_v4().simple()));
        let (dir, wal) = (base.join("data"), base.join("wal"));
        let mut pg = ManagedPostgres::start_with_wal(&dir, Some(&wal))
            .await
            .unwrap();
        let (client, conn) = pg.config().connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        drop(client);
        pg.stop().await.unwrap();
        let link = std::fs::read_link(dir.join("postgres/data/pg_wal")).unwrap();
        assert_eq!(link, wal);
        assert!(std::fs::read_dir(&wal).unwrap().count() > 0);
        // an existing cluster keeps its WAL where it is, whatever the setting says now
        let mut pg = ManagedPostgres::start_with_wal(&dir, Some(&base.join("elsewhere")))
            .await
            .unwrap();
        pg.stop().await.unwrap();
        assert!(!base.join("elsewhere").exists());
        assert_eq!(
            std::fs::read_link(dir.join("postgres/data/pg_wal")).unwrap(),
            wal
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
