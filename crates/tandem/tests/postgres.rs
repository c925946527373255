//! PostgreSQL ↔ PostgreSQL and PostgreSQL ↔ SQLite against the machine's server (logical
//! replication set up by scripts/pg-setup). Each test makes its own databases.

mod common;

use common::*;
use std::time::{Duration, Instant};

const TYPES_TABLE: &str = "CREATE TABLE items (
    id bigserial PRIMARY KEY, s smallint, i integer, b bigint, n numeric(20,6), r real, d double precision,
    t text, v varchar(20), flag boolean, day date, tm time, ts timestamp, tstz timestamptz, u uuid,
    j json, jb jsonb, bin bytea, ints integer[], texts text[])";

const TYPE_COLUMNS: &[&str] = &[
    "s", "i", "b", "n", "r", "d", "t", "v", "flag", "day", "tm", "ts", "tstz", "u", "j", "jb", "bin", "ints", "texts",
];

fn all_values(db: &PgDb) -> String {
    let cols: Vec<String> = TYPE_COLUMNS.iter().map(|c| format!("coalesce({c}::text, '<null>')")).collect();
    db.sql(&format!("SELECT {} FROM items ORDER BY t NULLS FIRST, i", cols.join(" || '|' || ")))
}

/// Replication slots in the two databases.
fn slot_count(a: &PgDb, b: &PgDb) -> String {
    psql("postgres", &format!("SELECT count(*) FROM pg_replication_slots WHERE database IN ('{}', '{}')", a.0, b.0))
}

/// Tandem's replication origins for the two databases.
fn origin_count(a: &PgDb, b: &PgDb) -> String {
    psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'tandem_{}%' OR roname LIKE 'tandem_{}%'",
            a.0, b.0
        ),
    )
}

/// Waits (at most `limit`) until every replication slot in `dbs` has `position` at or past
/// `wal`: `confirmed_flush_lsn` (acknowledged) or `restart_lsn` (where the server decodes from
/// at the next start: no WAL before it is kept).
fn wait_slots_past(dbs: &[&PgDb], position: &str, wal: &str, limit: Duration) {
    let names: Vec<String> = dbs.iter().map(|d| format!("'{}'", d.0)).collect();
    let sql = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE database IN ({}) AND {position} < '{wal}'::pg_lsn",
        names.join(", ")
    );
    let start = Instant::now();
    while psql("postgres", &sql) != "0" {
        assert!(start.elapsed() < limit, "the {position} of a slot of {} did not pass {wal}", names.join(", "));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pg_pair_config(dir: &TempDir, a: &PgDb, b: &PgDb) -> std::path::PathBuf {
    pg_pair_config_with(dir, a, b, &[], "")
}

fn pg_pair_config_with(dir: &TempDir, a: &PgDb, b: &PgDb, more: &[&str], top: &str) -> std::path::PathBuf {
    let fields: String = TYPE_COLUMNS
        .iter()
        .chain(more)
        .map(|c| format!("[[sync.fields]]\nleft = \"{c}\"\nright = \"{c}\"\n"))
        .collect();
    let cfg = format!(
        "state = \"state.db\"\n{top}[systems.a]\nkind = \"postgres\"\nurl = \"{}\"\n[systems.b]\nkind = \"postgres\"\nurl = \"{}\"\n[[sync]]\nname = \"items\"\nleft = {{ system = \"a\", table = \"items\" }}\nright = {{ system = \"b\", table = \"items\" }}\n{fields}",
        a.url(),
        b.url()
    );
    let path = dir.path("tandem.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

#[test]
fn pg_to_pg_keeps_every_type_exact_both_ways() {
    let (a, b) = (PgDb::new("types_a"), PgDb::new("types_b"));
    a.sql(TYPES_TABLE);
    b.sql(TYPES_TABLE);
    a.sql(
        "INSERT INTO items (s, i, b, n, r, d, t, v, flag, day, tm, ts, tstz, u, j, jb, bin, ints, texts) VALUES
         (-32768, 2147483647, -9223372036854775808, 12345678901234.123456, 1.5, 0.1, 'text ✓ 🦀 \"quoted\" ''single''', 'varchar', true,
          '2026-11-26', '13:14:15.5', '2026-11-26 13:14:15.123456', '2026-11-26 13:14:15.5+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          '{\"a\": [1, 2.5, null]}', '{\"b\": {\"c\": true}}', '\\x00ff10', '{1,NULL,3}', '{\"x y\",\"\",NULL}'),
         (0, 0, 0, 0.000001, -0.0, 1e300, '', '', false, '0001-01-01', '00:00', '1970-01-01 00:00', '1970-01-01 00:00+00', '00000000-0000-0000-0000-000000000000',
          '[]', '[]', '\\x', '{}', '{}'),
         (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    );
    let dir = TempDir::new("pgtypes");
    let cfg = pg_pair_config(&dir, &a, &b);
    let c = cfg.to_str().unwrap();
    let check = tandem(&["check", "-c", c]);
    assert!(check.status.success(), "{}", text(&check));
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("a → b: 3 created"), "{}", text(&out));
    assert_eq!(all_values(&a), all_values(&b));
    // b was empty and generates its keys (bigserial): the load went in one batch, keys learned.
    let state = db(&dir.path("state.db"));
    let batches =
        rows(&state, "SELECT count(*) FROM audit WHERE detail LIKE 'initial load: created 3 records % in one batch%'");
    assert_eq!(batches[0][0], "1");
    assert_eq!(b.sql("SELECT count(*) FROM _tandem.intents"), "0");
    assert!(all_values(&b).contains("12345678901234.123456") && all_values(&b).contains("🦀"));

    // Edits on b flow back exactly, NULL and '' stay apart.
    b.sql("UPDATE items SET n = 0.5, t = NULL, texts = '{a,b}', jb = '{\"z\": 1}' WHERE i = 2147483647; UPDATE items SET v = NULL WHERE v = ''");
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("b → a: 0 created, 2 updated"), "{}", text(&out));
    assert_eq!(all_values(&a), all_values(&b));
    assert_eq!(a.sql("SELECT count(*) FROM items WHERE t = ''"), "1");
    assert_eq!(a.sql("SELECT count(*) FROM items WHERE v IS NULL"), "2");

    // A delete propagates; then the pair is idle: no row is written on either side. A run
    // that ends reports the position it acknowledged to the server first.
    a.sql("DELETE FROM items WHERE i = 0");
    let wal = a.sql("SELECT pg_current_wal_lsn()");
    assert!(tandem(&["run", "--once", "-c", c]).status.success());
    assert_eq!(b.sql("SELECT count(*) FROM items"), "2");
    // (The server reads the last report after the run has ended: give it a moment.)
    wait_slots_past(&[&a, &b], "confirmed_flush_lsn", &wal, Duration::from_secs(10));
    let versions = |db: &PgDb| db.sql("SELECT string_agg(xmin::text, ',' ORDER BY id) FROM items");
    let before = (versions(&a), versions(&b));
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(text(&out).contains("a → b: 0 created, 0 updated, 0 deleted"), "{}", text(&out));
    assert_eq!(before, (versions(&a), versions(&b)), "an idle run wrote rows");

    // While it runs, WAL written by unpublished tables does not pile up behind the slots:
    // keepalives are acknowledged when nothing is pending.
    let _run = run_in_background(c);
    a.sql("CREATE TABLE other (x int); INSERT INTO other SELECT generate_series(1, 50000)");
    let wal = a.sql("SELECT pg_current_wal_lsn()");
    wait_slots_past(&[&a], "confirmed_flush_lsn", &wal, Duration::from_secs(60));
}

fn crm_erp_config(dir: &TempDir, crm: &PgDb, extra: &str) -> std::path::PathBuf {
    db(&dir.path("erp.db"))
        .execute_batch(
            "CREATE TABLE customers (customer_no INTEGER PRIMARY KEY AUTOINCREMENT, first_name TEXT NOT NULL, last_name TEXT,
             user_email TEXT, phone_number TEXT, payment_terms TEXT NOT NULL DEFAULT 'NET30', notes TEXT, credit REAL)",
        )
        .unwrap();
    crm.sql(
        "CREATE TABLE contacts (id bigserial PRIMARY KEY, full_name text, email_address text, phone text,
         payment_terms text, notes text, credit numeric(12,2), updated_at timestamptz DEFAULT now())",
    );
    let cfg = format!(
        r#"state = "state.db"
batch_size = 200
poll_interval_ms = 50
[systems.crm]
kind = "postgres"
url = "{}"
[systems.erp]
kind = "sqlite"
path = "erp.db"
[[sync]]
name = "people"
left = {{ system = "crm", table = "contacts" }}
right = {{ system = "erp", table = "customers" }}
match_on = {{ left = "email_address", right = "user_email", case_insensitive = true }}
conflict = "latest"
{extra}
[sync.defaults.erp]
payment_terms = "NET30"
[[sync.fields]]
left = "full_name"
right = ["first_name", "last_name"]
transform = "split_name"
[[sync.fields]]
left = "email_address"
right = "user_email"
[[sync.fields]]
left = "phone"
right = "phone_number"
[[sync.fields]]
left = "credit"
right = "credit"
[[sync.fields]]
left = "payment_terms"
right = "payment_terms"
transform = {{ map = {{ "Net 30 days" = "NET30", "Due on receipt" = "DUE" }} }}
only_from = "erp"
[[sync.fields]]
left = "notes"
right = "notes"
conflict = "hold"
"#,
        crm.url()
    );
    let path = dir.path("tandem.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// A run that ends has the server log a snapshot of running transactions and acknowledges a
/// position past it, so its slot's restart point moves up too: the next start decodes none of
/// the run's WAL again (after a 1,000,000-row load that took 1.7 s). It holds the server alone:
/// another test's open transaction would hold the restart point back, as it should.
#[test]
fn a_run_that_ends_leaves_no_wal_to_decode_again() {
    let a = PgDb::alone("resume");
    a.sql("CREATE TABLE people (id bigint PRIMARY KEY, name text); INSERT INTO people SELECT g, 'n' || g FROM generate_series(1, 1000) g");
    let dir = TempDir::new("pgresume");
    db(&dir.path("b.db")).execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)").unwrap();
    let cfg = format!(
        "state = \"state.db\"\n[systems.pg]\nkind = \"postgres\"\nurl = \"{}\"\n[systems.lite]\nkind = \"sqlite\"\npath = \"b.db\"\n[[sync]]\nname = \"people\"\nleft = {{ system = \"pg\", table = \"people\" }}\nright = {{ system = \"lite\", table = \"people\" }}\n[[sync.fields]]\nleft = \"id\"\nright = \"id\"\n[[sync.fields]]\nleft = \"name\"\nright = \"name\"\n",
        a.url()
    );
    std::fs::write(dir.path("tandem.toml"), cfg).unwrap();
    let c = dir.path("tandem.toml");
    let c = c.to_str().unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(text(&out).contains("pg → lite: 1000 created"), "{}", text(&out));
    a.sql("UPDATE people SET name = 'changed ' || id");
    let wal = a.sql("SELECT pg_current_wal_lsn()");
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(text(&out).contains("pg → lite: 0 created, 1000 updated"), "{}", text(&out));
    wait_slots_past(&[&a], "restart_lsn", &wal, Duration::from_secs(10));
}

#[test]
fn pg_to_sqlite_with_matching_rules_conflicts_and_deletes() {
    let crm = PgDb::new("crm");
    let dir = TempDir::new("pgcrm");
    let cfg = crm_erp_config(&dir, &crm, "");
    let c = cfg.to_str().unwrap();
    crm.sql("INSERT INTO contacts (full_name, email_address, phone, credit) VALUES ('Ada Lovelace', 'ada@x', '1', 100.50), ('Alan Turing', 'alan@x', '2', NULL)");
    let erp = db(&dir.path("erp.db"));
    erp.execute_batch("INSERT INTO customers (first_name, last_name, user_email, payment_terms, notes) VALUES ('Ada', 'Lovelace', 'ADA@x', 'DUE', 'vip'), ('Grace', 'Hopper', 'grace@x', 'NET30', NULL)").unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("1 linked by match_on") && t.contains("crm → erp: 1 created") && t.contains("erp → crm: 1 created"),
        "{t}"
    );
    assert_eq!(
        crm.sql("SELECT full_name, payment_terms, notes, credit FROM contacts WHERE email_address = 'ada@x'"),
        "Ada Lovelace|Due on receipt|vip|100.50"
    );
    assert_eq!(
        rows(&erp, "SELECT first_name, last_name, credit FROM customers WHERE user_email = 'alan@x'"),
        vec![vec!["Alan", "Turing", "NULL"]]
    );

    // Both sides edit Ada: phone under `latest` (the ERP edits last), notes under `hold`.
    crm.sql("UPDATE contacts SET phone = 'crm phone', notes = 'crm note' WHERE email_address = 'ada@x'");
    std::thread::sleep(Duration::from_millis(20));
    erp.execute(
        "UPDATE customers SET phone_number = 'erp phone', notes = 'erp note' WHERE lower(user_email) = 'ada@x'",
        [],
    )
    .unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(crm.sql("SELECT phone, notes FROM contacts WHERE email_address = 'ada@x'"), "erp phone|crm note");
    assert_eq!(
        rows(&erp, "SELECT phone_number, notes FROM customers WHERE lower(user_email) = 'ada@x'"),
        vec![vec!["erp phone", "erp note"]]
    );
    let conflicts = text(&tandem(&["conflicts", "-c", c]));
    assert!(conflicts.contains("\"crm note\"") && conflicts.contains("\"erp note\""), "{conflicts}");
    let audit = text(&tandem(&["audit", "-c", c]));
    assert!(audit.contains("field phone") && audit.contains("erp wins by rule latest"), "{audit}");
    let resolved = tandem(&["conflicts", "-c", c, "--resolve", "1", "--take", "left"]);
    assert!(resolved.status.success(), "{}", text(&resolved));
    assert_eq!(rows(&erp, "SELECT notes FROM customers WHERE lower(user_email) = 'ada@x'"), vec![vec!["crm note"]]);

    // A CRM edit of the ERP-owned payment terms is put back.
    crm.sql("UPDATE contacts SET payment_terms = 'Net 30 days' WHERE email_address = 'ada@x'");
    assert!(tandem(&["run", "--once", "-c", c]).status.success());
    assert_eq!(crm.sql("SELECT payment_terms FROM contacts WHERE email_address = 'ada@x'"), "Due on receipt");

    // Deletes propagate both ways.
    crm.sql("DELETE FROM contacts WHERE email_address = 'alan@x'");
    erp.execute("DELETE FROM customers WHERE user_email = 'grace@x'", []).unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(
        text(&out).contains("crm → erp: 0 created, 0 updated, 1 deleted")
            && text(&out).contains("erp → crm: 0 created, 0 updated, 1 deleted"),
        "{}",
        text(&out)
    );
    assert_eq!(crm.sql("SELECT string_agg(email_address, ',') FROM contacts"), "ada@x");
    assert_eq!(rows(&erp, "SELECT user_email FROM customers"), vec![vec!["ada@x"]]);

    // Idle: no row version changes in PostgreSQL, no byte changes in SQLite.
    drop(erp);
    let xmins = crm.sql("SELECT string_agg(xmin::text, ',') FROM contacts");
    let bytes = std::fs::read(dir.path("erp.db")).unwrap();
    assert!(tandem(&["run", "--once", "-c", c]).status.success());
    assert_eq!(xmins, crm.sql("SELECT string_agg(xmin::text, ',') FROM contacts"));
    assert!(bytes == std::fs::read(dir.path("erp.db")).unwrap(), "idle run wrote to SQLite");
}

#[test]
fn a_dropped_slot_is_detected_and_named() {
    let crm = PgDb::new("slot");
    let dir = TempDir::new("pgslot");
    let cfg = crm_erp_config(&dir, &crm, "");
    let c = cfg.to_str().unwrap();
    crm.sql("INSERT INTO contacts (full_name, email_address) VALUES ('Ada Lovelace', 'ada@x')");
    assert!(tandem(&["run", "--once", "-c", c]).status.success());
    let slot = crm.sql(&format!("SELECT slot_name FROM pg_replication_slots WHERE database = '{}'", crm.0));
    assert!(slot.starts_with("tandem_"), "{slot}");
    crm.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    crm.sql("UPDATE contacts SET phone = 'while blind'");
    let out = tandem(&["run", "--once", "-c", c]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!("replication slot {slot} does not exist"))
            && t.contains("on_position_lost = \"resnapshot\""),
        "{t}"
    );
    assert_eq!(rows(&db(&dir.path("erp.db")), "SELECT phone_number FROM customers"), vec![vec!["NULL"]]);
    // With resnapshot configured, the change made while blind arrives.
    let cfg2 = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("conflict = \"latest\"\n", "conflict = \"latest\"\non_position_lost = \"resnapshot\"\n");
    std::fs::write(&cfg, cfg2).unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows(&db(&dir.path("erp.db")), "SELECT phone_number FROM customers"), vec![vec!["while blind"]]);
}

#[test]
fn bulk_load_into_an_empty_side_keeps_types_and_survives_sigkill() {
    let (a, b) = (PgDb::new("bulk_a"), PgDb::new("bulk_b"));
    a.sql(TYPES_TABLE);
    b.sql(TYPES_TABLE);
    // Every type, the awkward characters of COPY's text format, NULLs; then bulk.
    a.sql(
        "INSERT INTO items (s, i, b, n, r, d, t, v, flag, day, tm, ts, tstz, u, j, jb, bin, ints, texts) VALUES
         (-32768, 2147483647, -9223372036854775808, 12345678901234.123456, 1.5, 0.1, E'tab\\there\\nnew line \\\\N back\\\\slash 🦀', 'varchar', true,
          '2026-11-26', '13:14:15.5', '2026-11-26 13:14:15.123456', '2026-11-26 13:14:15.5+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          '{\"a\": [1, \"x\\\\ty\"]}', '{\"b\": {\"c\": true}}', '\\x00ff10', '{1,NULL,3}', '{\"x y\",\"\",NULL,\"q\\\"z\"}'),
         (0, 0, 0, 0.000001, -0.0, 1e300, '', '', false, '0001-01-01', '00:00', '1970-01-01 00:00', '1970-01-01 00:00+00', '00000000-0000-0000-0000-000000000000',
          '[]', '[]', '\\x', '{}', '{}'),
         (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    );
    a.sql("INSERT INTO items (i, n, t, day, tstz) SELECT g, g / 7.0, 'row ' || g, '2026-01-01'::date + (g % 300), now() FROM generate_series(1, 12000) g");
    let dir = TempDir::new("pgbulk");
    let cfg = pg_pair_config_with(&dir, &a, &b, &["id"], "batch_size = 400\n");
    let c = cfg.to_str().unwrap().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // b gets its own inserts once Tandem chose the bulk load (b was empty then).
    let chosen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, chosen) = (stop.clone(), chosen.clone());
        let (a_db, b_db) = (a.0.clone(), b.0.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if !chosen.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                n += 1;
                psql(
                    &a_db,
                    &format!(
                        "UPDATE items SET t = 'edited {n}' WHERE id = (SELECT id FROM items ORDER BY random() LIMIT 1);
                         INSERT INTO items (i, t) VALUES ({n}, 'new on a {n}');
                         DELETE FROM items WHERE id = (SELECT id FROM items WHERE {n} % 5 = 0 ORDER BY random() LIMIT 1);"
                    ),
                );
                psql(&b_db, &format!("INSERT INTO items (id, i, t) VALUES ({}, {n}, 'new on b')", 1_000_000 + n));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut rng = fastrand::Rng::new();
    for round in 0..6 {
        let child = run_in_background(&c);
        if round == 0 {
            let start = Instant::now();
            let state = dir.path("state.db");
            let chose = || {
                let conn = db(&state);
                let n = conn.query_row("SELECT count(*) FROM audit WHERE kind = 'load'", [], |r| r.get::<_, i64>(0));
                n.unwrap_or(0) > 0
            };
            while !state.exists() || !chose() {
                assert!(start.elapsed() < Duration::from_secs(30), "no bulk load was chosen");
                std::thread::sleep(Duration::from_millis(5));
            }
            chosen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(rng.u64(150..700)));
        drop(child);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let out = tandem(&["run", "--once", "-c", &c]);
    assert!(out.status.success(), "{}", text(&out));
    let everything = |db: &PgDb| {
        let cols: Vec<String> = TYPE_COLUMNS.iter().map(|c| format!("coalesce({c}::text, '<null>')")).collect();
        db.sql(&format!("SELECT id || '|' || {} FROM items ORDER BY id", cols.join(" || '|' || ")))
    };
    let (left, right) = (everything(&a), everything(&b));
    assert!(left.contains("tab\there") && left.contains("🦀"), "{left:.300}");
    assert_eq!(left.lines().count(), right.lines().count(), "row counts differ");
    assert!(left == right, "the sides did not converge");
    assert_eq!(b.sql("SELECT count(*) FROM _tandem.intents"), "0", "batch markers left on the target");
    let dead = text(&tandem(&["dead-letters", "-c", &c]));
    assert!(dead.contains("no dead letters"), "{dead}");
    let state = db(&dir.path("state.db"));
    let batches = rows(&state, "SELECT count(*) FROM audit WHERE detail LIKE 'initial load: created % in one batch%'");
    assert_ne!(batches, vec![vec!["0"]], "the load did not go in batches");
    // b's publication left inserts out during the load (its pages would have come back): b's
    // own inserts then were found at the load's end, and inserts are published again.
    let ended = rows(&state, "SELECT detail FROM audit WHERE detail LIKE 'initial load into % done%'");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(ended[0][0].contains(" done: "), "b's inserts during the load were not looked for: {ended:?}");
    assert_eq!(b.sql("SELECT string_agg(pubinsert::text, ',') FROM pg_publication"), "true");
    assert_eq!(b.sql("SELECT count(*) FROM _tandem.loads"), "0", "page records left on the target");
    b.sql("INSERT INTO items (id, i, t) VALUES (2000000, 1, 'after the load')");
    let out = tandem(&["run", "--once", "-c", &c]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(a.sql("SELECT t FROM items WHERE id = 2000000"), "after the load");
}

#[test]
fn a_bulk_page_the_target_refuses_goes_one_by_one() {
    let (a, b) = (PgDb::new("refuse_a"), PgDb::new("refuse_b"));
    a.sql("CREATE TABLE items (id bigint PRIMARY KEY, name text, code text)");
    b.sql("CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, code varchar(3))");
    a.sql("INSERT INTO items SELECT g, CASE WHEN g IN (10, 600) THEN NULL ELSE 'n' || g END, CASE WHEN g = 900 THEN 'TOOLONG' ELSE 'ok' END FROM generate_series(1, 1000) g");
    let dir = TempDir::new("pgrefuse");
    let cfg = format!(
        "state = \"state.db\"\nbatch_size = 250\n[systems.a]\nkind = \"postgres\"\nurl = \"{}\"\n[systems.b]\nkind = \"postgres\"\nurl = \"{}\"\n[[sync]]\nname = \"items\"\nleft = {{ system = \"a\", table = \"items\" }}\nright = {{ system = \"b\", table = \"items\" }}\n{}",
        a.url(),
        b.url(),
        ["id", "name", "code"].iter().map(|c| format!("[[sync.fields]]\nleft = \"{c}\"\nright = \"{c}\"\n")).collect::<String>()
    );
    std::fs::write(dir.path("tandem.toml"), cfg).unwrap();
    let c = dir.path("tandem.toml");
    let c = c.to_str().unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(b.sql("SELECT count(*) FROM items"), "997");
    assert_eq!(b.sql("SELECT count(*) FROM items WHERE id IN (10, 600, 900)"), "0");
    let dead = text(&tandem(&["dead-letters", "-c", c]));
    assert_eq!(dead.matches("refused the write").count(), 2, "{dead}");
    // Too long for varchar(3): caught before writing, naming the column.
    assert!(dead.contains("column items.code is character varying(3); a text of 7 characters does not fit"), "{dead}");
    let state = db(&dir.path("state.db"));
    let count =
        |like: &str| rows(&state, &format!("SELECT count(*) FROM audit WHERE detail LIKE '{like}'"))[0][0].clone();
    assert_eq!(count("initial load: created % in one batch%"), "1");
    assert_eq!(count("initial load: % refused a batch%"), "3");
    assert_eq!(b.sql("SELECT count(*) FROM _tandem.intents"), "0");
}

#[test]
fn sigkill_during_load_and_stream_converges_without_duplicates() {
    let crm = PgDb::new("kill");
    let dir = TempDir::new("pgkill");
    let cfg = crm_erp_config(&dir, &crm, "");
    let c = cfg.to_str().unwrap().to_string();
    crm.sql("INSERT INTO contacts (full_name, email_address, phone) SELECT 'Seed ' || g, 'seed' || g || '@x', g::text FROM generate_series(1, 3000) g");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let crm_db = crm.0.clone();
        let erp_path = dir.path("erp.db");
        std::thread::spawn(move || {
            let erp = db(&erp_path);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                psql(
                    &crm_db,
                    &format!(
                        "INSERT INTO contacts (full_name, email_address) VALUES ('Pg {n}', 'pg{n}@x');
                         UPDATE contacts SET phone = 'p{n}' WHERE id = (SELECT id FROM contacts ORDER BY random() LIMIT 1);
                         DELETE FROM contacts WHERE id = (SELECT id FROM contacts WHERE {n} % 7 = 0 ORDER BY random() LIMIT 1);"
                    ),
                );
                erp.execute(
                    "INSERT INTO customers (first_name, last_name, user_email) VALUES ('Lite', ?1, ?2)",
                    [format!("{n}"), format!("lite{n}@x")],
                )
                .unwrap();
                erp.execute("UPDATE customers SET notes = ?1 WHERE customer_no = (SELECT customer_no FROM customers ORDER BY random() LIMIT 1)", [format!("n{n}")]).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut rng = fastrand::Rng::new();
    for _ in 0..12 {
        let child = run_in_background(&c);
        std::thread::sleep(Duration::from_millis(rng.u64(100..900)));
        drop(child);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let out = tandem(&["run", "--once", "-c", &c]);
    assert!(out.status.success(), "{}", text(&out));
    // Only the ERP edits notes (held for a person when both sides change it): a kill between
    // Tandem's write and its state commit must not make its own write look like a user's.
    let state = db(&dir.path("state.db"));
    let held = rows(&state, "SELECT id, field, left_value, right_value FROM conflicts WHERE resolution IS NULL");
    assert!(held.is_empty(), "false conflicts: {held:?}");
    let pg = crm.sql("SELECT lower(email_address) || '|' || coalesce(full_name, '') || '|' || coalesce(phone, '') || '|' || coalesce(notes, '') FROM contacts ORDER BY 1");
    let erp = db(&dir.path("erp.db"));
    let lite: Vec<String> = rows(&erp, "SELECT lower(user_email) || '|' || first_name || coalesce(' ' || last_name, '') || '|' || coalesce(phone_number, '') || '|' || coalesce(notes, '') FROM customers ORDER BY 1")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let pg: Vec<String> = pg.lines().map(str::to_string).collect();
    let dups = |v: &Vec<String>| v.windows(2).filter(|w| w[0].split('|').next() == w[1].split('|').next()).count();
    assert_eq!(dups(&pg), 0, "duplicates in PostgreSQL");
    assert_eq!(dups(&lite), 0, "duplicates in SQLite");
    let only = |a: &Vec<String>, b: &Vec<String>| a.iter().filter(|x| !b.contains(x)).cloned().collect::<Vec<_>>();
    assert!(
        pg == lite,
        "the sides did not converge: only in PostgreSQL {:?}, only in SQLite {:?}",
        only(&pg, &lite),
        only(&lite, &pg)
    );
}

#[test]
fn writes_during_the_initial_load_are_not_lost() {
    let crm = PgDb::new("load");
    let dir = TempDir::new("pgload");
    let cfg = crm_erp_config(&dir, &crm, "");
    let c = cfg.to_str().unwrap().to_string();
    crm.sql("INSERT INTO contacts (full_name, email_address) SELECT 'Load ' || g, 'load' || g || '@x' FROM generate_series(1, 10000) g");
    let child = run_in_background(&c);
    // While the load runs: edit rows at both ends of the key range and add new ones.
    for n in 0..40 {
        crm.sql(&format!("UPDATE contacts SET phone = 'during {n}' WHERE id IN ({}, {}); INSERT INTO contacts (full_name, email_address) VALUES ('Late {n}', 'late{n}@x')", 1 + n, 9_990 - n));
        std::thread::sleep(Duration::from_millis(10));
    }
    let erp = db(&dir.path("erp.db"));
    let start = Instant::now();
    loop {
        let n = erp
            .query_row("SELECT count(*) FROM customers WHERE phone_number LIKE 'during %'", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0);
        let total = erp.query_row("SELECT count(*) FROM customers", [], |r| r.get::<_, i64>(0)).unwrap_or(0);
        if n == 80 && total == 10_040 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "not converged: {n} edits, {total} rows");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(child);
    assert_eq!(rows(&erp, "SELECT count(DISTINCT user_email) FROM customers"), vec![vec!["10040"]]);
}

#[test]
fn check_names_what_the_server_and_role_lack() {
    let crm = PgDb::new("grants");
    let dir = TempDir::new("pggrants");
    let cfg = crm_erp_config(&dir, &crm, "");
    let role = format!("{}_role", crm.0);
    psql("postgres", &format!("CREATE ROLE {role} LOGIN"));
    let text_cfg =
        std::fs::read_to_string(&cfg).unwrap().replace("postgres://postgres@", &format!("postgres://{role}@"));
    std::fs::write(&cfg, text_cfg).unwrap();
    let out = tandem(&["check", "-c", cfg.to_str().unwrap()]);
    let t = text(&out);
    psql("postgres", &format!("DROP ROLE {role}"));
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains(&format!("ALTER ROLE {role} WITH REPLICATION")), "{t}");
    assert!(t.contains("GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup"), "{t}");
    assert!(t.contains("OWNER TO"), "{t}");
    // A literal password in the url is refused before anything connects.
    let literal =
        std::fs::read_to_string(&cfg).unwrap().replace(&format!("postgres://{role}@"), "postgres://postgres:hunter2@");
    std::fs::write(&cfg, literal).unwrap();
    let t = text(&tandem(&["check", "-c", cfg.to_str().unwrap()]));
    assert!(t.contains("password written out") && !t.contains("hunter2"), "{t}");
}

#[test]
fn verify_full_checks_the_host_name_and_the_chain() {
    let crm = PgDb::new("tls");
    let dir = TempDir::new("pgtls");
    let cfg = crm_erp_config(&dir, &crm, "");
    crm.sql("INSERT INTO contacts (full_name, email_address) VALUES ('Ada Lovelace', 'ada@x')");
    let mut cert = psql("postgres", "SHOW ssl_cert_file");
    if !cert.starts_with('/') {
        cert = format!("{}/{cert}", psql("postgres", "SHOW data_directory"));
    }
    let original = std::fs::read_to_string(&cfg).unwrap();
    let url = crm.url();
    let with = |from: &str, to: String| {
        std::fs::write(&cfg, original.replace(from, &to)).unwrap();
        cfg.to_str().unwrap().to_string()
    };
    // The server's certificate names localhost: a connection to 127.0.0.1 must be refused.
    let c = with(&url, format!("{url}?sslmode=verify-full&sslrootcert={cert}"));
    let out = tandem(&["run", "--once", "-c", &c]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.to_lowercase().contains("certificate"), "{t}");
    // verify-ca checks the chain only, so the same address is accepted.
    let c = with(&url, format!("{url}?sslmode=verify-ca&sslrootcert={cert}"));
    let out = tandem(&["run", "--once", "-c", &c]);
    assert!(out.status.success(), "{}", text(&out));
    // Without the right root, verify-ca is refused too.
    let c = with(&url, format!("{url}?sslmode=verify-ca"));
    assert!(!tandem(&["run", "--once", "-c", &c]).status.success());
    // With the name the certificate carries, verify-full syncs over TLS.
    let c = with(&url, format!("{}?sslmode=verify-full&sslrootcert={cert}", url.replace("127.0.0.1", "localhost")));
    crm.sql("INSERT INTO contacts (full_name, email_address) VALUES ('Alan Turing', 'alan@x')");
    let out = tandem(&["run", "--once", "-c", &c]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows(&db(&dir.path("erp.db")), "SELECT count(*) FROM customers"), vec![vec!["2"]]);
}

#[test]
fn plan_against_postgresql_installs_nothing_and_writes_nothing() {
    let (a, b) = (PgDb::new("plan_a"), PgDb::new("plan_b"));
    a.sql(TYPES_TABLE);
    b.sql(TYPES_TABLE);
    a.sql("INSERT INTO items (i, t, v) VALUES (1, 'one', 'x'), (2, 'two', 'y'), (3, 'three', 'too long for five')");
    b.sql("ALTER TABLE items ALTER COLUMN v TYPE varchar(5)");
    let dir = TempDir::new("pgplan");
    let cfg = pg_pair_config(&dir, &a, &b);
    let c = cfg.to_str().unwrap();
    let snapshot = |db: &PgDb| {
        format!(
            "{}\n{}\n{}",
            all_values(db),
            db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = '_tandem'"),
            db.sql("SELECT count(*) FROM pg_publication")
        )
    };
    let slots = || slot_count(&a, &b);
    let origins = || origin_count(&a, &b);
    let (sa, sb, sl, or) = (snapshot(&a), snapshot(&b), slots(), origins());
    let out = tandem(&["plan", "-c", c, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &j["syncs"][0];
    assert_eq!(p["create_on"]["b"], 2, "{p}");
    assert_eq!(p["dead_letters"].as_array().unwrap().len(), 1, "{p}");
    assert_eq!(p["dead_letters"][0]["field"], "v", "{p}");
    assert_eq!((snapshot(&a), snapshot(&b), slots(), origins()), (sa, sb, sl, or), "plan wrote to PostgreSQL");
    assert!(!dir.path("state.db").exists(), "plan made a state file");
}

#[test]
fn uninstall_removes_capture_and_the_next_run_catches_up() {
    let (a, b) = (PgDb::new("unin_a"), PgDb::new("unin_b"));
    a.sql(TYPES_TABLE);
    b.sql(TYPES_TABLE);
    a.sql("INSERT INTO items (i, t) SELECT g, 'row ' || g FROM generate_series(1, 3000) g");
    let dir = TempDir::new("pguninstall");
    let cfg = pg_pair_config_with(&dir, &a, &b, &["id"], "batch_size = 500\n");
    let c = cfg.to_str().unwrap();
    let installed = || {
        let (slots, origins) = (slot_count(&a, &b), origin_count(&a, &b));
        let publications = |db: &PgDb| db.sql("SELECT count(*) FROM pg_publication");
        // Rows in whichever of Tandem's own tables the database has (intents, page records).
        let records = |db: &PgDb| {
            let tables = db.sql(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = '_tandem' AND c.relkind = 'r' ORDER BY 1",
            );
            let counts: Vec<String> =
                tables.lines().map(|t| db.sql(&format!("SELECT count(*) FROM _tandem.{t}"))).collect();
            counts.iter().map(|n| n.parse::<u64>().unwrap()).sum::<u64>().to_string()
        };
        (slots, origins, publications(&a), publications(&b), records(&a), records(&b))
    };
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(b.sql("SELECT count(*) FROM items"), "3000");
    let (slots, origins, pa, pb, _, _) = installed();
    assert_eq!((slots.as_str(), origins.as_str(), pa.as_str(), pb.as_str()), ("2", "2", "1", "1"));

    let out = tandem(&["uninstall", "-c", c]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("removed slot tandem_") && t.contains("next `tandem run` reinstalls"), "{t}");
    let zero = || "0".to_string();
    assert_eq!(installed(), (zero(), zero(), zero(), zero(), zero(), zero()), "uninstall left something behind");
    // A second uninstall finds nothing to remove and still succeeds.
    let out = tandem(&["uninstall", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));

    // Changes made while nothing captures them arrive with the next run, once each.
    a.sql("UPDATE items SET t = 'changed while uninstalled' WHERE i = 7");
    b.sql("INSERT INTO items (id, i, t) VALUES (9001, 9001, 'inserted while uninstalled')");
    b.sql("DELETE FROM items WHERE i = 11");
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    for db in [&a, &b] {
        assert_eq!(db.sql("SELECT t FROM items WHERE i = 7"), "changed while uninstalled");
        assert_eq!(db.sql("SELECT count(*) FROM items WHERE i = 9001"), "1");
        assert_eq!(db.sql("SELECT count(*) FROM items WHERE i = 11"), "0");
        assert_eq!(db.sql("SELECT count(*), count(DISTINCT i) FROM items"), "3000|3000");
    }
    assert_eq!(all_values(&a), all_values(&b));
    let (slots, origins, pa, pb, _, _) = installed();
    assert_eq!((slots.as_str(), origins.as_str(), pa.as_str(), pb.as_str()), ("2", "2", "1", "1"));
}

#[test]
fn check_reports_a_publication_that_publishes_no_inserts() {
    let (a, b) = (PgDb::new("pubins_a"), PgDb::new("pubins_b"));
    a.sql(TYPES_TABLE);
    b.sql(TYPES_TABLE);
    a.sql("INSERT INTO items (i, t) SELECT g, 'row ' || g FROM generate_series(1, 100) g");
    let dir = TempDir::new("pgpubins");
    let cfg = pg_pair_config_with(&dir, &a, &b, &["id"], "");
    let c = cfg.to_str().unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    let check = || tandem(&["check", "-c", c]);
    let out = check();
    assert!(out.status.success() && !text(&out).contains("publish"), "{}", text(&out));

    // Someone takes inserts out of b's publication: inserts into b would be missed.
    let publication = b.sql("SELECT pubname FROM pg_publication");
    b.sql(&format!("ALTER PUBLICATION {publication} SET (publish = 'update, delete, truncate')"));
    let out = check();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!("problem: b.items: publication {publication} does not publish inserts"))
            && t.contains("`tandem uninstall`, then `tandem run`"),
        "{t}"
    );
    // While the state file has a bulk load into b under way, that is how the load runs.
    db(&dir.path("state.db"))
        .execute_batch("INSERT INTO meta (sync, name, value) VALUES ('items', 'bulk_target:right', '1')")
        .unwrap();
    let out = check();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("note: b.items: publication") && t.contains("initial load into"), "{t}");
    db(&dir.path("state.db")).execute_batch("DELETE FROM meta WHERE name = 'bulk_target:right'").unwrap();
    // The remedy check names: uninstall, run; the row inserted meanwhile arrives.
    b.sql("INSERT INTO items (id, i, t) VALUES (5001, 5001, 'inserted unpublished')");
    for args in [&["uninstall", "-c", c][..], &["run", "--once", "-c", c]] {
        let out = tandem(args);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(a.sql("SELECT t FROM items WHERE i = 5001"), "inserted unpublished");
    let out = check();
    assert!(out.status.success() && !text(&out).contains("publish"), "{}", text(&out));
}
