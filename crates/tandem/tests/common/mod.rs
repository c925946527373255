//! Helpers for tests that drive the `tandem` binary on real SQLite files.
#![allow(dead_code)]

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh folder for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tandem-test-{name}-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tandem")
}

pub fn tandem(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("TANDEM_LOG", "warn").output().expect("tandem runs")
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn db(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c
}

/// Rows of a query as plain strings (NULL for null), for comparisons.
pub fn rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    let mut out = Vec::new();
    let mut r = stmt.query([]).unwrap();
    while let Some(row) = r.next().unwrap() {
        out.push(
            (0..n)
                .map(|i| match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Real(v) => v.to_string(),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    rusqlite::types::ValueRef::Blob(b) => format!("{b:?}"),
                })
                .collect(),
        );
    }
    out
}

/// Two small databases and a config pairing them: `a.db` people(id, name, email, note, tier)
/// and `b.db` clients(no, first, last, mail, memo, level NOT NULL).
pub fn pair(dir: &TempDir, extra: &str) -> PathBuf {
    db(&dir.path("a.db"))
        .execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, email TEXT, note TEXT, tier TEXT);")
        .unwrap();
    db(&dir.path("b.db"))
        .execute_batch("CREATE TABLE clients (no INTEGER PRIMARY KEY AUTOINCREMENT, first TEXT NOT NULL, last TEXT, mail TEXT, memo TEXT, level TEXT NOT NULL DEFAULT 'std');")
        .unwrap();
    let cfg = format!(
        r#"state = "state.db"
poll_interval_ms = 50
[systems.a]
kind = "sqlite"
path = "a.db"
[systems.b]
kind = "sqlite"
path = "b.db"
[[sync]]
name = "people"
left = {{ system = "a", table = "people" }}
right = {{ system = "b", table = "clients" }}
match_on = {{ left = "email", right = "mail", case_insensitive = true }}
{extra}
[[sync.fields]]
left = "name"
right = ["first", "last"]
transform = "split_name"
[[sync.fields]]
left = "email"
right = "mail"
[[sync.fields]]
left = "note"
right = "memo"
[[sync.fields]]
left = "tier"
right = "level"
transform = {{ map = {{ "gold" = "GLD", "standard" = "std" }} }}
"#
    );
    let path = dir.path("tandem.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// A child process killed when the test ends, however it ends.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tandem run -c CONFIG` in the background, quiet; SIGKILLed when the guard drops.
pub fn run_in_background(config: &str) -> Kill {
    Kill(
        Command::new(bin())
            .args(["run", "-c", config])
            .env("TANDEM_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tandem runs"),
    )
}

/// Runs SQL through `psql` on the local PostgreSQL (the machine's server, trust auth);
/// returns the unaligned output (`|` between fields, one row a line).
pub fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql failed on {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// A test's hold on one of the machine's servers: shared by the tests that only use it (for as
/// long as their database lives), held alone by a test that restarts the server or purges its
/// logs. A lock on a file, so it works between the threads of `cargo test` and between the
/// processes of `cargo nextest` alike.
pub struct ServerLock(std::fs::File);

impl ServerLock {
    fn open(server: &str) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("tandem-tests-{server}.lock"));
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).expect("the lock file opens")
    }

    /// Uses `server` beside other tests.
    pub fn shared(server: &str) -> ServerLock {
        let f = Self::open(server);
        f.lock_shared().expect("the server lock");
        ServerLock(f)
    }

    /// Has `server` to itself: waits until no other test uses it.
    pub fn alone(server: &str) -> ServerLock {
        let f = Self::open(server);
        f.lock().expect("the server lock");
        ServerLock(f)
    }
}

/// A database of its own for one test; dropped (with Tandem's slots and origins) at the end.
pub struct PgDb(pub String, ServerLock);

impl PgDb {
    pub fn new(name: &str) -> PgDb {
        Self::with_lock(name, ServerLock::shared("postgres"))
    }

    /// A database for a test that restarts the server: no other test uses it meanwhile.
    pub fn alone(name: &str) -> PgDb {
        Self::with_lock(name, ServerLock::alone("postgres"))
    }

    fn with_lock(name: &str, lock: ServerLock) -> PgDb {
        let db = format!("tandem_t_{name}_{}", fastrand::u32(..));
        psql("postgres", &format!("CREATE DATABASE {db}"));
        PgDb(db, lock)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }

    pub fn sql(&self, sql: &str) -> String {
        psql(&self.0, sql)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let db = &self.0;
        // One statement per -c: DROP DATABASE cannot run inside the transaction that psql
        // wraps around a multi-statement string.
        let _ = Command::new("psql")
            .args(["-X", "-Atq", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-c", &format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{db}' AND active_pid IS NOT NULL")])
            .args(["-c", &format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}'")])
            .args(["-c", &format!("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE 'tandem_{db}_%'")])
            .args(["-c", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")])
            .output();
    }
}

fn mysql_output(db: &str, sql: &str) -> Output {
    Command::new("mysql")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            "3306",
            "-uroot",
            "--default-character-set=utf8mb4",
            "-N",
            "-B",
            "--raw",
            "-e",
            sql,
        ])
        .args((!db.is_empty()).then_some(db))
        .output()
        .expect("mysql runs")
}

/// Runs SQL through the `mysql` client on the local MariaDB (root, no password); returns the
/// rows tab-separated (NULL as `NULL`), one a line.
pub fn mysql(db: &str, sql: &str) -> String {
    let out = mysql_output(db, sql);
    assert!(out.status.success(), "mysql failed on {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// A MariaDB database of its own for one test; dropped at the end.
pub struct MyDb(pub String, ServerLock);

impl MyDb {
    pub fn new(name: &str) -> MyDb {
        Self::with_lock(name, ServerLock::shared("mariadb"))
    }

    /// A database for a test that restarts the server or purges its binlog: no other test
    /// uses the server meanwhile.
    pub fn alone(name: &str) -> MyDb {
        Self::with_lock(name, ServerLock::alone("mariadb"))
    }

    fn with_lock(name: &str, lock: ServerLock) -> MyDb {
        let db = format!("tandem_t_{name}_{}", fastrand::u32(..));
        mysql("", &format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"));
        MyDb(db, lock)
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:3306/{}", self.0)
    }

    pub fn sql(&self, sql: &str) -> String {
        mysql(&self.0, sql)
    }

    /// Like `sql`, but retried when InnoDB picks this transaction as a deadlock's victim (as an
    /// application writing beside Tandem would).
    pub fn sql_retrying(&self, sql: &str) -> String {
        for _ in 0..20 {
            let out = mysql_output(&self.0, sql);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim_end().to_string();
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("Deadlock found"), "mysql failed on {sql}: {err}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("mysql kept deadlocking on {sql}");
    }
}

impl Drop for MyDb {
    fn drop(&mut self) {
        let _ = Command::new("mysql")
            .args(["-h", "127.0.0.1", "-uroot", "-e", &format!("DROP DATABASE IF EXISTS {}", self.0)])
            .output();
    }
}
