//! A database server of the test's own, which the test may stop and start again: PostgreSQL
//! (`initdb` / `pg_ctl` of Debian's `postgresql` package, run as the `postgres` user) or
//! MariaDB (`mariadb-install-db` / `mariadbd` of `mariadb-server`), on a free loopback port
//! with its data in a temporary directory that is removed when it is dropped.
//!
//! The shared servers `scripts/test` uses serve every test at once and must never go away;
//! a test of what a client does while its server is down and comes back uses one of these.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateKind {
    /// PostgreSQL, trust authentication, database `postgres`, user `postgres`.
    Postgres,
    /// MariaDB, user `root` without a password, database `ralph`.
    MariaDb,
}

/// A running (or stopped) private server; dropping it stops the server and removes its data.
#[derive(Debug)]
pub struct PrivateDb {
    kind: PrivateKind,
    dir: PathBuf,
    port: u16,
    /// The `mariadbd` process (PostgreSQL's runs detached under `pg_ctl`).
    child: Option<Child>,
    running: bool,
}

/// How long a start or stop may take before it is an error.
const READY_WITHIN: Duration = Duration::from_secs(60);

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("a free port: {e}"))
}

/// The newest PostgreSQL server binaries Debian installed (`/usr/lib/postgresql/N/bin`).
fn postgres_bin() -> Result<PathBuf, String> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e} (is the postgresql package installed?)", root.display()))?
        .filter_map(Result::ok)
        .filter_map(|d| Some((d.file_name().to_str()?.parse().ok()?, d.path().join("bin"))))
        .filter(|(_, bin)| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| format!("no pg_ctl under {}", root.display()))
}

impl PrivateDb {
    /// Creates and starts a private server of `kind`. Needs root (PostgreSQL runs as the
    /// `postgres` user, MariaDB as root) and the Debian packages `scripts/test` installs.
    ///
    /// # Errors
    /// A message naming the step that failed and its output.
    pub fn start_new(kind: PrivateKind) -> Result<Self, String> {
        let base = std::env::temp_dir().join(format!("ralph-private-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let mut db = Self { kind, dir: base, port: free_port()?, child: None, running: false };
        db.init()?;
        db.start()?;
        Ok(db)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `pg_ctl -D DATA`, run as the `postgres` user.
    fn pg_ctl(&self) -> Result<Command, String> {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(postgres_bin()?.join("pg_ctl")).arg("-D").arg(self.data());
        Ok(cmd)
    }

    fn init(&self) -> Result<(), String> {
        match self.kind {
            PrivateKind::Postgres => {
                run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&self.dir), "chown to postgres")?;
                run(
                    Command::new("runuser")
                        .args(["-u", "postgres", "--"])
                        .arg(postgres_bin()?.join("initdb"))
                        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                        .arg(self.data()),
                    "initdb",
                )
            }
            PrivateKind::MariaDb => run(
                Command::new("mariadb-install-db")
                    .args([
                        "--no-defaults",
                        "--user=root",
                        "--auth-root-authentication-method=normal",
                        "--skip-test-db",
                    ])
                    .arg(format!("--datadir={}", self.data().display())),
                "mariadb-install-db",
            ),
        }
    }

    /// The URL a store connects with.
    #[must_use]
    pub fn url(&self) -> String {
        match self.kind {
            PrivateKind::Postgres => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            PrivateKind::MariaDb => format!("mysql://root@127.0.0.1:{}/ralph", self.port),
        }
    }

    /// Starts the server (again) on the same port and data, and waits until it accepts
    /// connections.
    ///
    /// # Errors
    /// A message naming the step that failed.
    pub fn start(&mut self) -> Result<(), String> {
        if self.running {
            return Ok(());
        }
        match self.kind {
            PrivateKind::Postgres => run(
                self.pg_ctl()?
                    .arg("-l")
                    .arg(self.dir.join("server.log"))
                    .arg("-o")
                    .arg(format!(
                        "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                        self.port,
                        self.dir.display()
                    ))
                    .args(["-w", "-t", "60", "start"]),
                "pg_ctl start",
            )?,
            PrivateKind::MariaDb => {
                let log = std::fs::File::create(self.dir.join("server.log")).map_err(|e| format!("server log: {e}"))?;
                let child = Command::new("mariadbd")
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data().display()))
                    .arg(format!("--port={}", self.port))
                    .arg(format!("--socket={}", self.dir.join("mysqld.sock").display()))
                    .arg(format!("--pid-file={}", self.dir.join("mysqld.pid").display()))
                    .args(["--bind-address=127.0.0.1", "--user=root", "--skip-log-bin", "--max-connections=200"])
                    .args(["--innodb-flush-log-at-trx-commit=2", "--character-set-server=utf8mb4"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| format!("mariadbd: {e}"))?;
                self.child = Some(child);
                self.wait_listening()?;
                run(
                    Command::new("mariadb")
                        .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"])
                        .arg(format!("-P{}", self.port))
                        .args(["-e", "CREATE DATABASE IF NOT EXISTS ralph CHARACTER SET utf8mb4"]),
                    "create the database",
                )?;
            }
        }
        self.running = true;
        Ok(())
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < READY_WITHIN {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                return Err(format!("mariadbd exited ({status}): {log}"));
            }
            let ping = Command::new("mariadb-admin")
                .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root", "--connect-timeout=2"])
                .arg(format!("-P{}", self.port))
                .arg("ping")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if ping.is_ok_and(|s| s.success()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("mariadbd did not answer within {READY_WITHIN:?}"))
    }

    /// Stops the server as an operator would (`pg_ctl stop -m fast`; SIGTERM to `mariadbd`):
    /// open connections are closed, transactions in flight rolled back.
    ///
    /// # Errors
    /// A message naming the step that failed.
    pub fn stop(&mut self) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        match self.kind {
            PrivateKind::Postgres => run(self.pg_ctl()?.args(["-m", "fast", "-w", "-t", "60", "stop"]), "pg_ctl stop")?,
            PrivateKind::MariaDb => {
                if let Some(mut child) = self.child.take() {
                    let pid = child.id().to_string();
                    run(Command::new("kill").args(["-TERM", &pid]), "kill -TERM mariadbd")?;
                    child.wait().map_err(|e| format!("waiting for mariadbd: {e}"))?;
                }
            }
        }
        self.running = false;
        Ok(())
    }
}

impl Drop for PrivateDb {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping the private {:?} server: {e}", self.kind);
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
