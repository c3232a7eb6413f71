//! `airlock db migrate|status` and opening a PostgreSQL store, against a
//! real server: migrations from an empty database and from the previous
//! version (data kept), a schema changed by hand refused, and every way of
//! giving the password checked without ever echoing it.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use support::{Run, airlock_with};

/// A config whose `[store]` is `store` (a section body), in a temp dir.
fn config(dir: &Path, store: &str) -> PathBuf {
    let path = dir.join("airlock.toml");
    std::fs::write(&path, format!("[runtime]\ndata-dir = \"data\"\n\n[store]\n{store}")).unwrap();
    path
}

fn airlock(args: &[&str], config: &Path) -> Run {
    let mut all = args.to_vec();
    all.extend(["--config", config.to_str().unwrap()]);
    airlock_with(&all, b"", &[])
}

fn status_json(config: &Path) -> (i32, Value) {
    let run = airlock(&["db", "status", "--json"], config);
    (run.code, serde_json::from_str(&run.stdout).unwrap_or(Value::Null))
}

fn latest() -> i64 {
    i64::from(airlock::store::migrations::latest())
}

#[test]
fn an_empty_database_is_migrated_and_then_reported_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::postgres::database();
    let config = support::config(
        dir.path(),
        &format!("[runtime]\ndata-dir = \"data\"\n{}", db.store_section()),
    );

    let (code, before) = status_json(&config);
    assert_eq!(code, 3, "pending migrations exit 3: {before}");
    assert_eq!(before["pending"], true);
    let migrations = before["migrations"].as_array().unwrap();
    assert_eq!(migrations.len() as i64, latest());
    assert!(migrations.iter().all(|m| m["applied-at"].is_null()), "{before}");

    let migrated = airlock(&["db", "migrate"], &config);
    assert_eq!(migrated.code, 0, "{migrated:?}");
    assert_eq!(
        migrated.stdout.lines().filter(|l| l.starts_with("applied")).count() as i64,
        latest()
    );
    let again = airlock(&["db", "migrate"], &config);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("up to date"), "{again:?}");

    let (code, after) = status_json(&config);
    assert_eq!(code, 0, "{after}");
    assert_eq!(after["pending"], false);
    assert!(
        after["server-version"].as_str().is_some_and(|v| !v.is_empty()),
        "{after}"
    );
    for m in after["migrations"].as_array().unwrap() {
        assert!(m["applied-at"].is_string() && m["applied-by"].as_str().is_some_and(|b| b.starts_with("airlock ")));
    }
}

#[test]
fn a_database_of_the_previous_version_is_migrated_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::postgres::database();
    let config = support::config(
        dir.path(),
        &format!("[runtime]\ndata-dir = \"data\"\n{}", db.store_section()),
    );
    let previous = (latest() - 1).to_string();
    let partial = airlock(&["db", "migrate", "--to", &previous], &config);
    assert_eq!(partial.code, 0, "{partial:?}");
    let (code, status) = status_json(&config);
    assert_eq!(code, 3, "{status}");
    let pending: Vec<i64> = status["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["applied-at"].is_null())
        .filter_map(|m| m["version"].as_i64())
        .collect();
    assert_eq!(pending, vec![latest()]);
    // Rows written by the previous version (as it wrote them).
    db.psql(
        "INSERT INTO identities (name, kind, created_at) VALUES ('alice', 'human', 1);
         INSERT INTO tokens (id, identity, roles, hash, created_at) VALUES ('tok-alice', 'alice', '[\"reviewer\"]', '\\x00', 1);",
    );
    // Any command that opens the store applies what is missing.
    let listed = airlock(&["token", "list", "--json"], &config);
    assert_eq!(listed.code, 0, "{listed:?}");
    let tokens: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(tokens[0]["id"], "tok-alice", "{tokens}");
    assert_eq!(tokens[0]["roles"][0], "reviewer");
    let (code, status) = status_json(&config);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["pending"], false);
    // --to beyond what this airlock knows is a usage error.
    let beyond = airlock(&["db", "migrate", "--to", &(latest() + 1).to_string()], &config);
    assert_eq!(beyond.code, 2, "{beyond:?}");
}

#[test]
fn a_migration_changed_by_hand_is_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::postgres::database();
    let config = support::config(
        dir.path(),
        &format!("[runtime]\ndata-dir = \"data\"\n{}", db.store_section()),
    );
    assert_eq!(airlock(&["db", "migrate"], &config).code, 0);
    db.psql("UPDATE airlock_migrations SET checksum = 'blake3:00' WHERE version = 1;");
    for args in [&["db", "status"][..], &["db", "migrate"][..], &["token", "list"][..]] {
        let run = airlock(args, &config);
        assert_ne!(run.code, 0, "{args:?}: {run:?}");
        assert!(run.stderr.contains("migration 1"), "{args:?}: {run:?}");
        assert!(run.stderr.contains("differs"), "{args:?}: {run:?}");
        run.assert_no_panic();
    }
}

#[test]
fn the_password_comes_from_a_private_file_or_the_environment_and_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::postgres::database();
    let password = std::fs::read_to_string(&db.password_file).unwrap();
    let url = format!("url = \"{}\"\ntls = \"disable\"\n", db.url);

    // In the URL: refused before connecting, without echoing it.
    let with_pw = db.url.replacen('@', &format!(":{}@", password.trim()), 1);
    let c = config(dir.path(), &format!("url = \"{with_pw}\"\ntls = \"disable\"\n"));
    let run = airlock(&["db", "status"], &c);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("password-env or password-file"), "{run:?}");
    assert!(!run.stderr.contains(password.trim()), "{run:?}");

    // A file others can read: refused, with what to do.
    let loose = dir.path().join("loose.pw");
    std::fs::write(&loose, &password).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let c = config(dir.path(), &format!("{url}password-file = \"{}\"\n", loose.display()));
    let run = airlock(&["db", "status"], &c);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("chmod 600"), "{run:?}");

    // The environment: works when set, a clear error when not.
    let c = config(dir.path(), &format!("{url}password-env = \"AIRLOCK_TEST_DB_PW\"\n"));
    let unset = airlock(&["db", "status"], &c);
    assert_ne!(unset.code, 0, "{unset:?}");
    assert!(unset.stderr.contains("$AIRLOCK_TEST_DB_PW"), "{unset:?}");
    let set = airlock_with(
        &["db", "migrate", "--config", c.to_str().unwrap()],
        b"",
        &[("AIRLOCK_TEST_DB_PW", password.trim())],
    );
    assert_eq!(set.code, 0, "{set:?}");

    // A wrong password: the server's refusal, not the password.
    let wrong = airlock_with(
        &["db", "status", "--config", c.to_str().unwrap()],
        b"",
        &[("AIRLOCK_TEST_DB_PW", "not-the-password-4d1f")],
    );
    assert_ne!(wrong.code, 0, "{wrong:?}");
    assert!(wrong.stderr.contains("password authentication failed"), "{wrong:?}");
    assert!(!wrong.stderr.contains("not-the-password-4d1f"), "{wrong:?}");
    assert!(!wrong.stderr.contains(password.trim()), "{wrong:?}");
    wrong.assert_no_panic();
}

#[test]
fn an_unreachable_database_is_a_clear_error_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = config(
        dir.path(),
        &format!(
            "url = \"postgres://airlock@127.0.0.1:{port}/airlock\"\ntls = \"disable\"\nconnect-timeout-secs = 2\n"
        ),
    );
    let started = std::time::Instant::now();
    let run = airlock(&["token", "list"], &c);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains(&format!("127.0.0.1:{port}")), "{run:?}");
    run.assert_no_panic();
    // Bounded: not hung (a loose bound, not a timing claim).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

/// A CA, and a server certificate it signed for `names`: (CA PEM, cert
/// PEM, key PEM).
fn certificates(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "airlock test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn owner_id(flag: &str) -> u32 {
    let out = std::process::Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn tls_verify_full_checks_the_servers_certificate_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::postgres::database();
    // The test server takes a certificate for `localhost` (reloadable: no
    // restart, and clients with tls = "disable" are not affected).
    let (ca, cert, key) = certificates(&["localhost"]);
    let server_dir = dir.path().join("server-tls");
    std::fs::create_dir(&server_dir).unwrap();
    let (cert_file, key_file) = (server_dir.join("server.crt"), server_dir.join("server.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&server_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The server runs as `postgres` when the tests run as root, and
        // reads only a key its own user owns.
        if std::process::Command::new("id").arg("-u").output().unwrap().stdout == b"0\n" {
            for f in [&cert_file, &key_file] {
                std::os::unix::fs::chown(f, Some(owner_id("-u")), Some(owner_id("-g"))).unwrap();
            }
        }
    }
    db.psql(&format!(
        "ALTER SYSTEM SET ssl_cert_file = '{}';\nALTER SYSTEM SET ssl_key_file = '{}';\nALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();",
        cert_file.display(),
        key_file.display()
    ));
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let (other_ca, _, _) = certificates(&["localhost"]);
    let other_ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca).unwrap();

    let password_file = db.password_file.display().to_string();
    let on_host = |host: &str| db.url.replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    let store = |url: &str, extra: &str| format!("url = \"{url}\"\npassword-file = \"{password_file}\"\n{extra}");

    // The right CA and the name in the certificate: connected, encrypted.
    let good = config(
        dir.path(),
        &store(&on_host("localhost"), &format!("ca-file = \"{}\"\n", ca_file.display())),
    );
    let run = airlock(&["db", "migrate"], &good);
    assert_eq!(run.code, 0, "{run:?}");
    let settings = airlock::policy::Policy::load(&good).unwrap().runtime.store;
    let opened = airlock::store::open(&settings, &dir.path().join("data")).unwrap();
    assert!(opened.tokens().unwrap().is_empty());
    let encrypted = db.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'airlock' AND s.ssl",
    );
    assert_ne!(encrypted.trim(), "0", "airlock's connections are not encrypted");
    let plain = db.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'airlock' AND NOT s.ssl",
    );
    assert_eq!(plain.trim(), "0");
    drop(opened);

    // Another CA, the web roots (no ca-file), or a name the certificate
    // does not hold: refused, saying why.
    for (what, cfg) in [
        (
            "another CA",
            store(
                &on_host("localhost"),
                &format!("ca-file = \"{}\"\n", other_ca_file.display()),
            ),
        ),
        ("the web roots", store(&on_host("localhost"), "")),
        (
            "the wrong name",
            store(&on_host("127.0.0.1"), &format!("ca-file = \"{}\"\n", ca_file.display())),
        ),
    ] {
        let c = config(dir.path(), &cfg);
        let run = airlock(&["db", "status"], &c);
        assert_ne!(run.code, 0, "{what}: {run:?}");
        assert!(run.stderr.to_lowercase().contains("certificate"), "{what}: {run:?}");
        run.assert_no_panic();
    }
    // Not a PEM file: a clear error before connecting.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let c = config(
        dir.path(),
        &store(&on_host("localhost"), &format!("ca-file = \"{}\"\n", junk.display())),
    );
    let run = airlock(&["db", "status"], &c);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("ca-file"), "{run:?}");
}
