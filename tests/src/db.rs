//! Real database servers for tests: PostgreSQL and MariaDB from the Debian packages
//! (`bin/setup` installs `postgresql` and `mariadb-server` and leaves their services stopped),
//! each started on 127.0.0.1 at a free port with its data in a temp folder, with a database
//! `mofa` and a user `mofa` that has a password.
//!
//! ```no_run
//! let mut pg = mofa_tests::db::DbServer::postgres();
//! let url = pg.url(); // postgres://mofa:<password>@127.0.0.1:<port>/mofa
//! pg.stop();          // the server goes away (a lost connection for its clients)
//! pg.start();         // back on the same port with the same data
//! ```
//!
//! Both servers refuse to run as root, so as root they run as `nobody` (their temp folder is
//! handed to that user). Dropping a [`DbServer`] kills the server by its PID and removes the
//! folder, also when a test fails.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// The database and the user every server is set up with.
pub const DATABASE: &str = "mofa";
pub const USER: &str = "mofa";

/// How long a server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    MariaDb,
}

/// A database server of the tests' own (see the module docs).
pub struct DbServer {
    engine: Engine,
    port: u16,
    password: String,
    /// PostgreSQL's bin folder, or the folder of `mariadbd`.
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    // Dropped after the server is killed (fields drop after `Drop::drop`).
    dir: TempDir,
}

impl DbServer {
    /// A PostgreSQL server (the newest installed under /usr/lib/postgresql).
    pub fn postgres() -> DbServer {
        DbServer::postgres_at(free_port())
    }

    fn postgres_at(port: u16) -> DbServer {
        let bin = postgres_bin().unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres): run bin/setup"
            )
        });
        let mut server = DbServer::new(Engine::Postgres, bin);
        server.port = port;
        let data = server.data_dir();
        server.run_setup(
            Command::new(server.bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth-local=trust"])
                .args(["--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync"),
            "initdb",
            true,
        );
        server.start_first();
        let sql = [
            format!("CREATE ROLE {USER} LOGIN PASSWORD '{}'", server.password),
            format!("CREATE DATABASE {DATABASE} OWNER {USER}"),
        ];
        let mut psql = Command::new(server.bin.join("psql"));
        psql.arg("-h")
            .arg(server.dir.path())
            .args([
                "-p",
                &server.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-q"]);
        for s in &sql {
            psql.args(["-c", s]);
        }
        server.run_setup(&mut psql, "psql (create the user and database)", false);
        server
    }

    /// A MariaDB server (`mariadbd` from the Debian package).
    pub fn mariadb() -> DbServer {
        let bin = ["/usr/sbin", "/usr/bin"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("mariadbd").exists())
            .unwrap_or_else(|| panic!("MariaDB is not installed (mariadbd): run bin/setup"));
        let mut server = DbServer::new(Engine::MariaDb, bin);
        let data = server.data_dir();
        server.run_setup(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg("--auth-root-authentication-method=normal")
                .args(["--skip-test-db", "--skip-name-resolve"]),
            "mariadb-install-db",
            true,
        );
        server.start_first();
        let sql = format!(
            "CREATE DATABASE {DATABASE}; \
             CREATE USER '{USER}'@'%' IDENTIFIED BY '{pw}'; \
             GRANT ALL ON {DATABASE}.* TO '{USER}'@'%';",
            pw = server.password
        );
        let socket = server.socket();
        server.run_setup(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", socket.display()))
                .args(["-u", "root", "-e", &sql]),
            "mariadb (create the user and database)",
            false,
        );
        server
    }

    fn new(engine: Engine, bin: PathBuf) -> DbServer {
        let dir = tempfile::Builder::new()
            .prefix("mofa-db-")
            .tempdir()
            .expect("temp dir for the database");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let server = DbServer {
            engine,
            port: free_port(),
            password: format!("Pw{:x}{:x}", std::process::id(), nanos),
            bin,
            run_as: if is_root() { Some(nobody()) } else { None },
            child: None,
            dir,
        };
        server.hand_over(server.dir.path());
        server
    }

    /// The sqlx URL: `postgres://mofa:PASSWORD@127.0.0.1:PORT/mofa` or `mysql://...`.
    pub fn url(&self) -> String {
        let scheme = match self.engine {
            Engine::Postgres => "postgres",
            Engine::MariaDb => "mysql",
        };
        format!(
            "{scheme}://{USER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temp folder with the server's data, socket and log (`server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server (again: same port, same data) and waits until it accepts connections.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let log_path = self.dir.path().join("server.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("server log");
        let from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = match self.engine {
            Engine::Postgres => {
                let mut c = Command::new(self.bin.join("postgres"));
                c.arg("-D")
                    .arg(self.data_dir())
                    .args(["-p", &self.port.to_string()])
                    .arg("-k")
                    .arg(self.dir.path())
                    .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                    .args(["-c", "shared_buffers=16MB", "-c", "max_connections=30"]);
                c
            }
            Engine::MariaDb => {
                let d = self.dir.path();
                let mut c = Command::new(self.bin.join("mariadbd"));
                c.arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data_dir().display()))
                    .arg(format!("--port={}", self.port))
                    .args(["--bind-address=127.0.0.1", "--skip-networking=0"])
                    .arg(format!("--socket={}", self.socket().display()))
                    .arg(format!("--pid-file={}", d.join("mariadbd.pid").display()))
                    .arg(format!("--tmpdir={}", d.display()))
                    .args(["--skip-name-resolve", "--skip-log-bin"])
                    .args([
                        "--innodb-buffer-pool-size=32M",
                        "--innodb-flush-log-at-trx-commit=2",
                    ]);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {:?} ({}): {e}",
                self.engine,
                self.bin.display()
            )
        });
        self.child = Some(child);
        self.wait_ready(&log_path, from)
    }

    /// Stops the server as an operator would (PostgreSQL: fast shutdown, MariaDB: normal
    /// shutdown): its clients' connections drop. The data stays for [`start`](Self::start).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let signal = match self.engine {
            Engine::Postgres => "-INT",
            Engine::MariaDb => "-TERM",
        };
        signal_pid(child.id(), signal);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadbd.sock")
    }

    /// Gives `path` to the user the server runs as.
    fn hand_over(&self, path: &Path) {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    /// Runs a set-up command (as the server's user if `as_server`); panics with its output if
    /// it fails.
    fn run_setup(&self, cmd: &mut Command, what: &str, as_server: bool) {
        if let Some((uid, gid)) = self.run_as.filter(|_| as_server) {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        if !out.status.success() {
            panic!(
                "{what} failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Waits until the server accepts connections; if it exits first, its log since `from`.
    fn wait_ready(&mut self, log: &Path, from: u64) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let log_since = || {
            let text = std::fs::read(log).unwrap_or_default();
            String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned()
        };
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "{:?} exited at start ({status}):\n{}",
                    self.engine,
                    log_since()
                ));
            }
            if self.accepts() {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "{:?} did not accept connections within {} s:\n{}",
                    self.engine,
                    READY_WITHIN.as_secs(),
                    log_since()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first start: if another process took the port since it was picked, another port.
    fn start_first(&mut self) {
        for _ in 0..5 {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if e.contains("Address already in use") => self.port = free_port(),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{:?}: no free port after 5 tries", self.engine);
    }

    /// Whether the server answers on TCP and on its admin path.
    fn accepts(&self) -> bool {
        let addr = ([127, 0, 0, 1], self.port).into();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return false;
        }
        let status = match self.engine {
            Engine::Postgres => Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-q"])
                .status(),
            Engine::MariaDb => Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-u", "root", "--silent", "ping"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        };
        status.is_ok_and(|s| s.success())
    }
}

impl Drop for DbServer {
    /// Kills the server by its PID: PostgreSQL with an immediate shutdown first (SIGQUIT, which
    /// also ends its backends), then SIGKILL if it is still there after a few seconds.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.engine == Engine::Postgres {
            signal_pid(child.id(), "-QUIT");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of `nobody`, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"nobody") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .unwrap_or((65534, 65534))
}

/// PostgreSQL's bin folder, the newest version installed.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_replaced_and_drop_kills_the_server_and_removes_its_folder() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut server = DbServer::postgres_at(port);
        assert_ne!(server.port(), port);
        assert!(server.url().ends_with(&format!(":{}/mofa", server.port())));
        let (pid, dir) = (server.pid().unwrap(), server.dir().to_owned());
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        server.stop();
        assert!(!server.is_running() && !Path::new(&format!("/proc/{pid}")).exists());
        server.start();
        let pid = server.pid().unwrap();
        drop(server);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "killed");
        assert!(!dir.exists(), "folder removed");
    }
}
