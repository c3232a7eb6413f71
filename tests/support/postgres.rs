//! A throw-away PostgreSQL server for the tests that run the store on
//! PostgreSQL, and a fresh database per test.
//!
//! - One server per test process, started on first use ([`cluster`]): its
//!   own data directory under the temp dir, `initdb` with SCRAM
//!   authentication and an admin with a random password, listening on
//!   127.0.0.1 only, on a free port, with `fsync` on (durability is what
//!   the store promises, so the tests do not switch it off).
//! - Gone when the test process ends, however it ends: stopped at exit
//!   (`atexit`, which a panicking test still reaches), and by a detached
//!   watchdog that waits for the test process to die (a SIGKILL, an
//!   abort) and then stops the server and removes its directory.
//! - `AIRLOCK_TEST_PG_ADMIN_URL` (`postgres://USER@HOST:PORT/DB`, with
//!   its password in the file `AIRLOCK_TEST_PG_ADMIN_PASSWORD_FILE`)
//!   names a server to use instead; it is not stopped, and each database
//!   made on it is dropped again.
//! - Each [`database`] belongs to a role of its own (not a superuser), so
//!   the store's migrations run with the privileges a real deployment
//!   gives airlock: owner of its database, nothing more.
//! - Secrets never reach an argument list: passwords go to `psql` in its
//!   environment and to SQL on its standard input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Set to `postgres` to run a suite's stores on PostgreSQL.
pub const STORE_ENV: &str = "AIRLOCK_TEST_STORE";
/// A server to use instead of starting one.
pub const ADMIN_URL_ENV: &str = "AIRLOCK_TEST_PG_ADMIN_URL";
pub const ADMIN_PASSWORD_FILE_ENV: &str = "AIRLOCK_TEST_PG_ADMIN_PASSWORD_FILE";

/// The admin role `initdb` creates in a server of ours.
const ADMIN_USER: &str = "airlock_admin";

/// The shared server.
#[derive(Debug)]
pub struct Cluster {
    /// Where `initdb`, `pg_ctl`, `psql` and `pg_dump` are.
    pub bin_dir: PathBuf,
    /// The server's data directory; `None` for a server named by
    /// [`ADMIN_URL_ENV`] (not ours to stop or start).
    pub data_dir: Option<PathBuf>,
    /// The server's log file (ours only).
    pub log_file: Option<PathBuf>,
    /// Its Unix socket directory (ours only).
    pub socket_dir: Option<PathBuf>,
    pub host: String,
    pub port: u16,
    pub admin_user: String,
    /// The admin's password, in a file only its owner can read.
    pub admin_password_file: Option<PathBuf>,
    admin_password: Option<String>,
    /// The database the admin connects to.
    admin_db: String,
    /// `runuser -u postgres --` when the tests run as root: the server
    /// refuses to run as root, so ours runs as the `postgres` user.
    run_as: Vec<String>,
    /// Everything of ours (server, password files): removed at exit.
    root: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The shared server, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let cluster = match std::env::var(ADMIN_URL_ENV) {
            Ok(url) if !url.is_empty() => Cluster::external(&url),
            _ => Cluster::start(),
        };
        register_exit_hook();
        cluster
    })
}

/// A fresh, empty database on the shared server, owned by a role of its
/// own whose password is in a 0600 file.
pub fn database() -> TestDatabase {
    cluster().create_database()
}

/// A fresh database when [`STORE_ENV`] says `postgres`; `None` (SQLite in
/// the data directory) when it is unset or `sqlite`.
pub fn for_env() -> Option<TestDatabase> {
    match std::env::var(STORE_ENV).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => None,
        Ok("postgres") => Some(database()),
        Ok(other) => panic!("{STORE_ENV}={other:?}: expected `postgres` or `sqlite`"),
    }
}

/// The `[store]` section for the backend [`STORE_ENV`] names: empty for
/// SQLite. The database lives as long as the test process (see
/// [`for_env`] to hold it and drop it sooner).
pub fn store_section_for_env() -> String {
    match for_env() {
        None => String::new(),
        Some(db) => {
            let section = db.store_section();
            std::mem::forget(db);
            section
        }
    }
}

/// One test's database.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    /// The role that owns it (not a superuser).
    pub user: String,
    /// `postgres://USER@127.0.0.1:PORT/NAME`, without the password.
    pub url: String,
    /// The role's password, mode 0600.
    pub password_file: PathBuf,
}

impl TestDatabase {
    /// The `[store]` section that points airlock at this database.
    pub fn store_section(&self) -> String {
        format!("\n[store]\n{}", self.store_body())
    }

    fn store_body(&self) -> String {
        // A connection may take its time to open on a busy CI machine (the
        // default, 5 s, is for telling an unreachable database quickly);
        // a stopped server still refuses at once.
        format!(
            "url = {}\npassword-file = {}\ntls = \"disable\"\nconnect-timeout-secs = 30\n",
            toml_string(&self.url),
            toml_string(&self.password_file.display().to_string())
        )
    }

    /// The store settings [`TestDatabase::store_section`] makes, parsed as
    /// airlock parses a config's `[store]`.
    pub fn settings(&self) -> airlock::store::settings::StoreSettings {
        let raw: airlock::store::settings::RawStoreSettings =
            toml::from_str(&self.store_body()).expect("the [store] section parses");
        airlock::store::settings::StoreSettings::resolve(&raw, &|p: &Path| p.to_path_buf())
            .expect("the [store] section is valid")
    }

    /// Run `sql` in this database as the server's admin; returns what
    /// `psql` printed (unaligned, tuples only). Panics on an SQL error.
    pub fn psql(&self, sql: &str) -> String {
        cluster().psql(&self.name, sql)
    }

    /// Every row of every table, as `pg_dump --data-only` writes them.
    pub fn dump(&self) -> String {
        let c = cluster();
        let out = c
            .client_command("pg_dump")
            .args(["--data-only", "--no-owner", "-d", &self.name])
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // A failing test shows what the server said meanwhile (the test
        // harness prints this with the failure).
        if std::thread::panicking() {
            cluster().print_log_tail(60);
        }
        // A server of ours is thrown away whole; on a server named by the
        // environment, the database and its role go (best effort: a panic
        // here would hide the test's own failure).
        let c = cluster();
        if c.data_dir.is_none() {
            let _ = c.try_psql(
                &c.admin_db,
                &format!(
                    "DROP DATABASE IF EXISTS {0} WITH (FORCE);\nDROP ROLE IF EXISTS {0};\n",
                    self.name
                ),
            );
        }
    }
}

impl Cluster {
    /// `initdb` and start a server of our own.
    fn start() -> Cluster {
        let bin_dir = server_bin_dir();
        let run_as = if is_root() {
            vec!["runuser".into(), "-u".into(), "postgres".into(), "--".into()]
        } else {
            Vec::new()
        };
        let root = std::env::temp_dir().join(format!("airlock-pg-{}-{}", std::process::id(), random_hex(6)));
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        // Before anything else: whatever happens from here on, the server
        // and the directory go when this process does.
        spawn_watchdog(&bin_dir, &root.join("pg/data"), &run_as, &root);
        // The server's user must reach its directory through ours.
        set_mode(&root, 0o711);
        let secrets = root.join("secrets");
        std::fs::create_dir(&secrets).expect("create the secrets directory");
        set_mode(&secrets, 0o700);
        let pg = root.join("pg");
        std::fs::create_dir(&pg).expect("create the server directory");
        set_mode(&pg, 0o700);
        let socket_dir = pg.join("sock");
        std::fs::create_dir(&socket_dir).expect("create the socket directory");
        let password = random_hex(24);
        let initdb_pw = pg.join("initdb.pw");
        write_private(&initdb_pw, &password);
        if is_root() {
            let (uid, gid) = postgres_ids();
            for p in [&pg, &socket_dir, &initdb_pw] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("cannot chown {} to postgres: {e}", p.display()));
            }
        }
        if !run_as.is_empty() {
            // The temp dir must let the server's user through (a TMPDIR
            // under /root does not).
            let reachable = Command::new(&run_as[0])
                .args(&run_as[1..])
                .args(["test", "-w"])
                .arg(&pg)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                reachable,
                "the postgres user cannot write {}: set TMPDIR to a directory every user can pass through (e.g. /tmp)",
                pg.display()
            );
        }
        let admin_password_file = secrets.join("admin.pw");
        write_private(&admin_password_file, &password);

        let data_dir = pg.join("data");
        let out = Command::new(run_as_program(&run_as, &bin_dir, "initdb"))
            .args(run_as_args(&run_as, &bin_dir, "initdb"))
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", ADMIN_USER, "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", initdb_pw.display()))
            // The cluster's initial files need no sync: a crash of the
            // machine ends the test run anyway. The server syncs (fsync=on).
            .arg("--no-sync")
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&initdb_pw);

        let log_file = pg.join("server.log");
        let mut last_failure = String::new();
        // A free port can be taken by someone else before the server binds
        // it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let options = server_options(port, &socket_dir);
            let out = Command::new(run_as_program(&run_as, &bin_dir, "pg_ctl"))
                .args(run_as_args(&run_as, &bin_dir, "pg_ctl"))
                .arg("-D")
                .arg(&data_dir)
                .arg("-l")
                .arg(&log_file)
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .stdin(Stdio::null())
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                return Cluster {
                    bin_dir,
                    data_dir: Some(data_dir),
                    log_file: Some(log_file),
                    socket_dir: Some(socket_dir),
                    host: "127.0.0.1".into(),
                    port,
                    admin_user: ADMIN_USER.into(),
                    admin_password_file: Some(admin_password_file),
                    admin_password: Some(password),
                    admin_db: "postgres".into(),
                    run_as,
                    root,
                };
            }
            last_failure = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log_file).unwrap_or_default()
            );
            if !last_failure.contains("already in use") && !last_failure.contains("could not bind") {
                break;
            }
        }
        panic!("the test PostgreSQL server did not start: {last_failure}");
    }

    /// A server named by [`ADMIN_URL_ENV`].
    fn external(url: &str) -> Cluster {
        let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{ADMIN_URL_ENV} is not a URL: {e}"));
        assert!(
            parsed.password().is_none(),
            "{ADMIN_URL_ENV} holds a password; put it in the file {ADMIN_PASSWORD_FILE_ENV} names"
        );
        let (admin_password, admin_password_file) = match std::env::var_os(ADMIN_PASSWORD_FILE_ENV) {
            Some(file) => {
                let file = PathBuf::from(file);
                let text = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("cannot read {ADMIN_PASSWORD_FILE_ENV} {}: {e}", file.display()));
                (Some(text.trim_end_matches(['\r', '\n']).to_string()), Some(file))
            }
            None => (None, None),
        };
        let root = std::env::temp_dir().join(format!("airlock-pg-{}-{}", std::process::id(), random_hex(6)));
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        set_mode(&root, 0o700);
        std::fs::create_dir(root.join("secrets")).expect("create the secrets directory");
        let bin_dir = client_bin_dir();
        spawn_watchdog(&bin_dir, Path::new(""), &[], &root);
        Cluster {
            bin_dir,
            data_dir: None,
            log_file: None,
            socket_dir: None,
            host: parsed.host_str().unwrap_or("127.0.0.1").to_string(),
            port: parsed.port().unwrap_or(5432),
            admin_user: parsed.username().to_string(),
            admin_password_file,
            admin_password,
            admin_db: match parsed.path().trim_start_matches('/') {
                "" => "postgres".into(),
                db => db.to_string(),
            },
            run_as: Vec::new(),
            root,
        }
    }

    /// A command running one of the server's programs (`pg_ctl`, …) as
    /// the user the server runs as: for tests that stop and start it.
    pub fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(run_as_program(&self.run_as, &self.bin_dir, program));
        cmd.args(run_as_args(&self.run_as, &self.bin_dir, program))
            .stdin(Stdio::null());
        cmd
    }

    /// `pg_ctl ARGS -D DATA-DIR` on our server; panics on a server named
    /// by the environment, which is not ours to control.
    pub fn pg_ctl(&self, args: &[&str]) -> Output {
        let data_dir = self
            .data_dir
            .as_ref()
            .unwrap_or_else(|| panic!("the server named by {ADMIN_URL_ENV} is not ours to stop or start"));
        self.server_command("pg_ctl")
            .arg("-D")
            .arg(data_dir)
            .args(args)
            .output()
            .expect("run pg_ctl")
    }

    /// Stop our server (`pg_ctl stop -m fast`: connections are cut at
    /// once), for tests of what airlock does while the database is gone.
    /// Every test using the server meanwhile sees it gone too.
    pub fn stop_server(&self) {
        let out = self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start our server again after [`Cluster::stop_server`], on the same
    /// port and socket directory.
    pub fn start_server(&self) {
        let socket_dir = self
            .socket_dir
            .as_ref()
            .expect("a server of ours has a socket directory");
        let log_file = self.log_file.as_ref().expect("a server of ours has a log file");
        let options = server_options(self.port, socket_dir);
        let log = log_file.display().to_string();
        let out = self.pg_ctl(&["-l", &log, "-w", "-t", "60", "-o", &options, "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(log_file).unwrap_or_default()
        );
    }

    /// A client program (`psql`, `pg_dump`) connecting as the admin.
    fn client_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = Command::new(if path.exists() { path } else { PathBuf::from(program) });
        cmd.args(["-h", &self.host, "-p", &self.port.to_string(), "-U", &self.admin_user])
            // Generous: on a loaded 2-core CI machine, with many tests
            // creating databases at once, a connection has taken over 10 s.
            // A dead server still fails, just later.
            .env("PGCONNECT_TIMEOUT", "60")
            .env("PGSSLMODE", "disable")
            .env_remove("PGPASSFILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &self.admin_password {
            Some(pw) => cmd.env("PGPASSWORD", pw),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd
    }

    /// Run `sql` in `db` as the admin; panics on an error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql on {db} failed: {e}\nSQL: {sql}"))
    }

    /// Run `sql` (on standard input, so nothing of it is in an argument
    /// list) in `db` as the admin.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        use std::io::Write as _;
        let mut child = self
            .client_command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"])
            .spawn()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(|e| format!("cannot write to psql: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn create_database(&self) -> TestDatabase {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        // Unique across test processes sharing a server.
        let name = format!(
            "airlock_t{}_{}_{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed),
            random_hex(4)
        );
        let password = random_hex(24);
        // Our server logs slow statements, and a failing test prints the
        // log: never this one, which holds the password.
        let unlogged = if self.data_dir.is_some() {
            "SET log_min_duration_statement = -1;\n"
        } else {
            ""
        };
        // Identifiers and the password are [a-z0-9_] only: nothing to quote.
        self.psql(
            &self.admin_db,
            &format!(
                "{unlogged}CREATE ROLE {name} LOGIN PASSWORD '{password}';\nCREATE DATABASE {name} OWNER {name};\n"
            ),
        );
        let password_file = self.root.join("secrets").join(format!("{name}.pw"));
        write_private(&password_file, &password);
        TestDatabase {
            url: format!("postgres://{name}@{}:{}/{name}", url_host(&self.host), self.port),
            user: name.clone(),
            name,
            password_file,
        }
    }

    /// Print the last `lines` lines of the server's log (a server of
    /// ours only) to stderr. Never panics: it runs while a test unwinds,
    /// where a second panic would abort the run.
    pub fn print_log_tail(&self, lines: usize) {
        use std::io::Write as _;
        let Some(log) = &self.log_file else { return };
        let text = match std::fs::read(log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", log.display()),
        };
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "--- the test PostgreSQL server's log, last {} lines ---",
            tail.len()
        );
        for line in tail {
            let _ = writeln!(err, "{line}");
        }
        let _ = writeln!(err, "--- end of the server's log ---");
    }

    /// Stop the server (if ours) and remove our directory.
    /// Never panics: it runs at exit, where a panic would abort.
    fn shut_down(&self) {
        if let Some(data_dir) = &self.data_dir {
            let _ = self
                .server_command("pg_ctl")
                .arg("-D")
                .arg(data_dir)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The server's settings (`pg_ctl -o`), the same at every start: loopback
/// only, `fsync` on (durability is what the store promises), and enough
/// connections for many stores' pools at once. Slow statements, lock
/// waits and checkpoints are logged, for a failing test to show (see
/// [`Cluster::print_log_tail`]).
fn server_options(port: u16, socket_dir: &Path) -> String {
    format!(
        "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=300 \
         -c log_min_duration_statement=1000 -c log_lock_waits=on -c log_checkpoints=on",
        socket_dir.display()
    )
}

/// Stop the server when the process exits normally (the test harness
/// ends with `exit`, after passing or failing tests alike), so nothing is
/// left when `cargo test` returns; the watchdog covers every other end.
fn register_exit_hook() {
    unsafe extern "C" {
        fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
    }
    extern "C" fn at_exit() {
        // Only a cluster fully made (`get`, never `get_or_init`): at an
        // exit while it is being made, the watchdog cleans up.
        if let Some(c) = CLUSTER.get() {
            c.shut_down();
        }
    }
    // SAFETY: `atexit` is the C library's, given a function that takes and
    // returns nothing and does not unwind (it ignores every error).
    let registered = unsafe { atexit(at_exit) };
    assert_eq!(registered, 0, "atexit failed");
}

/// Wait (detached, in a session of its own, holding none of our output
/// pipes, so `cargo test` does not wait for it) for this process to end,
/// then stop the server and remove `root`.
fn spawn_watchdog(bin_dir: &Path, data_dir: &Path, run_as: &[String], root: &Path) {
    const SCRIPT: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
if [ -n "$3" ] && [ -f "$3/postmaster.pid" ]; then
    $4 "$2/pg_ctl" -D "$3" -m immediate -w -t 30 stop >/dev/null 2>&1
    if [ -f "$3/postmaster.pid" ]; then kill -9 "$(head -n 1 "$3/postmaster.pid")" 2>/dev/null; fi
fi
rm -rf "$5"
"#;
    let data = if data_dir.as_os_str().is_empty() {
        String::new()
    } else {
        data_dir.display().to_string()
    };
    // `setsid -f` forks: the watchdog is nobody's child here (so nothing
    // waits for it, and it outlives us), and `setsid` itself returns at once.
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c", SCRIPT, "airlock-pg-watchdog"])
        .arg(std::process::id().to_string())
        .arg(bin_dir)
        .arg(data)
        .arg(run_as.join(" "))
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start the PostgreSQL watchdog (setsid, sh)");
    assert!(
        started.success(),
        "setsid failed to start the PostgreSQL watchdog: {started}"
    );
}

/// Where the server programs are: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `initdb` on the `PATH`.
fn server_bin_dir() -> PathBuf {
    find_bin_dir("initdb").unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed: install Debian's `postgresql` package \
             (`apt-get install postgresql`; scripts/test.sh does), or set {ADMIN_URL_ENV} to use a running server"
        )
    })
}

/// Where `psql` is, for a server named by the environment.
fn client_bin_dir() -> PathBuf {
    find_bin_dir("psql").unwrap_or_else(|| {
        panic!("psql is not installed: install Debian's `postgresql-client` (or `postgresql`) package")
    })
}

fn find_bin_dir(program: &str) -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| d.join(program).exists()) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join(program).exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.exists())
            .and_then(|p| std::fs::canonicalize(p).ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
    })
}

fn run_as_program(run_as: &[String], bin_dir: &Path, program: &str) -> PathBuf {
    match run_as.first() {
        Some(first) => PathBuf::from(first),
        None => bin_dir.join(program),
    }
}

fn run_as_args(run_as: &[String], bin_dir: &Path, program: &str) -> Vec<std::ffi::OsString> {
    match run_as.split_first() {
        Some((_, rest)) => rest
            .iter()
            .map(Into::into)
            .chain([bin_dir.join(program).into_os_string()])
            .collect(),
        None => Vec::new(),
    }
}

fn is_root() -> bool {
    id(&["-u"]) == 0
}

/// The `postgres` user's uid and gid (Debian's package creates it).
fn postgres_ids() -> (u32, u32) {
    (id(&["-u", "postgres"]), id(&["-g", "postgres"]))
}

fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("run id");
    assert!(
        out.status.success(),
        "`id {}` failed (is Debian's `postgresql` package installed? it creates the `postgres` user): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("id prints a number")
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("a bound address").port()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `text` to a new file only its owner can read.
fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
