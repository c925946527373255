//! PostgreSQL restarted under a running `tandem run`: it reconnects with backoff and resumes
//! from its slot. The restart would cut the connections of any test running beside it: its
//! database holds the server alone (see `ServerLock`), and it has a test binary of its own.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql").unwrap().next().unwrap().unwrap().file_name();
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version.to_str().unwrap(), "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success());
    let start = Instant::now();
    while Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-U", "postgres", "-c", "select 1"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(start.elapsed() < Duration::from_secs(60), "PostgreSQL did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tandem_resumes_after_postgres_restarts() {
    let a = PgDb::alone("restart_a");
    let dir = TempDir::new("pgrestart");
    a.sql("CREATE TABLE people (id bigserial PRIMARY KEY, name text, note text)");
    db(&dir.path("b.db")).execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, note TEXT)").unwrap();
    let cfg = format!(
        "state = \"state.db\"\npoll_interval_ms = 50\n[systems.pg]\nkind = \"postgres\"\nurl = \"{}\"\n[systems.lite]\nkind = \"sqlite\"\npath = \"b.db\"\n[[sync]]\nname = \"people\"\nleft = {{ system = \"pg\", table = \"people\" }}\nright = {{ system = \"lite\", table = \"people\" }}\n[[sync.fields]]\nleft = \"name\"\nright = \"name\"\n[[sync.fields]]\nleft = \"note\"\nright = \"note\"\n",
        a.url()
    );
    std::fs::write(dir.path("tandem.toml"), cfg).unwrap();
    let c = dir.path("tandem.toml");
    let _child = run_in_background(c.to_str().unwrap());
    let lite = db(&dir.path("b.db"));
    let wait = |sql: &str, want: i64| {
        let start = Instant::now();
        while lite.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(-1) != want {
            assert!(start.elapsed() < Duration::from_secs(90), "timed out waiting for {sql} = {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    a.sql("INSERT INTO people (name) VALUES ('before')");
    wait("SELECT count(*) FROM people WHERE name = 'before'", 1);
    restart_postgres();
    a.sql("INSERT INTO people (name) VALUES ('after'); UPDATE people SET note = 'edited after restart' WHERE name = 'before'");
    lite.execute("INSERT INTO people (name) VALUES ('from sqlite while pg was down')", []).unwrap();
    wait("SELECT count(*) FROM people WHERE name = 'after' OR note = 'edited after restart'", 2);
    let start = Instant::now();
    while a.sql("SELECT count(*) FROM people WHERE name = 'from sqlite while pg was down'") != "1" {
        assert!(start.elapsed() < Duration::from_secs(90), "SQLite's change did not reach PostgreSQL");
        std::thread::sleep(Duration::from_millis(100));
    }
}
