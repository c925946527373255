//! The `tandem` binary on real SQLite files: demo, run --once, check, status, conflicts,
//! dead letters, continuous run with Ctrl-C.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_runs_and_leaves_inspectable_files() {
    let dir = TempDir::new("demo");
    let d = dir.0.to_str().unwrap();
    let out = tandem(&["demo", "--dir", d]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("1 linked by match_on"), "{t}");
    assert!(t.contains("held for a person"), "{t}");
    let crm = db(&dir.path("crm.db"));
    let erp = db(&dir.path("erp.db"));
    let n = |c: &rusqlite::Connection, t: &str| {
        c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get::<_, i64>(0)).unwrap()
    };
    assert_eq!(n(&crm, "contacts"), 4);
    assert_eq!(n(&erp, "customers"), 4);
    // Nobody is duplicated: every email once on each side.
    assert_eq!(n(&erp, "(SELECT DISTINCT lower(user_email) FROM customers)"), 4);

    let cfg = dir.path("tandem.toml");
    let cfg = cfg.to_str().unwrap();
    let status = tandem(&["status", "-c", cfg]);
    let s = text(&status);
    assert!(status.status.success(), "{s}");
    assert!(s.contains("records linked:      4") && s.contains("open conflicts:      1"), "{s}");

    let list = text(&tandem(&["conflicts", "-c", cfg]));
    assert!(
        list.contains("field:  notes")
            && list.contains("\"Call before invoicing\"")
            && list.contains("\"Prefers email\""),
        "{list}"
    );
    let res = tandem(&["conflicts", "-c", cfg, "--resolve", "1", "--take", "right"]);
    assert!(res.status.success(), "{}", text(&res));
    let notes = |c: &rusqlite::Connection, sql: &str| c.query_row(sql, [], |r| r.get::<_, String>(0)).unwrap();
    assert_eq!(notes(&crm, "SELECT notes FROM contacts WHERE id = 2"), "Call before invoicing");
    assert_eq!(notes(&erp, "SELECT notes FROM customers WHERE customer_no = 1001"), "Call before invoicing");
    let audit = text(&tandem(&["audit", "-c", cfg, "--key", "2"]));
    assert!(audit.contains("resolve") && audit.contains("operator"), "{audit}");
    assert!(text(&tandem(&["conflicts", "-c", cfg])).contains("no open conflicts"));
    // A run after the resolution has nothing to do.
    let once = tandem(&["run", "--once", "-c", cfg]);
    assert!(text(&once).contains("0 created, 0 updated, 0 deleted"), "{}", text(&once));
}

#[test]
fn run_once_syncs_both_ways_and_an_idle_pair_writes_nothing() {
    let dir = TempDir::new("once");
    let cfg = pair(&dir, "[sync.deletes]\nb = { soft = { column = \"note\", value = \"deleted in b\" } }");
    let a = db(&dir.path("a.db"));
    let b = db(&dir.path("b.db"));
    a.execute_batch("INSERT INTO people (name, email, note, tier) VALUES ('Ada Lovelace', 'ada@x', 'n1', 'gold'), ('Alan Turing', 'alan@x', NULL, 'standard');").unwrap();
    b.execute_batch("INSERT INTO clients (first, last, mail, memo, level) VALUES ('Ada', 'Lovelace', 'ADA@x', 'n1', 'GLD'), ('Grace', 'Hopper', 'grace@x', 'm', 'std');").unwrap();
    let c = cfg.to_str().unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("a → b: 1 created") && t.contains("b → a: 1 created") && t.contains("1 linked by match_on"),
        "{t}"
    );
    assert_eq!(
        rows(&b, "SELECT first, last, mail, level FROM clients WHERE mail = 'alan@x'"),
        vec![vec!["Alan", "Turing", "alan@x", "std"]]
    );
    assert_eq!(
        rows(&a, "SELECT name, tier FROM people WHERE email = 'grace@x'"),
        vec![vec!["Grace Hopper", "standard"]]
    );

    // Edits on both sides, to different fields of the same record: both survive.
    a.execute("UPDATE people SET note = 'from a' WHERE email = 'ada@x'", []).unwrap();
    b.execute("UPDATE clients SET last = 'King' WHERE lower(mail) = 'ada@x'", []).unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows(&a, "SELECT name, note FROM people WHERE email = 'ada@x'"), vec![vec!["Ada King", "from a"]]);
    assert_eq!(rows(&b, "SELECT memo FROM clients WHERE lower(mail) = 'ada@x'"), vec![vec!["from a"]]);

    // A delete in b is a soft delete in a (memo set), a delete in a propagates.
    b.execute("DELETE FROM clients WHERE mail = 'grace@x'", []).unwrap();
    a.execute("DELETE FROM people WHERE email = 'alan@x'", []).unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(
        text(&out).contains("a → b: 0 created, 0 updated, 1 deleted")
            && text(&out).contains("b → a: 0 created, 0 updated, 1 deleted"),
        "{}",
        text(&out)
    );
    assert_eq!(rows(&a, "SELECT note FROM people WHERE email = 'grace@x'"), vec![vec!["deleted in b"]]);
    assert!(rows(&b, "SELECT * FROM clients WHERE mail = 'alan@x'").is_empty());
    // The soft-deleted record stays out of the sync: editing it does not recreate it in b.
    a.execute("UPDATE people SET name = 'Grace B Hopper' WHERE email = 'grace@x'", []).unwrap();
    tandem(&["run", "--once", "-c", c]);
    assert!(rows(&b, "SELECT * FROM clients WHERE mail = 'grace@x'").is_empty());

    // Idle: the files do not change at all.
    drop((a, b));
    let before = (std::fs::read(dir.path("a.db")).unwrap(), std::fs::read(dir.path("b.db")).unwrap());
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success());
    let after = (std::fs::read(dir.path("a.db")).unwrap(), std::fs::read(dir.path("b.db")).unwrap());
    assert!(before == after, "an idle run wrote to a system");
}

#[test]
fn check_reports_every_problem_with_its_line_and_writes_nothing() {
    let dir = TempDir::new("check");
    let cfg = pair(&dir, "conflict = { prefer = \"c\" }\ncolour = \"red\"");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let bad = good
        .replace("left = \"note\"", "left = \"nots\"")
        .replace("right = \"mail\"\n", "right = \"mail\"\ntransfrom = \"x\"\n");
    std::fs::write(&cfg, &bad).unwrap();
    let out = tandem(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    let line = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(t.contains(&format!("tandem.toml:{}: unknown key `colour`", line("colour"))), "{t}");
    assert!(t.contains(&format!("tandem.toml:{}: unknown key `transfrom`", line("transfrom"))), "{t}");
    assert!(t.contains(&format!("tandem.toml:{}: sync `people`: `prefer` names system `c`", line("prefer"))), "{t}");
    assert!(t.contains("fix:"), "{t}");
    // Schema problems are reported in the same run.
    assert!(
        t.contains(&format!("tandem.toml:{}: sync `people`: column `nots` does not exist in a.people", line("nots"))),
        "{t}"
    );
    // Schema problems come once the file parses: an unknown column, incompatible types.
    let schema_bad = good
        .replace("colour = \"red\"\n", "")
        .replace("{ prefer = \"c\" }", "{ prefer = \"b\" }")
        .replace("left = \"note\"", "left = \"nots\"")
        .replace("left = \"email\"", "left = \"id\"");
    std::fs::write(&cfg, &schema_bad).unwrap();
    let out = tandem(&["check", "-c", cfg.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("column `nots` does not exist in a.people") && t.contains("use one of: id, name, email, note, tier"),
        "{t}"
    );
    assert!(t.contains("text and numbers do not convert"), "{t}");
    assert!(!dir.path("state.db").exists(), "check created the state file");
    let a = db(&dir.path("a.db"));
    assert!(
        rows(&a, "SELECT name FROM sqlite_master WHERE name LIKE '_tandem%'").is_empty(),
        "check installed capture"
    );
    // A missing NOT NULL column mapping is a config error too.
    let no_first = good
        .replace("colour = \"red\"\n", "")
        .replace("{ prefer = \"c\" }", "\"latest\"")
        .replace("right = [\"first\", \"last\"]\ntransform = \"split_name\"", "right = \"last\"");
    std::fs::write(&cfg, no_first).unwrap();
    let t = text(&tandem(&["check", "-c", cfg.to_str().unwrap()]));
    assert!(t.contains("b.clients.first is NOT NULL without a default"), "{t}");
}

#[test]
fn bad_rows_go_to_dead_letters_and_the_rest_keeps_syncing() {
    let dir = TempDir::new("dead");
    let cfg = pair(&dir, "");
    let a = db(&dir.path("a.db"));
    a.execute_batch(
        "INSERT INTO people (name, email, tier) VALUES (NULL, 'noname@x', 'gold'), ('Bo Diddley', 'bo@x', 'platinum'), ('Ok Person', 'ok@x', 'gold');",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 dead letters"), "{}", text(&out));
    let b = db(&dir.path("b.db"));
    assert_eq!(rows(&b, "SELECT mail FROM clients"), vec![vec!["ok@x"]]);
    let list = text(&tandem(&["dead-letters", "-c", c]));
    assert!(list.contains("NOT NULL constraint failed: clients.first") && list.contains("field first"), "{list}");
    assert!(list.contains("is not in the value map") && list.contains("field tier"), "{list}");
    // The reason never carries the row's value: it reaches logs and the admin API.
    assert!(!list.contains("platinum"), "{list}");
    // Fix the data: the corrected row syncs by itself.
    a.execute("UPDATE people SET name = 'No Longer Nameless' WHERE email = 'noname@x'", []).unwrap();
    // Fix the config: add the missing value, then ask for a retry.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("\"standard\" = \"std\"", "\"standard\" = \"std\", \"platinum\" = \"PLT\""),
    )
    .unwrap();
    let retry = tandem(&["dead-letters", "-c", c, "--retry-all"]);
    assert!(text(&retry).contains("queued 2"), "{}", text(&retry));
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        rows(&b, "SELECT mail, level FROM clients ORDER BY mail"),
        vec![vec!["bo@x", "PLT"], vec!["noname@x", "GLD"], vec!["ok@x", "GLD"],]
    );
    assert!(text(&tandem(&["dead-letters", "-c", c])).contains("no dead letters"));
    let status = text(&tandem(&["status", "-c", c]));
    assert!(status.contains("records linked:      3") && status.contains("dead letters:        0"), "{status}");
}

#[test]
fn continuous_run_sees_changes_within_a_second_and_stops_cleanly_on_ctrl_c() {
    let dir = TempDir::new("run");
    let cfg = pair(&dir, "");
    let mut child = Kill(
        Command::new(bin())
            .args(["run", "-c", cfg.to_str().unwrap()])
            .env("TANDEM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let a = db(&dir.path("a.db"));
    let b = db(&dir.path("b.db"));
    let wait_for = |conn: &rusqlite::Connection, sql: &str, limit: Duration| {
        let start = Instant::now();
        while start.elapsed() < limit {
            if conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0) > 0 {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("not seen within {limit:?}: {sql}");
    };
    // Let capture install first.
    wait_for(&a, "SELECT count(*) FROM sqlite_master WHERE name = '_tandem_changes'", Duration::from_secs(20));
    wait_for(&b, "SELECT count(*) FROM sqlite_master WHERE name = '_tandem_changes'", Duration::from_secs(20));
    a.execute("INSERT INTO people (name, email) VALUES ('Live One', 'live1@x')", []).unwrap();
    let took = wait_for(&b, "SELECT count(*) FROM clients WHERE mail = 'live1@x'", Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "a → b took {took:?}");
    b.execute("UPDATE clients SET memo = 'back' WHERE mail = 'live1@x'", []).unwrap();
    let took = wait_for(&a, "SELECT count(*) FROM people WHERE note = 'back'", Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "b → a took {took:?}");
    // A second run on the same state is refused while this one holds it.
    let second = tandem(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    assert!(
        !second.status.success() && text(&second).contains("another `tandem run` is using the state file"),
        "{}",
        text(&second)
    );
    let status = Command::new("kill").args(["-INT", &child.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "tandem did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit status {code:?}");
}

#[test]
fn a_lost_capture_position_stops_the_sync_or_is_reconciled_when_configured() {
    let dir = TempDir::new("lost");
    let cfg = pair(&dir, "");
    let c = cfg.to_str().unwrap();
    let a = db(&dir.path("a.db"));
    let b = db(&dir.path("b.db"));
    a.execute_batch("INSERT INTO people (name, email) VALUES ('Ada Lovelace', 'ada@x'), ('Alan Turing', 'alan@x');")
        .unwrap();
    assert!(tandem(&["run", "--once", "-c", c]).status.success());
    // While tandem is stopped, someone drops the capture triggers, then writes.
    a.execute_batch(
        "DROP TRIGGER _tandem_people_ins; DROP TRIGGER _tandem_people_upd; DROP TRIGGER _tandem_people_del;
         UPDATE people SET note = 'changed while blind' WHERE email = 'ada@x';
         DELETE FROM people WHERE email = 'alan@x';",
    )
    .unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("a.people is gone") && t.contains("on_position_lost = \"resnapshot\""), "{t}");
    assert!(rows(&b, "SELECT memo FROM clients WHERE mail = 'ada@x'") == vec![vec!["NULL"]], "nothing may be applied");
    // Configured to resnapshot: both changes made while capture was gone arrive.
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[[sync.fields]]", "on_position_lost = \"resnapshot\"\n[[sync.fields]]");
    std::fs::write(
        &cfg,
        text_cfg
            .replacen("on_position_lost = \"resnapshot\"\n[[sync.fields]]", "@@", 1)
            .replace("on_position_lost = \"resnapshot\"\n", "")
            .replace("@@", "on_position_lost = \"resnapshot\"\n[[sync.fields]]"),
    )
    .unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows(&b, "SELECT mail, memo FROM clients ORDER BY mail"), vec![vec!["ada@x", "changed while blind"]]);
    let audit = text(&tandem(&["audit", "-c", c]));
    assert!(audit.contains("resnapshot"), "{audit}");
}

#[test]
fn a_first_load_into_an_empty_table_goes_in_batches_and_refused_rows_go_one_by_one() {
    let dir = TempDir::new("bulk");
    let a = db(&dir.path("a.db"));
    a.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, grade TEXT, owner TEXT);
         WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 1200)
         INSERT INTO items (id, name, grade) SELECT x, CASE WHEN x IN (7, 500, 1111) THEN NULL ELSE 'item ' || x END, 'A' FROM g;",
    )
    .unwrap();
    db(&dir.path("b.db"))
        .execute_batch(
            "CREATE TABLE things (no INTEGER PRIMARY KEY, title TEXT NOT NULL, grade TEXT, owner TEXT DEFAULT 'ops');",
        )
        .unwrap();
    let cfg = dir.path("tandem.toml");
    std::fs::write(
        &cfg,
        r#"state = "state.db"
batch_size = 200
[systems.a]
kind = "sqlite"
path = "a.db"
[systems.b]
kind = "sqlite"
path = "b.db"
[[sync]]
name = "items"
left = { system = "a", table = "items" }
right = { system = "b", table = "things" }
[[sync.fields]]
left = "id"
right = "no"
[[sync.fields]]
left = "name"
right = "title"
[[sync.fields]]
left = "grade"
right = "grade"
[[sync.fields]]
left = "owner"
right = "owner"
only_from = "b"
"#,
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let out = tandem(&["run", "--once", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    let b = db(&dir.path("b.db"));
    assert_eq!(rows(&b, "SELECT count(*), min(no), max(no) FROM things"), vec![vec!["1197", "1", "1200"]]);
    // Rows with a NULL name cannot go to b (title is NOT NULL): dead letters, the rest synced.
    let dead = text(&tandem(&["dead-letters", "-c", c]));
    assert_eq!(dead.matches("NOT NULL").count(), 3, "{dead}");
    // The field owned by b comes back to a with b's default.
    assert_eq!(rows(&a, "SELECT count(*) FROM items WHERE owner = 'ops'"), vec![vec!["1197"]]);
    let state = db(&dir.path("state.db"));
    let batches = rows(&state, "SELECT count(*) FROM audit WHERE detail LIKE 'initial load: created % in one batch%'");
    let refused = rows(&state, "SELECT count(*) FROM audit WHERE detail LIKE 'initial load: % refused a batch%'");
    assert_eq!((&batches[0][0][..], &refused[0][0][..]), ("3", "3"), "6 pages: 3 in one batch, 3 refused");
    // Edits after the load flow both ways; an idle run writes nothing.
    a.execute("UPDATE items SET grade = 'B' WHERE id = 42", []).unwrap();
    b.execute("UPDATE things SET title = 'renamed' WHERE no = 43", []).unwrap();
    assert!(tandem(&["run", "--once", "-c", c]).status.success());
    assert_eq!(rows(&b, "SELECT grade FROM things WHERE no = 42"), vec![vec!["B"]]);
    assert_eq!(rows(&a, "SELECT name FROM items WHERE id = 43"), vec![vec!["renamed"]]);
    let idle = text(&tandem(&["run", "--once", "-c", c]));
    assert!(idle.contains("a → b: 0 created, 0 updated, 0 deleted"), "{idle}");
    assert!(idle.contains("b → a: 0 created, 0 updated, 0 deleted"), "{idle}");
}

#[test]
fn a_report_piped_into_a_closed_reader_ends_quietly() {
    let dir = TempDir::new("pipe");
    let cfg = pair(&dir, "");
    let c = cfg.to_str().unwrap();
    db(&dir.path("a.db")).execute("INSERT INTO people (name, email) VALUES ('Ada Lovelace', 'ada@x')", []).unwrap();
    assert!(tandem(&["run", "--once", "-c", c]).status.success());
    // The reader is gone before tandem writes a line (`tandem audit | head -0`).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin()).args(["audit", "-c", c]).stdout(writer).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && out.status.code() != Some(101), "{err}");
}
