//! MariaDB ↔ PostgreSQL and MariaDB ↔ SQLite against the machine's servers (MariaDB's row-based
//! binlog switched on by scripts/mariadb-setup). Each test makes its own databases.
//!
//! The binlog is the server's, shared by every test: tests that purge it or restart the server
//! hold the server alone (`MyDb::alone`), the others share it (`MyDb::new`), so they never pull
//! it from under another, in `cargo test` and `cargo nextest` alike.

mod common;

use common::*;
use std::time::{Duration, Instant};

const MY_TYPES: &str = "CREATE TABLE items (id BIGINT PRIMARY KEY, i INT, tiny TINYINT, n DECIMAL(12,2), d DOUBLE,
    t TEXT, v VARCHAR(20), flag BOOL, day DATE, ts DATETIME, j JSON, bin BLOB, e ENUM('red','green'), ts6 DATETIME(6))";
const PG_TYPES: &str = "CREATE TABLE items (id bigint PRIMARY KEY, i integer, tiny smallint, n numeric(12,2),
    d double precision, t text, v varchar(40), flag boolean, day date, ts timestamp(0), j json, bin bytea, e text,
    ts6 timestamp(6))";
const COLUMNS: &[&str] = &["i", "tiny", "n", "d", "t", "v", "flag", "day", "ts", "j", "bin", "e", "ts6"];

fn config(dir: &TempDir, left: &str, right: &str, extra: &str) -> String {
    let fields: String =
        ["id"].iter().chain(COLUMNS).map(|c| format!("[[sync.fields]]\nleft = \"{c}\"\nright = \"{c}\"\n")).collect();
    let cfg = format!(
        "state = \"state.db\"\npoll_interval_ms = 50\n{left}{right}[[sync]]\nname = \"items\"\nleft = {{ system = \"a\", table = \"items\" }}\nright = {{ system = \"b\", table = \"items\" }}\n{extra}{fields}"
    );
    let path = dir.path("tandem.toml");
    std::fs::write(&path, cfg).unwrap();
    path.to_str().unwrap().to_string()
}

fn pg_system(db: &PgDb) -> String {
    format!("[systems.a]\nkind = \"postgres\"\nurl = \"{}\"\n", db.url())
}

fn my_system(db: &MyDb) -> String {
    format!("[systems.b]\nkind = \"mysql\"\nurl = \"{}\"\n", db.url())
}

fn pg_values(db: &PgDb) -> String {
    db.sql(
        "SELECT id, coalesce(i::text, 'NULL'), coalesce(tiny::text, 'NULL'), coalesce(n::text, 'NULL'), coalesce(d::text, 'NULL'),
                coalesce(t, 'NULL'), coalesce(v, 'NULL'), coalesce(flag::int::text, 'NULL'), coalesce(day::text, 'NULL'),
                coalesce(ts::text, 'NULL'), coalesce(j::text, 'NULL'), coalesce(encode(bin, 'hex'), 'NULL'), coalesce(e, 'NULL'), coalesce(ts6::text, 'NULL')
         FROM items ORDER BY id",
    )
    .replace('|', "\t")
    // The same double, spelled by each server: -1.5e+300 and -1.5e300.
    .replace("e+", "e")
}

fn my_values(db: &MyDb) -> String {
    db.sql(
        "SELECT id, i, tiny, n, d, t, v, flag, day, ts, j, IF(bin IS NULL, 'NULL', LOWER(HEX(bin))), e,
           IFNULL(TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST(ts6 AS CHAR))), 'NULL') FROM items ORDER BY id",
    )
}

fn run_once(c: &str) -> String {
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

#[test]
fn pg_and_mariadb_keep_every_type_both_ways_and_refused_values_go_to_dead_letters() {
    let (a, b) = (PgDb::new("my_types_a"), MyDb::new("types_b"));
    a.sql(PG_TYPES);
    b.sql(MY_TYPES);
    a.sql(
        "INSERT INTO items VALUES
         (1, -2147483648, 127, 1234567890.12, 0.1, 'text ✓ 🦀 \"quoted\" ''single'' \\ back', 'varchar', true, '2026-11-26', '2026-11-26 13:14:15', '{\"a\": [1, 2.5, null]}', '\\x00ff10', 'red', '2026-11-26 13:14:15.5'),
         (2, 0, 0, 0.00, -1.5e300, '', '', false, '1000-01-01', '1970-01-01 00:00:01', '[]', '\\x', 'green', '2026-11-26 13:14:15'),
         (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    );
    let dir = TempDir::new("mytypes");
    let c = config(&dir, &pg_system(&a), &my_system(&b), "");
    let check = tandem(&["check", "-c", &c]);
    assert!(check.status.success(), "{}", text(&check));
    let out = run_once(&c);
    assert!(out.contains("a → b: 3 created"), "{out}");
    assert_eq!(pg_values(&a), my_values(&b));
    assert!(my_values(&b).contains("🦀"));
    assert_eq!(b.sql("SELECT count(*) FROM items WHERE t = ''"), "1");
    assert_eq!(b.sql("SELECT count(*) FROM items WHERE t IS NULL"), "1");

    // Edits in MariaDB flow back exactly (a 4-byte character, NULL against '', a blob, JSON).
    b.sql("UPDATE items SET t = '😀 new', v = NULL, bin = X'0102', j = '{\"k\": true}', e = 'green', flag = 0 WHERE id = 1");
    b.sql("INSERT INTO items (id, t, n, ts) VALUES (4, 'made in MariaDB', 99.99, '2000-02-29 23:59:59')");
    let out = run_once(&c);
    assert!(out.contains("b → a: 1 created, 1 updated"), "{out}");
    assert_eq!(pg_values(&a), my_values(&b));
    // DATETIME(6) reads 13:14:15.500000 where PostgreSQL says 13:14:15.5: the same value, not an
    // edit that would travel back (or fight a real edit as a conflict).
    let audit = text(&tandem(&["audit", "-c", &c]));
    assert!(!audit.contains("ts6") && !audit.contains("decision"), "{audit}");

    // Values MariaDB cannot take (too long for VARCHAR(20), out of TINYINT's range) are dead
    // letters with the reason; the rest of the batch goes through.
    a.sql("UPDATE items SET v = repeat('x', 30) WHERE id = 2; UPDATE items SET tiny = 300 WHERE id = 3; UPDATE items SET i = 7 WHERE id = 1");
    let out = run_once(&c);
    assert!(out.contains("2 dead letters"), "{out}");
    assert_eq!(b.sql("SELECT i FROM items WHERE id = 1"), "7");
    let dead = text(&tandem(&["dead-letters", "-c", &c]));
    assert!(dead.contains("a text of 30 characters does not fit") && dead.contains("Out of range"), "{dead}");
    assert_eq!(
        b.sql("SELECT CONCAT(v, '|', IFNULL(tiny, 'NULL')) FROM items WHERE id IN (2, 3) ORDER BY id"),
        "|0\nNULL"
    );

    // Deletes both ways, then an idle run writes nothing on MariaDB.
    a.sql("DELETE FROM items WHERE id = 4");
    b.sql("DELETE FROM items WHERE id = 1");
    let out = std::process::Command::new(bin())
        .args(["run", "--once", "-c", &c])
        .env("TANDEM_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Tandem's own delete in MariaDB is dropped at capture: only the user's one is captured.
    let captured = |log: &str, side: &str| -> u64 {
        log.split(&format!("captured_{side}"))
            .skip(1)
            .map(|rest| rest.trim_start_matches(|c: char| !c.is_ascii_digit()))
            .map(|n| n.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u64>().unwrap())
            .sum()
    };
    let log = text(&out);
    assert_eq!((captured(&log, "left"), captured(&log, "right")), (1, 1), "{log}");
    assert_eq!(a.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM items"), "2,3");
    assert_eq!(b.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM items"), "2,3");
    let writes = b.sql("SELECT n FROM _tandem_writes");
    let out = run_once(&c);
    assert!(out.contains("a → b: 0 created, 0 updated, 0 deleted"), "{out}");
    assert_eq!(b.sql("SELECT n FROM _tandem_writes"), writes, "an idle run wrote to MariaDB");
}

fn sqlite_my_config(dir: &TempDir, b: &MyDb) -> String {
    db(&dir.path("a.db"))
        .execute_batch(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, email TEXT, notes TEXT, tier TEXT);
             INSERT INTO people (name, email, notes, tier) VALUES ('Ann', 'ann@x.io', 'first', 'gold'), ('Bob', 'BOB@x.io', NULL, 'std');",
        )
        .unwrap();
    b.sql(
        "CREATE TABLE customers (customer_no INT AUTO_INCREMENT PRIMARY KEY, full_name VARCHAR(100) NOT NULL,
         user_email VARCHAR(100), notes TEXT, tier VARCHAR(10) NOT NULL DEFAULT 'std', is_active BOOL NOT NULL DEFAULT 1);
         INSERT INTO customers (full_name, user_email, notes) VALUES ('Bob B.', 'bob@x.io', 'erp note'), ('Cy', 'cy@x.io', NULL);",
    );
    let cfg = format!(
        r#"state = "state.db"
poll_interval_ms = 50
batch_size = 100
[systems.a]
kind = "sqlite"
path = "a.db"
[systems.b]
kind = "mysql"
url = "{}"
[[sync]]
name = "people"
left = {{ system = "a", table = "people" }}
right = {{ system = "b", table = "customers" }}
match_on = {{ left = "email", right = "user_email", case_insensitive = true }}
conflict = "latest"
[[sync.fields]]
left = "name"
right = "full_name"
[[sync.fields]]
left = "email"
right = "user_email"
[[sync.fields]]
left = "notes"
right = "notes"
conflict = "hold"
[[sync.fields]]
left = "tier"
right = "tier"
conflict = {{ prefer = "b" }}
"#,
        b.url()
    );
    let path = dir.path("tandem.toml");
    std::fs::write(&path, cfg).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn sqlite_and_mariadb_match_on_email_resolve_conflicts_and_survive_sigkill_mid_stream() {
    let b = MyDb::new("people_b");
    let dir = TempDir::new("mypeople");
    let c = sqlite_my_config(&dir, &b);
    let a = db(&dir.path("a.db"));
    let out = run_once(&c);
    // Bob matched by email (case-insensitively), Ann created in MariaDB, Cy created in SQLite.
    assert!(out.contains("1 linked by match_on"), "{out}");
    assert_eq!(b.sql("SELECT COUNT(*) FROM customers"), "3");
    assert_eq!(rows(&a, "SELECT count(*) FROM people")[0][0], "3");
    assert_eq!(b.sql("SELECT notes FROM customers WHERE user_email = 'bob@x.io'"), "erp note");

    // Conflicts: both edit tier (prefer:b wins), both edit notes (held for a person).
    a.execute_batch("UPDATE people SET tier = 'gold', notes = 'from sqlite' WHERE name = 'Bob'").unwrap();
    b.sql("UPDATE customers SET tier = 'silver', notes = 'from erp' WHERE user_email = 'bob@x.io'");
    let out = run_once(&c);
    assert!(out.contains("1 held for a person"), "{out}");
    assert_eq!(rows(&a, "SELECT tier FROM people WHERE name = 'Bob'")[0][0], "silver");
    assert_eq!(b.sql("SELECT tier FROM customers WHERE user_email = 'bob@x.io'"), "silver");
    assert!(text(&tandem(&["conflicts", "-c", &c])).contains("notes"));

    // Streaming with writes on both sides, tandem SIGKILLed now and then: both sides converge,
    // nothing is lost or created twice.
    let mut run = Some(run_in_background(&c));
    for round in 0..30 {
        a.execute_batch(&format!(
            "INSERT INTO people (name, email, tier) VALUES ('s{round}', 's{round}@x.io', 'std'); UPDATE people SET name = 'Ann {round}' WHERE email = 'ann@x.io'"
        ))
        .unwrap();
        b.sql_retrying(&format!(
            "START TRANSACTION; INSERT INTO customers (full_name, user_email) VALUES ('m{round}', 'm{round}@x.io'); UPDATE customers SET full_name = 'Cy {round}' WHERE user_email = 'cy@x.io'; COMMIT"
        ));
        std::thread::sleep(Duration::from_millis(40 + fastrand::u64(..80)));
        if round % 7 == 3 {
            drop(run.take());
            run = Some(run_in_background(&c));
        }
    }
    drop(run);
    let out = run_once(&c);
    assert!(!out.contains("dead letter") || out.contains("0 dead letters"), "{out}");
    let mut names_a: Vec<String> =
        rows(&a, "SELECT name || '|' || email FROM people").into_iter().map(|r| r[0].clone()).collect();
    let mut names_b: Vec<String> =
        b.sql("SELECT CONCAT(full_name, '|', user_email) FROM customers").lines().map(str::to_string).collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    assert!(names_b.contains(&"Ann 29|ann@x.io".to_string()) && names_b.contains(&"Cy 29|cy@x.io".to_string()));
    assert_eq!(b.sql("SELECT COUNT(*) FROM customers"), "63");
    assert_eq!(b.sql("SELECT COUNT(*) FROM _tandem_intents"), "0");
}

#[test]
fn a_purged_binlog_is_detected_and_named() {
    let b = MyDb::alone("purged_b");
    let dir = TempDir::new("mypurged");
    let c = sqlite_my_config(&dir, &b);
    run_once(&c);
    // Tandem stopped; changes land in a binlog file that is then purged.
    b.sql("UPDATE customers SET notes = 'lost?' WHERE user_email = 'cy@x.io'");
    mysql("", "FLUSH BINARY LOGS");
    let current = mysql("", "SHOW MASTER STATUS").split('\t').next().unwrap().to_string();
    // A dump thread outlives its client until it next writes, and the server keeps the files
    // such threads read: end them (no other MariaDB test runs meanwhile).
    for line in mysql("", "SHOW PROCESSLIST").lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.get(4) == Some(&"Binlog Dump") {
            let _ = std::process::Command::new("mysql")
                .args(["-h127.0.0.1", "-uroot", "-e", &format!("KILL {}", cols[0])])
                .output();
        }
    }
    let start = Instant::now();
    loop {
        mysql("", &format!("PURGE BINARY LOGS TO '{current}'"));
        if mysql("", "SHOW BINARY LOGS").lines().count() == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the old binlog files are still there");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = tandem(&["run", "--once", "-c", &c]);
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("was purged") && msg.contains("mariadb-bin."), "{msg}");
    assert!(msg.contains("on_position_lost") || msg.contains("resnapshot"), "the error names no remedy: {msg}");
    // Nothing synced was touched.
    assert_eq!(rows(&db(&dir.path("a.db")), "SELECT count(*) FROM people")[0][0], "3");
}

#[test]
fn mariadb_restarted_mid_sync_then_tandem_resumes() {
    let b = MyDb::alone("restart_b");
    let dir = TempDir::new("myrestart");
    let c = sqlite_my_config(&dir, &b);
    let a = db(&dir.path("a.db"));
    let _run = run_in_background(&c);
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("the first sync", &|| b.sql("SELECT COUNT(*) FROM customers") == "3");
    b.sql("UPDATE customers SET full_name = 'before restart' WHERE user_email = 'cy@x.io'");
    let restart = std::process::Command::new("bash")
        .args(["-c", "mysqladmin -h127.0.0.1 -uroot shutdown && while pgrep -x mariadbd >/dev/null; do sleep 0.2; done; start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"])
        .status()
        .unwrap();
    assert!(restart.success());
    a.execute_batch("INSERT INTO people (name, email) VALUES ('while down', 'down@x.io')").unwrap();
    wait_for("MariaDB to come back", &|| {
        std::process::Command::new("mysql")
            .args(["-h127.0.0.1", "-uroot", "-e", "select 1"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    b.sql("UPDATE customers SET full_name = 'after restart' WHERE user_email = 'bob@x.io'");
    wait_for("changes from both sides", &|| {
        b.sql("SELECT COUNT(*) FROM customers WHERE user_email = 'down@x.io'") == "1"
            && rows(&a, "SELECT count(*) FROM people WHERE name IN ('before restart', 'after restart')")[0][0] == "2"
    });
}

#[test]
fn a_first_load_into_an_empty_auto_increment_table_survives_sigkill() {
    let b = MyDb::new("load_b");
    let dir = TempDir::new("myload");
    b.sql(
        "CREATE TABLE customers (customer_no INT AUTO_INCREMENT PRIMARY KEY, full_name VARCHAR(100) NOT NULL,
         user_email VARCHAR(100), notes TEXT, tier VARCHAR(10) NOT NULL DEFAULT 'std')",
    );
    let a = db(&dir.path("a.db"));
    a.execute_batch(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, notes TEXT, tier TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO people (name, email, notes, tier) SELECT 'P ' || i, 'p' || i || '@x.io', printf('%.*c', i % 50, 'n'), 'std' FROM n;",
    )
    .unwrap();
    let cfg = format!(
        "state = \"state.db\"\npoll_interval_ms = 20\nbatch_size = 500\n[systems.a]\nkind = \"sqlite\"\npath = \"a.db\"\n[systems.b]\nkind = \"mysql\"\nurl = \"{}\"\n[[sync]]\nname = \"people\"\nleft = {{ system = \"a\", table = \"people\" }}\nright = {{ system = \"b\", table = \"customers\" }}\n[[sync.fields]]\nleft = \"name\"\nright = \"full_name\"\n[[sync.fields]]\nleft = \"email\"\nright = \"user_email\"\n[[sync.fields]]\nleft = \"notes\"\nright = \"notes\"\n[[sync.fields]]\nleft = \"tier\"\nright = \"tier\"\n",
        b.url()
    );
    std::fs::write(dir.path("tandem.toml"), cfg).unwrap();
    let c = dir.path("tandem.toml").to_str().unwrap().to_string();
    let count = || b.sql("SELECT COUNT(*) FROM customers").parse::<u64>().unwrap();
    for kill in 0..4 {
        let run = run_in_background(&c);
        let start = Instant::now();
        let before = count();
        while count() == before && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50 + fastrand::u64(..200)));
        a.execute_batch(&format!("UPDATE people SET notes = 'edit {kill}' WHERE id = {}", 1 + kill * 97)).unwrap();
        drop(run);
        eprintln!("killed with {} of 20000 loaded", count());
    }
    b.sql_retrying("UPDATE customers SET tier = 'gold' WHERE customer_no = 3");
    let out = run_once(&c);
    assert!(out.contains("0 dead letters"), "{out}");
    assert_eq!(count(), 20000);
    assert_eq!(b.sql("SELECT COUNT(DISTINCT user_email) FROM customers"), "20000");
    assert_eq!(b.sql("SELECT COUNT(*) FROM _tandem_intents"), "0");
    let notes =
        b.sql("SELECT GROUP_CONCAT(notes ORDER BY customer_no SEPARATOR ',') FROM customers WHERE notes LIKE 'edit%'");
    assert_eq!(notes, "edit 0,edit 1,edit 2,edit 3");
    assert_eq!(rows(&a, "SELECT count(*) FROM people WHERE tier = 'gold'")[0][0], "1");
    // Keys learned right: each MariaDB record is linked to the SQLite record with its email.
    let state = db(&dir.path("state.db"));
    let batches = rows(&state, "SELECT count(*) FROM audit WHERE detail LIKE 'initial load: created % in one batch%'");
    assert!(batches[0][0].parse::<u32>().unwrap() >= 10, "the load did not go in batches");
    let pairs = b.sql("SELECT CONCAT(customer_no, '=', user_email) FROM customers WHERE customer_no IN (1, 777, 19999) ORDER BY customer_no");
    for pair in pairs.lines() {
        let (no, email) = pair.split_once('=').unwrap();
        let linked = rows(&state, &format!("SELECT left_key FROM links WHERE right_key = '[{no}]'"));
        let id = linked[0][0].trim_matches(['[', ']']).to_string();
        assert_eq!(rows(&a, &format!("SELECT email FROM people WHERE id = {id}"))[0][0], email);
    }
}

#[test]
fn check_names_what_a_mariadb_user_lacks() {
    let b = MyDb::new("grants_b");
    b.sql("CREATE TABLE customers (customer_no INT AUTO_INCREMENT PRIMARY KEY, full_name VARCHAR(100), user_email VARCHAR(100), notes TEXT, tier VARCHAR(10))");
    let user = format!("tandem_t_{}", fastrand::u32(..));
    mysql(
        "",
        &format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; GRANT SELECT, INSERT, UPDATE, DELETE ON {}.* TO '{user}'@'%'",
            b.0
        ),
    );
    let dir = TempDir::new("mygrants");
    db(&dir.path("a.db"))
        .execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, email TEXT, notes TEXT, tier TEXT)")
        .unwrap();
    let cfg = format!(
        "state = \"state.db\"\n[systems.a]\nkind = \"sqlite\"\npath = \"a.db\"\n[systems.b]\nkind = \"mysql\"\nurl = \"mysql://{user}:${{TANDEM_T_PW}}@127.0.0.1:3306/{}\"\n[[sync]]\nname = \"people\"\nleft = {{ system = \"a\", table = \"people\" }}\nright = {{ system = \"b\", table = \"customers\" }}\n[[sync.fields]]\nleft = \"name\"\nright = \"full_name\"\n",
        b.0
    );
    std::fs::write(dir.path("tandem.toml"), cfg).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "-c", dir.path("tandem.toml").to_str().unwrap()])
        .env("TANDEM_T_PW", "pw")
        .output()
        .unwrap();
    mysql("", &format!("DROP USER '{user}'@'%'"));
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("GRANT REPLICATION SLAVE") && msg.contains("GRANT BINLOG MONITOR"), "{msg}");
    assert!(!msg.contains("pw@"), "the password leaked: {msg}");
}

#[test]
fn verify_full_refuses_a_certificate_for_another_host_name() {
    let b = MyDb::new("tls_b");
    b.sql("CREATE TABLE items (id BIGINT PRIMARY KEY, t TEXT)");
    b.sql("INSERT INTO items VALUES (1, 'over TLS')");
    let dir = TempDir::new("mytls");
    db(&dir.path("a.db")).execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)").unwrap();
    // scripts/mariadb-setup gives the server a certificate for "localhost" only.
    let ca = "/etc/mysql/tandem-tls/ca.pem";
    let write = |host: &str| {
        let cfg = format!(
            "state = \"state.db\"\n[systems.a]\nkind = \"sqlite\"\npath = \"a.db\"\n[systems.b]\nkind = \"mysql\"\nurl = \"mysql://root@{host}:3306/{}?sslmode=verify-full&sslrootcert={ca}\"\n[[sync]]\nname = \"items\"\nleft = {{ system = \"a\", table = \"items\" }}\nright = {{ system = \"b\", table = \"items\" }}\n[[sync.fields]]\nleft = \"id\"\nright = \"id\"\n[[sync.fields]]\nleft = \"t\"\nright = \"t\"\n",
            b.0
        );
        std::fs::write(dir.path("tandem.toml"), cfg).unwrap();
        dir.path("tandem.toml").to_str().unwrap().to_string()
    };
    let c = write("127.0.0.1");
    let out = tandem(&["check", "-c", &c]);
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out).to_lowercase();
    assert!(msg.contains("certificate") || msg.contains("notvalidforname"), "{msg}");
    let c = write("localhost");
    run_once(&c);
    assert_eq!(rows(&db(&dir.path("a.db")), "SELECT t FROM items")[0][0], "over TLS");
    // The sessions really were encrypted.
    let tls_sessions =
        mysql("", "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'Ssl_accepts'");
    assert!(tls_sessions.parse::<u64>().unwrap() > 0);
}

#[test]
fn datetime_means_the_configured_zone_and_timestamp_is_utc_both_ways() {
    let (a, b) = (PgDb::new("zone_a"), MyDb::new("zone_b"));
    a.sql("CREATE TABLE events (id bigint PRIMARY KEY, local_at timestamptz, stamp timestamptz, naive timestamp)");
    b.sql("CREATE TABLE events (id BIGINT PRIMARY KEY, local_at DATETIME(3), stamp TIMESTAMP(3) NULL, naive DATETIME)");
    // One winter and one summer instant (Berlin is +01 then +02).
    a.sql(
        "INSERT INTO events VALUES (1, '2026-01-15 12:00:00.25+00', '2026-01-15 12:00:00+00', '2026-01-15 12:00:00'),
                                      (2, '2026-07-15 12:00:00+00', '2026-07-15 14:00:00+02', '2026-07-15 12:00:00')",
    );
    let dir = TempDir::new("myzone");
    let fields: String = ["id", "local_at", "stamp", "naive"]
        .iter()
        .map(|c| format!("[[sync.fields]]\nleft = \"{c}\"\nright = \"{c}\"\n"))
        .collect();
    let cfg = format!(
        "state = \"state.db\"\n{}[systems.b]\nkind = \"mysql\"\nurl = \"{}\"\ndatetime_zone = \"Europe/Berlin\"\n[[sync]]\nname = \"events\"\nleft = {{ system = \"a\", table = \"events\" }}\nright = {{ system = \"b\", table = \"events\" }}\n{fields}",
        pg_system(&a),
        b.url()
    );
    std::fs::write(dir.path("tandem.toml"), cfg).unwrap();
    let c = dir.path("tandem.toml").to_str().unwrap().to_string();
    run_once(&c);
    // DATETIME holds Berlin's wall clock; TIMESTAMP the instant (shown here in UTC); a naive
    // timestamp stays naive.
    assert_eq!(
        b.sql("SELECT id, local_at, CONVERT_TZ(stamp, @@session.time_zone, '+00:00'), naive FROM events ORDER BY id"),
        "1\t2026-01-15 13:00:00.250\t2026-01-15 12:00:00.000\t2026-01-15 12:00:00\n2\t2026-07-15 14:00:00.000\t2026-07-15 12:00:00.000\t2026-07-15 12:00:00"
    );
    // Written in Berlin time on the ERP: the same instant in PostgreSQL; nothing travels back.
    b.sql("UPDATE events SET local_at = '2026-03-29 03:30:00' WHERE id = 1");
    run_once(&c);
    assert_eq!(a.sql("SELECT local_at AT TIME ZONE 'UTC' FROM events WHERE id = 1"), "2026-03-29 01:30:00");
    // The binlog position is kept with the GTID there.
    let status = text(&tandem(&["status", "-c", &c]));
    let gtid = b.sql("SELECT @@gtid_binlog_pos");
    assert!(status.contains("b read up to:") && status.contains("(GTID ") && !gtid.is_empty(), "{status}");
    let again = run_once(&c);
    let audit = text(&tandem(&["audit", "-c", &c]));
    assert!(again.contains("0 created, 0 updated"), "{again}\n{audit}");
    // An instant for a DATETIME of a system without a configured zone is refused, not guessed.
    a.sql("CREATE TABLE plain (id bigint PRIMARY KEY, at timestamptz)");
    b.sql("CREATE TABLE plain (id BIGINT PRIMARY KEY, at DATETIME)");
    a.sql("INSERT INTO plain VALUES (1, '2026-02-01 10:00:00+00')");
    let dir2 = TempDir::new("myzone-none");
    let cfg2 = format!(
        "state = \"state.db\"\n{}{}[[sync]]\nname = \"plain\"\nleft = {{ system = \"a\", table = \"plain\" }}\nright = {{ system = \"b\", table = \"plain\" }}\n[[sync.fields]]\nleft = \"id\"\nright = \"id\"\n[[sync.fields]]\nleft = \"at\"\nright = \"at\"\n",
        pg_system(&a),
        my_system(&b)
    );
    std::fs::write(dir2.path("tandem.toml"), cfg2).unwrap();
    let c2 = dir2.path("tandem.toml").to_str().unwrap().to_string();
    let out = run_once(&c2);
    assert!(out.contains("1 dead letters"), "{out}");
    let dead = text(&tandem(&["dead-letters", "-c", &c2]));
    assert!(dead.contains("set `datetime_zone`") && dead.contains("field at"), "{dead}");
    assert_eq!(b.sql("SELECT count(*) FROM plain"), "0");
    // A zone the machine does not know is a config error with its line.
    let bad = std::fs::read_to_string(&c).unwrap().replace("Europe/Berlin", "Mars/Olympus");
    std::fs::write(&c, bad).unwrap();
    let t = text(&tandem(&["check", "-c", &c]));
    assert!(t.contains("Mars/Olympus") && t.contains("tandem.toml:"), "{t}");
}

/// MariaDB prints a FLOAT with six significant digits: read that way, 123456.789 would reach
/// PostgreSQL as 123457. Single-precision values keep their exact value both ways, an idle run
/// writes nothing back (no echo of a rounding), and an edit of one is guarded like any other.
#[test]
fn single_precision_floats_keep_their_value_both_ways() {
    let (a, b) = (PgDb::new("my_float_a"), MyDb::new("float_b"));
    a.sql("CREATE TABLE items (id bigint PRIMARY KEY, r real, d double precision)");
    b.sql("CREATE TABLE items (id BIGINT PRIMARY KEY, r FLOAT, d DOUBLE)");
    b.sql("INSERT INTO items VALUES (1, 123456.789, 123456.789), (2, 0.1, 0.1), (3, 16777217, -2.5e-300), (4, NULL, NULL)");
    a.sql("INSERT INTO items VALUES (10, 3.4028235e38, 0.1), (11, 1.1754944e-38, 1e300), (12, 1.2345678, 7)");
    let dir = TempDir::new("myfloat");
    let fields: String =
        ["id", "r", "d"].iter().map(|c| format!("[[sync.fields]]\nleft = \"{c}\"\nright = \"{c}\"\n")).collect();
    let cfg = format!(
        "state = \"state.db\"\n{}{}[[sync]]\nname = \"items\"\nleft = {{ system = \"a\", table = \"items\" }}\nright = {{ system = \"b\", table = \"items\" }}\n{fields}",
        pg_system(&a),
        my_system(&b)
    );
    let c = dir.path("tandem.toml");
    std::fs::write(&c, cfg).unwrap();
    let c = c.to_str().unwrap();
    let out = run_once(c);
    assert!(out.contains("a → b: 3 created") && out.contains("b → a: 4 created"), "{out}");
    // Each side's exact values, the single-precision ones as the float they hold.
    let values = |rows: String| -> Vec<(i64, Option<f32>, Option<f64>)> {
        rows.lines()
            .map(|l| {
                let f: Vec<&str> = l.split(['|', '\t']).collect();
                (f[0].parse().unwrap(), f[1].parse::<f64>().ok().map(|x| x as f32), f[2].parse().ok())
            })
            .collect()
    };
    let pg = || {
        values(a.sql("SELECT id, coalesce(r::float8::text, 'NULL'), coalesce(d::text, 'NULL') FROM items ORDER BY id"))
    };
    let my = || values(b.sql("SELECT id, IFNULL(CAST(r AS DOUBLE), 'NULL'), IFNULL(d, 'NULL') FROM items ORDER BY id"));
    assert_eq!(pg(), my());
    assert_eq!(pg()[0], (1, Some(123456.79_f32), Some(123456.789)));
    assert_eq!(a.sql("SELECT r::text FROM items WHERE id = 1"), "123456.79");
    assert_eq!(b.sql("SELECT r = CAST(1.2345678 AS FLOAT) FROM items WHERE id = 12"), "1");
    // Nothing travels back: both sides already hold the same floats.
    let out = run_once(c);
    assert!(out.contains("a → b: 0 created, 0 updated") && out.contains("b → a: 0 created, 0 updated"), "{out}");
    let audit = text(&tandem(&["audit", "-c", c]));
    assert!(audit.contains("] create (") && !audit.contains("] apply ("), "a float travelled back: {audit}");
    // An edit in MariaDB reaches PostgreSQL exactly.
    b.sql("UPDATE items SET r = 98765.4321 WHERE id = 2");
    let out = run_once(c);
    assert!(out.contains("b → a: 0 created, 1 updated"), "{out}");
    assert_eq!(pg(), my());
    assert_eq!(a.sql("SELECT r::text FROM items WHERE id = 2"), "98765.43");
    assert!(text(&tandem(&["audit", "-c", c])).contains("] apply ("));
    // Edits in PostgreSQL pass MariaDB's guard, which now checks FLOAT values too (exactly).
    a.sql("UPDATE items SET r = 2.5 WHERE id IN (1, 10, 12)");
    let out = run_once(c);
    assert!(out.contains("a → b: 0 created, 3 updated") && out.contains("0 dead letters"), "{out}");
    assert_eq!(pg(), my());
}

/// `tandem check` advises on what works but slower than it needs to: with `local_infile` off,
/// a first sync into an empty table goes by INSERT instead of LOAD DATA LOCAL INFILE.
#[test]
fn check_advises_turning_local_infile_on() {
    // It changes a server setting: no other test uses the server meanwhile.
    let b = MyDb::alone("infile_b");
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            mysql("", &format!("SET GLOBAL local_infile = {}", self.0));
        }
    }
    let _restore = Restore(mysql("", "SELECT @@global.local_infile"));
    let dir = TempDir::new("myinfile");
    let c = sqlite_my_config(&dir, &b);
    let advice = |on: u8| {
        mysql("", &format!("SET GLOBAL local_infile = {on}"));
        let out = tandem(&["check", "-c", &c]);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let off = advice(0);
    assert!(
        off.contains("note: system `b`: local_infile is OFF") && off.contains("SET GLOBAL local_infile = ON"),
        "{off}"
    );
    let on = advice(1);
    assert!(!on.contains("local_infile"), "{on}");
}

#[test]
fn uninstall_removes_capture_from_sqlite_and_mariadb_and_the_next_run_catches_up() {
    let b = MyDb::new("unin_b");
    let dir = TempDir::new("myuninstall");
    let c = sqlite_my_config(&dir, &b);
    run_once(&c);
    let installed = || {
        let a = db(&dir.path("a.db"));
        let sqlite = rows(&a, "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")[0][0].clone();
        let marker = b.sql("SELECT (SELECT count(*) FROM _tandem_writes) + (SELECT count(*) FROM _tandem_intents)");
        (sqlite, marker)
    };
    let (triggers, marker) = installed();
    assert!(triggers != "0" && marker != "0", "nothing installed: {triggers} triggers, {marker} marker rows");

    let out = tandem(&["uninstall", "-c", &c]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("removed Tandem's marker row"), "{t}");
    assert_eq!(installed(), ("0".to_string(), "0".to_string()), "uninstall left something behind");
    let out = tandem(&["uninstall", "-c", &c]);
    assert!(out.status.success(), "{}", text(&out));

    // Changes made while nothing captures them arrive with the next run, once each.
    db(&dir.path("a.db")).execute_batch("UPDATE people SET tier = 'gold' WHERE name = 'Ann'").unwrap();
    b.sql("INSERT INTO customers (full_name, user_email) VALUES ('Dee', 'dee@x.io'); DELETE FROM customers WHERE user_email = 'cy@x.io'");
    run_once(&c);
    assert_eq!(
        b.sql("SELECT full_name, lower(user_email) FROM customers ORDER BY 2"),
        "Ann\tann@x.io\nBob\tbob@x.io\nDee\tdee@x.io"
    );
    assert_eq!(
        rows(&db(&dir.path("a.db")), "SELECT name, lower(email) FROM people ORDER BY 2"),
        vec![vec!["Ann", "ann@x.io"], vec!["Bob", "bob@x.io"], vec!["Dee", "dee@x.io"]]
    );
    assert_ne!(installed().0, "0", "the run did not reinstall capture");
}
