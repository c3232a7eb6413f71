//! A throw-away PostgreSQL server for `loadgen`'s store scenarios.
//!
//! - [`PgServer::start`] runs `initdb` (SCRAM authentication, an admin
//!   with a random password) in a temp directory of its own and starts the
//!   server on a free port, listening on 127.0.0.1 only, with the
//!   durability settings a deployment has (`fsync`, `synchronous_commit`
//!   on) and `pg_stat_statements` loaded, so a run can say where the
//!   database's time went.
//! - As root, the server programs run as the `postgres` user (`runuser -u
//!   postgres --`): the server refuses to run as root.
//! - The server is stopped (`pg_ctl -m immediate stop`) and its directory
//!   removed when the guard is dropped (a normal end, an error, a panic),
//!   and by a detached watchdog when the load generator dies any other way
//!   (SIGKILL, Ctrl-C), so nothing is left running on a shared machine.
//! - Passwords never reach an argument list: they go to `psql` in its
//!   environment, to SQL on its standard input, and to airlock in a file
//!   only its owner can read.

use anyhow::{Context as _, Result, bail};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The admin role `initdb` creates.
const ADMIN: &str = "loadgen_admin";

/// A running server of ours; stopped when dropped.
pub struct PgServer {
    bin_dir: PathBuf,
    /// Everything of ours: the server's directory and the password files.
    root: tempfile::TempDir,
    data_dir: PathBuf,
    pub port: u16,
    /// `runuser -u postgres --` when we run as root.
    run_as: Vec<String>,
    admin_password: String,
    running: bool,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the admin password.
        f.debug_struct("PgServer")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// One database on the server, owned by a role of its own (not a
/// superuser, as a deployment would give airlock).
#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    /// `postgres://ROLE@127.0.0.1:PORT/NAME`, without the password.
    pub url: String,
    /// The role's password, mode 0600.
    pub password_file: PathBuf,
}

impl Database {
    /// The `[store]` section that points airlock at this database.
    pub fn store_section(&self) -> String {
        format!(
            "\n[store]\nurl = {}\npassword-file = {}\ntls = \"disable\"\n",
            toml_string(&self.url),
            toml_string(&self.password_file.display().to_string())
        )
    }

    /// The same settings, for opening the store in this process.
    pub fn settings(&self) -> airlock::store::settings::StoreSettings {
        use airlock::store::settings::{DEFAULT_CONNECT_TIMEOUT, PasswordSource, PgSettings, TlsMode};
        airlock::store::settings::StoreSettings {
            postgres: Some(PgSettings {
                url: self.url.clone(),
                password: PasswordSource::File(self.password_file.clone()),
                tls: TlsMode::Disable,
                ca_file: None,
                pool_size: 16,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            }),
        }
    }
}

impl PgServer {
    /// `initdb` and start a server in a fresh temp directory.
    pub fn start() -> Result<PgServer> {
        let bin_dir = bin_dir()?;
        let root_user = is_root()?;
        let run_as: Vec<String> = if root_user {
            ["runuser", "-u", "postgres", "--"].map(String::from).to_vec()
        } else {
            Vec::new()
        };
        let root = tempfile::Builder::new().prefix("loadgen-pg-").tempdir()?;
        let data_dir = root.path().join("pg/data");
        // First of all: whatever happens from here on, the server and the
        // directory go when this process does.
        spawn_watchdog(&bin_dir, &data_dir, &run_as, root.path())?;
        // The server's user reaches its directory through ours.
        set_mode(root.path(), 0o711)?;
        let secrets = root.path().join("secrets");
        std::fs::create_dir(&secrets)?;
        set_mode(&secrets, 0o700)?;
        let pg = root.path().join("pg");
        std::fs::create_dir(&pg)?;
        set_mode(&pg, 0o700)?;
        let socket_dir = pg.join("sock");
        std::fs::create_dir(&socket_dir)?;
        let admin_password = random_hex(24)?;
        let pwfile = pg.join("initdb.pw");
        write_private(&pwfile, &admin_password)?;
        if root_user {
            let (uid, gid) = (id(&["-u", "postgres"])?, id(&["-g", "postgres"])?);
            for p in [&pg, &socket_dir, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to postgres", p.display()))?;
            }
        }
        let mut server = PgServer {
            bin_dir,
            root,
            data_dir,
            port: 0,
            run_as,
            admin_password,
            running: false,
        };
        let out = server
            .server_command("initdb")
            .arg("-D")
            .arg(&server.data_dir)
            .args([
                "-U",
                ADMIN,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .context("run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::remove_file(&pwfile)?;
        let log = pg.join("server.log");
        let mut last = String::new();
        // A free port can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c max_connections=200 \
                 -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all \
                 -c fsync=on -c synchronous_commit=on",
                socket_dir.display()
            );
            let out = server
                .server_command("pg_ctl")
                .arg("-D")
                .arg(&server.data_dir)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output()
                .context("run pg_ctl start")?;
            if out.status.success() {
                server.port = port;
                server.running = true;
                return Ok(server);
            }
            last = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            if !last.contains("already in use") && !last.contains("could not bind") {
                break;
            }
        }
        bail!("PostgreSQL did not start: {last}")
    }

    /// The server's version, e.g. `15.14`.
    pub fn version(&self) -> Result<String> {
        Ok(self.psql("postgres", "SHOW server_version")?.trim().to_string())
    }

    /// A fresh database owned by a new role, with `pg_stat_statements`
    /// installed (by the admin) to read its statements' times.
    pub fn create_database(&self, name: &str) -> Result<Database> {
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            bail!("database name {name:?}: use [a-z0-9_] only");
        }
        let password = random_hex(24)?;
        // Identifiers and password are [a-z0-9_]: nothing to quote.
        self.psql(
            "postgres",
            &format!("CREATE ROLE {name} LOGIN PASSWORD '{password}';\nCREATE DATABASE {name} OWNER {name};\n"),
        )?;
        self.psql(name, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;")?;
        let password_file = self.root.path().join("secrets").join(format!("{name}.pw"));
        write_private(&password_file, &password)?;
        Ok(Database {
            url: format!("postgres://{name}@127.0.0.1:{}/{name}", self.port),
            name: name.to_string(),
            password_file,
        })
    }

    /// Run `sql` (on standard input) in `db` as the admin; what `psql`
    /// printed, unaligned, tuples only, fields separated by `|`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let psql = self.bin_dir.join("psql");
        let mut child = Command::new(if psql.exists() { psql } else { PathBuf::from("psql") })
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ADMIN, "-d", db])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .env("PGPASSWORD", &self.admin_password)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSFILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run psql")?;
        child.stdin.take().context("psql's stdin")?.write_all(sql.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("psql on {db} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The postmaster's pid (its backends are its children).
    pub fn postmaster_pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).context("postmaster.pid")?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid has no pid")
    }

    /// The server's programs, run as the user the server runs as.
    fn server_command(&self, program: &str) -> Command {
        let exe = self.bin_dir.join(program);
        let mut cmd = match self.run_as.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Stop the server now (`-m immediate`: nothing of it is kept).
    pub fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            let _ = self
                .server_command("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Where the server programs are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait (detached, in a session of its own) for this process to end, then
/// stop the server if it still runs and remove `root`.
fn spawn_watchdog(bin_dir: &Path, data_dir: &Path, run_as: &[String], root: &Path) -> Result<()> {
    const SCRIPT: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
if [ -f "$3/postmaster.pid" ]; then
    $4 "$2/pg_ctl" -D "$3" -m immediate -w -t 30 stop >/dev/null 2>&1
fi
rm -rf "$5"
"#;
    Command::new("setsid")
        .args(["sh", "-c", SCRIPT, "loadgen-pg-watchdog"])
        .arg(std::process::id().to_string())
        .arg(bin_dir)
        .arg(data_dir)
        .arg(run_as.join(" "))
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start the PostgreSQL watchdog (setsid, sh)")?;
    Ok(())
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb`, else `pg_config
/// --bindir`.
fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    if let Ok(out) = out
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    bail!("PostgreSQL's server programs (initdb, pg_ctl) are not installed: `apt-get install postgresql`")
}

fn is_root() -> Result<bool> {
    Ok(id(&["-u"])? == 0)
}

fn id(args: &[&str]) -> Result<u32> {
    let out = Command::new("id").args(args).output().context("run id")?;
    if !out.status.success() {
        bail!(
            "`id {}` failed (Debian's postgresql package creates the `postgres` user): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
