//! Operating Tandem: the admin server (token, health, readiness, metrics, JSON API), the audit
//! trail's chain and queries, and secrets and sensitive values kept out of everything an
//! operator sees.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The admin token of these tests: a canary that must never appear in a log, error or response.
const TOKEN: &str = "canary-token-5f2c9e81d7a4";
/// A row value in a sensitive field: it syncs, but must never appear outside the databases.
const CANARY: &str = "canary-row-value-93b1e0";

/// A running `tandem run` with its admin server; SIGKILLed when dropped.
pub struct Server {
    pub child: Kill,
    pub base: String,
    pub log: std::path::PathBuf,
    agent: ureq::Agent,
    /// Every body the API answered, to check for leaks at the end.
    pub seen: std::cell::RefCell<Vec<String>>,
}

impl Server {
    /// Starts `tandem --log-format json run -c CONFIG` with the token in the environment and
    /// waits for the admin server's address in the log.
    pub fn start(dir: &TempDir, config: &std::path::Path) -> Server {
        let log = dir.path(&format!("run-{}.log", fastrand::u32(..)));
        let child = Command::new(bin())
            .args(["--log-format", "json", "run", "-c", config.to_str().unwrap()])
            .env("TANDEM_LOG", "info")
            .env("TANDEM_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tandem runs");
        let child = Kill(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let addr = text.lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["fields"]["message"] == "admin server listening")
                    .then(|| v["fields"]["address"].as_str().map(str::to_string))?
            });
            if let Some(a) = addr {
                break format!("http://{a}");
            }
            assert!(Instant::now() < deadline, "the admin server did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Server { child, base, log, agent, seen: Default::default() }
    }

    /// A request; returns the status and the body.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut resp = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.content_type("application/json").send(body.unwrap_or(""))
            }
        }
        .expect("the admin server answers");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        self.seen.borrow_mut().push(text.clone());
        (status, text)
    }

    /// A request with the token that must succeed; its JSON body.
    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let (status, text) = self.call(method, path, Some(TOKEN), body);
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// Waits until `f` holds, polling.
    pub fn until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(Instant::now() < deadline, "timed out waiting for {what}; log:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The metric's value for a series whose labels contain all of `labels` (0 when absent).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two SQLite tables with an admin server on a free port: notes are sensitive and held on
/// conflict, tiers are held on conflict, and a trigger on b can refuse records.
fn setup(dir: &TempDir, admin: &str) -> std::path::PathBuf {
    db(&dir.path("a.db"))
        .execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, email TEXT, note TEXT, tier TEXT);")
        .unwrap();
    db(&dir.path("b.db"))
        .execute_batch(
            "CREATE TABLE clients (no INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, mail TEXT, memo TEXT, level TEXT);
             CREATE TRIGGER refuse BEFORE INSERT ON clients WHEN NEW.mail LIKE 'blocked%'
             BEGIN SELECT RAISE(ABORT, 'blocked by the ERP''s policy'); END;",
        )
        .unwrap();
    let cfg = format!(
        r#"state = "state.db"
poll_interval_ms = 50
{admin}
[audit]
retention_days = 30
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
[[sync.fields]]
left = "name"
right = "name"
[[sync.fields]]
left = "email"
right = "mail"
[[sync.fields]]
left = "note"
right = "memo"
sensitive = true
conflict = "hold"
[[sync.fields]]
left = "tier"
right = "level"
conflict = "hold"
"#
    );
    let path = dir.path("tandem.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${TANDEM_ADMIN_TOKEN}\"";

#[test]
fn the_admin_api_needs_the_token_and_lets_an_operator_see_and_fix_what_tandem_did() {
    let dir = TempDir::new("admin");
    let cfg = setup(&dir, ADMIN);
    let a = db(&dir.path("a.db"));
    let b = db(&dir.path("b.db"));
    a.execute_batch(&format!(
        "INSERT INTO people (id, name, email, note, tier) VALUES (1, 'Ada', 'ada@x', '{CANARY}', 'gold'), (2, 'Alan', 'alan@x', 'n2', 'silver');"
    ))
    .unwrap();
    let srv = Server::start(&dir, &cfg);

    // Liveness needs nothing; everything else needs the token, and a refusal is logged.
    assert_eq!(srv.call("GET", "/health", None, None).0, 200);
    for path in ["/ready", "/metrics", "/api/status", "/api/audit", "/api/conflicts", "/api/dead-letters"] {
        assert_eq!(srv.call("GET", path, None, None).0, 401, "{path} without a token");
        assert_eq!(srv.call("GET", path, Some("wrong-token-0000000000"), None).0, 401, "{path} with a wrong token");
    }
    assert_eq!(srv.call("POST", "/api/syncs/people/pause", None, None).0, 401);
    let b_count = |sql: &str| b.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    srv.until("the first load", || b_count("SELECT count(*) FROM clients") == 2);
    srv.until("readiness", || srv.call("GET", "/ready", Some(TOKEN), None).0 == 200);
    let status = srv.json("GET", "/api/status", None);
    assert_eq!(status["syncs"][0]["name"], "people");
    assert_eq!(status["syncs"][0]["state"], "running");

    // Changes both ways show in the metrics, with their latency.
    a.execute("UPDATE people SET name = 'Ada Lovelace' WHERE id = 1", []).unwrap();
    b.execute("UPDATE clients SET name = 'Alan Turing' WHERE mail = 'alan@x'", []).unwrap();
    srv.until("both updates", || {
        let m = srv.call("GET", "/metrics", Some(TOKEN), None).1;
        metric(&m, "tandem_changes_applied_total", &["sync=\"people\"", "direction=\"b->a\""]) >= 1.0
            && metric(&m, "tandem_changes_applied_total", &["direction=\"a->b\""]) >= 3.0
    });
    let m = srv.call("GET", "/metrics", Some(TOKEN), None).1;
    assert!(metric(&m, "tandem_sync_latency_seconds_count", &["direction=\"a->b\""]) >= 1.0, "{m}");
    assert!(metric(&m, "tandem_changes_captured_total", &["direction=\"b->a\""]) >= 1.0, "{m}");
    assert_eq!(metric(&m, "tandem_records_linked", &["sync=\"people\""]), 2.0, "{m}");
    assert!(m.contains("# TYPE tandem_sync_latency_seconds histogram"), "{m}");
    assert!(m.contains("tandem_lag_seconds{"), "{m}");

    // Pause: nothing moves; resume: it does. Both audited.
    srv.json("POST", "/api/syncs/people/pause", None);
    srv.until("paused", || srv.json("GET", "/api/status", None)["syncs"][0]["state"] == "paused");
    a.execute("UPDATE people SET name = 'Ada King' WHERE id = 1", []).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(b_count("SELECT count(*) FROM clients WHERE name = 'Ada King'"), 0, "a paused sync wrote");
    // While paused, both sides edit the same fields: held conflicts on resume.
    a.execute_batch(&format!("UPDATE people SET tier = 'platinum', note = '{CANARY}-a' WHERE id = 1;")).unwrap();
    b.execute_batch(&format!("UPDATE clients SET level = 'bronze', memo = '{CANARY}-b' WHERE mail = 'ada@x';"))
        .unwrap();
    srv.json("POST", "/api/syncs/people/resume", None);
    srv.until("the paused change", || b_count("SELECT count(*) FROM clients WHERE name = 'Ada King'") == 1);
    srv.until("two held conflicts", || srv.json("GET", "/api/conflicts", None).as_array().unwrap().len() == 2);
    let conflicts = srv.json("GET", "/api/conflicts", None);
    let tier = conflicts.as_array().unwrap().iter().find(|c| c["field"] == "tier").unwrap().clone();
    assert_eq!(
        (tier["base"].as_str(), tier["left"].as_str(), tier["right"].as_str()),
        (Some("gold"), Some("platinum"), Some("bronze"))
    );
    let note = conflicts.as_array().unwrap().iter().find(|c| c["field"] == "note").unwrap().clone();
    assert_eq!(note["left"], "(sensitive: not kept)", "{note}");
    let shown = srv.json("GET", &format!("/api/conflicts/{}", tier["id"]), None);
    assert_eq!(shown["left_system"], "a");
    // Resolve both: the tier takes b's value, the note a's.
    let bad =
        srv.call("POST", &format!("/api/conflicts/{}/resolve", tier["id"]), Some(TOKEN), Some("{\"take\":\"middle\"}"));
    assert_eq!(bad.0, 400, "{}", bad.1);
    srv.json("POST", &format!("/api/conflicts/{}/resolve", tier["id"]), Some("{\"take\":\"right\"}"));
    srv.json("POST", &format!("/api/conflicts/{}/resolve", note["id"]), Some("{\"take\":\"left\"}"));
    let a_text = |sql: &str| a.query_row(sql, [], |r| r.get::<_, String>(0)).unwrap();
    assert_eq!(a_text("SELECT tier FROM people WHERE id = 1"), "bronze");
    assert_eq!(
        b.query_row("SELECT memo FROM clients WHERE mail = 'ada@x'", [], |r| r.get::<_, String>(0)).unwrap(),
        format!("{CANARY}-a")
    );
    assert!(srv.json("GET", "/api/conflicts", None).as_array().unwrap().is_empty());
    let again =
        srv.call("POST", &format!("/api/conflicts/{}/resolve", tier["id"]), Some(TOKEN), Some("{\"take\":\"left\"}"));
    assert_eq!(again.0, 409, "{}", again.1);

    // Dead letters: the ERP refuses two records; one is retried after the policy changes, the
    // other discarded.
    a.execute_batch(&format!(
        "INSERT INTO people (id, name, email, note, tier) VALUES (3, 'Grace', 'blocked-grace@x', '{CANARY}-grace', 'gold'), (4, 'Edsger', 'blocked-ed@x', NULL, 'gold');"
    ))
    .unwrap();
    srv.until("two dead letters", || srv.json("GET", "/api/dead-letters", None).as_array().unwrap().len() == 2);
    let dead = srv.json("GET", "/api/dead-letters", None);
    let grace = dead.as_array().unwrap().iter().find(|d| d["key"] == "[3]").unwrap().clone();
    let ed = dead.as_array().unwrap().iter().find(|d| d["key"] == "[4]").unwrap().clone();
    assert!(grace["reason"].as_str().unwrap().contains("blocked by the ERP's policy"), "{grace}");
    assert_eq!(grace["system"], "a");
    b.execute_batch("DROP TRIGGER refuse;").unwrap();
    assert_eq!(srv.call("POST", "/api/dead-letters/999/retry", Some(TOKEN), None).0, 409);
    assert_eq!(srv.json("POST", &format!("/api/dead-letters/{}/retry", grace["id"]), None)["queued"], 1);
    srv.until("the retried record", || b_count("SELECT count(*) FROM clients WHERE mail = 'blocked-grace@x'") == 1);
    srv.json("POST", &format!("/api/dead-letters/{}/discard", ed["id"]), None);
    assert!(srv.json("GET", "/api/dead-letters", None).as_array().unwrap().is_empty());
    assert_eq!(b_count("SELECT count(*) FROM clients WHERE mail = 'blocked-ed@x'"), 0, "a discarded record was synced");

    // The audit trail answers by key, kind, rule and time.
    let by_key = srv.json("GET", "/api/audit?key=1", None);
    let kinds: Vec<&str> = by_key.as_array().unwrap().iter().filter_map(|r| r["kind"].as_str()).collect();
    assert!(kinds.contains(&"apply") && kinds.contains(&"conflict") && kinds.contains(&"resolve"), "{kinds:?}");
    let applied = by_key.as_array().unwrap().iter().find(|r| r["kind"] == "apply").unwrap();
    assert!(applied["detail"].as_str().unwrap().contains("Ada Lovelace"), "{applied}");
    assert!(srv.json("GET", "/api/audit?kind=discard", None).as_array().unwrap().len() == 1);
    assert_eq!(srv.json("GET", "/api/audit?rule=operator&kind=pause", None).as_array().unwrap().len(), 1);
    assert!(srv.json("GET", "/api/audit?from=1h", None).as_array().unwrap().len() > 5);
    assert!(srv.json("GET", "/api/audit?to=2000-01-01", None).as_array().unwrap().is_empty());
    assert_eq!(srv.call("GET", "/api/audit?from=yesterday", Some(TOKEN), None).0, 400);
    let m = srv.call("GET", "/metrics", Some(TOKEN), None).1;
    assert!(metric(&m, "tandem_conflicts_total", &["rule=\"hold\""]) >= 2.0, "{m}");
    assert!(metric(&m, "tandem_changes_failed_total", &["direction=\"a->b\""]) >= 2.0, "{m}");

    // Stop, then look at everything an operator or a log collector could see.
    for path in [
        "/api/status",
        "/api/history",
        "/api/conflicts?all=true",
        "/api/dead-letters",
        "/api/audit?limit=10000",
        "/metrics",
        "/ready",
    ] {
        srv.call("GET", path, Some(TOKEN), None);
    }
    let seen = srv.seen.borrow().join("\n");
    let log = std::fs::read_to_string(&srv.log).unwrap();
    drop(srv);
    let c = cfg.to_str().unwrap();
    let verify = tandem(&["audit", "verify", "-c", c]);
    assert!(verify.status.success() && text(&verify).contains("audit trail intact"), "{}", text(&verify));
    let mut cli = String::new();
    for args in [
        vec!["audit", "-c", c, "--limit", "10000"],
        vec!["audit", "-c", c, "--key", "1", "--field", "note"],
        vec!["status", "-c", c],
        vec!["conflicts", "-c", c, "--all"],
        vec!["dead-letters", "-c", c],
    ] {
        let out = tandem(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        cli.push_str(&text(&out));
    }
    assert!(log.contains("admin request refused") && log.contains("wrong token"), "{log}");
    for (what, haystack) in [("log", &log), ("API responses", &seen), ("command output", &cli)] {
        assert!(!haystack.contains(TOKEN), "the admin token leaked into the {what}");
        assert!(!haystack.contains("wrong-token-0000000000"), "a refused token leaked into the {what}");
        assert!(!haystack.contains(CANARY), "a sensitive value leaked into the {what}:\n{haystack}");
    }
    // Why does Ada's note have its value? The operator's resolution.
    let why = text(&tandem(&["audit", "-c", c, "--key", "1", "--field", "note"]));
    assert!(why.lines().last().unwrap().contains("from #") && why.contains("resolve"), "{why}");
}

#[test]
fn tampering_with_the_audit_trail_is_detected() {
    let dir = TempDir::new("tamper");
    let cfg = setup(&dir, "");
    let a = db(&dir.path("a.db"));
    a.execute_batch("INSERT INTO people (id, name, email, tier) VALUES (1, 'Ada', 'ada@x', 'gold');").unwrap();
    let c = cfg.to_str().unwrap();
    assert!(tandem(&["run", "--once", "-c", c]).status.success());
    for name in ["Ada Lovelace", "Ada King", "Ada B."] {
        a.execute("UPDATE people SET name = ?1 WHERE id = 1", [name]).unwrap();
        assert!(tandem(&["run", "--once", "-c", c]).status.success());
    }
    let ok = tandem(&["audit", "verify", "-c", c]);
    assert!(ok.status.success(), "{}", text(&ok));
    let st = db(&dir.path("state.db"));
    let id: i64 = st.query_row("SELECT min(id) FROM audit WHERE kind = 'apply'", [], |r| r.get(0)).unwrap();
    st.execute("UPDATE audit SET detail = replace(detail, 'Lovelace', 'Byron') WHERE id = ?1", [id]).unwrap();
    let bad = tandem(&["audit", "verify", "-c", c]);
    assert!(!bad.status.success(), "a changed row passed");
    assert!(text(&bad).contains(&format!("row #{id}")), "{}", text(&bad));
    st.execute("UPDATE audit SET detail = replace(detail, 'Byron', 'Lovelace') WHERE id = ?1", [id]).unwrap();
    assert!(tandem(&["audit", "verify", "-c", c]).status.success());
    st.execute("DELETE FROM audit WHERE id = ?1", [id]).unwrap();
    let gone = tandem(&["audit", "verify", "-c", c]);
    assert!(!gone.status.success() && text(&gone).contains("removed"), "{}", text(&gone));
    // The field history of the record: the three renames, the latest explains the value.
    let why = text(&tandem(&["audit", "-c", c, "--key", "1", "--field", "name"]));
    assert!(why.contains("Ada B.") && why.lines().last().unwrap().starts_with("why: `name`"), "{why}");
}

#[test]
fn an_admin_server_off_this_machine_needs_a_token() {
    let dir = TempDir::new("admin-open");
    let cfg = setup(&dir, "[admin]\nlisten = \"0.0.0.0:0\"");
    let out = tandem(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("tandem.toml:3") && t.contains("without a token") && t.contains("TANDEM_ADMIN_TOKEN"), "{t}");
    assert!(!dir.path("state.db").exists(), "a refused config wrote state");
    // A token written out is refused too.
    let dir = TempDir::new("admin-literal");
    let cfg = setup(&dir, "[admin]\ntoken = \"abcdefabcdefabcdefabcdef\"");
    let t = text(&tandem(&["run", "--once", "-c", cfg.to_str().unwrap()]));
    assert!(t.contains("secrets never go in config files") && !t.contains("abcdefabcdefabcdefabcdef"), "{t}");
}

/// A WebDriver session in headless Chromium through Debian's chromedriver.
struct Browser {
    _driver: Kill,
    base: String,
    agent: ureq::Agent,
    _profile: TempDir,
}

impl Browser {
    fn start() -> Browser {
        assert!(
            std::path::Path::new("/usr/bin/chromedriver").exists(),
            "Chromium and ChromeDriver are missing: run scripts/browser-setup (scripts/test does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Kill(
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver runs"),
        );
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let profile = TempDir::new("chromium-profile");
        let mut b = Browser { _driver: driver, base: format!("http://127.0.0.1:{port}"), agent, _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.agent.get(&format!("{}/status", b.base)).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = serde_json::json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", format!("--user-data-dir={}", b._profile.0.display())]
            }
        }}});
        let session = b.post("/session", caps);
        let id = session["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {session}")).to_string();
        b.base = format!("{}/session/{id}", b.base);
        b
    }

    fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let mut r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .content_type("application/json")
            .send(body.to_string())
            .expect("chromedriver answers");
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    fn open(&self, url: &str) {
        self.post("/url", serde_json::json!({ "url": url }));
    }

    /// Runs a script in the page; returns its value.
    fn eval(&self, script: &str) -> serde_json::Value {
        self.post("/execute/sync", serde_json::json!({ "script": script, "args": [] }))["value"].clone()
    }

    fn text(&self, css: &str) -> Option<String> {
        let v = self.eval(&format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;"));
        v.as_str().map(str::to_string)
    }

    /// Clicks the element; the page redraws every 2 s, so an element that went stale between
    /// finding and clicking is found again.
    fn click(&self, css: &str) {
        for _ in 0..5 {
            let found = self.post("/element", serde_json::json!({ "using": "css selector", "value": css }));
            let id = found["value"]["element-6066-11e4-a52e-4f735466cecf"]
                .as_str()
                .unwrap_or_else(|| panic!("no element {css}: {found}"))
                .to_string();
            let clicked = self.post(&format!("/element/{id}/click"), serde_json::json!({}));
            if clicked["value"].is_null() {
                return;
            }
            assert_eq!(clicked["value"]["error"], "stale element reference", "clicking {css}: {clicked}");
        }
        panic!("{css} kept going stale");
    }

    fn until(&self, what: &str, mut f: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f(self) {
            let page = self.eval("return document.body.innerText;");
            assert!(Instant::now() < deadline, "the dashboard never showed {what}; page:\n{page}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
    }
}

#[test]
fn the_dashboard_shows_live_numbers_and_its_retry_button_works_in_chromium() {
    let dir = TempDir::new("dashboard");
    let cfg = setup(&dir, ADMIN);
    let a = db(&dir.path("a.db"));
    let b = db(&dir.path("b.db"));
    a.execute_batch("INSERT INTO people (id, name, email, tier) VALUES (1, 'Ada', 'ada@x', 'gold');").unwrap();
    let srv = Server::start(&dir, &cfg);
    let browser = Browser::start();

    // Without the token the page holds nothing but the sign-in form.
    browser.open(&format!("{}/", srv.base));
    browser.until("the sign-in form", |b| {
        b.eval("return !document.getElementById('login').hidden && !document.querySelector('[data-sync]');") == true
    });
    // With the token (in the fragment, never sent to the server) it shows the sync.
    browser.open(&format!("{}/#token={TOKEN}", srv.base));
    browser
        .until("the sync running", |b| b.text("[data-sync=people] [data-metric=state]").as_deref() == Some("running"));
    assert_eq!(browser.eval("return location.hash;"), "", "the token stayed in the address bar");
    let applied = |b: &Browser| {
        b.text("[data-sync=people] [data-metric=applied-left]").and_then(|t| t.parse::<u64>().ok()).unwrap_or(0)
    };
    let before = applied(&browser);
    // Rows written on a: the numbers move without a reload.
    for i in 0..5 {
        a.execute(
            "INSERT INTO people (name, email, tier) VALUES (?1, ?2, 'gold')",
            [format!("P{i}"), format!("p{i}@x")],
        )
        .unwrap();
    }
    browser.until("the new rows counted", |b| applied(b) >= before + 5);
    browser.until("the linked count", |b| b.text("[data-sync=people] [data-metric=linked]").as_deref() == Some("6"));
    assert!(browser.eval("return document.querySelectorAll('canvas').length;").as_u64().unwrap() >= 2);

    // A record the ERP refuses shows as a dead letter; after the ERP's policy changes, the
    // page's Retry button syncs it.
    a.execute("INSERT INTO people (id, name, email, tier) VALUES (50, 'Grace', 'blocked-grace@x', 'gold')", [])
        .unwrap();
    browser
        .until("the dead letter", |b| b.text("[data-dead-letter]").is_some_and(|t| t.contains("blocked by the ERP")));
    assert_eq!(browser.text("[data-sync=people] [data-metric=dead-letters]").as_deref(), Some("1"));
    b.execute_batch("DROP TRIGGER refuse;").unwrap();
    browser.click("button[data-retry]");
    let synced = || {
        b.query_row("SELECT count(*) FROM clients WHERE mail = 'blocked-grace@x'", [], |r| r.get::<_, i64>(0)).unwrap()
    };
    srv.until("the retried record on b", || synced() == 1);
    browser.until("the dead letter gone", |b| {
        b.text("[data-dead-letter]").is_none()
            && b.text("[data-sync=people] [data-metric=dead-letters]").as_deref() == Some("0")
    });

    // Pause from the page.
    browser.click("[data-sync=people] button[data-action=pause]");
    browser.until("paused", |b| b.text("[data-sync=people] [data-metric=state]").as_deref() == Some("paused"));
    browser.click("[data-sync=people] button[data-action=resume]");
    browser.until("running again", |b| b.text("[data-sync=people] [data-metric=state]").as_deref() == Some("running"));
}

#[test]
fn plan_reports_what_the_first_sync_would_do_and_writes_nothing() {
    let dir = TempDir::new("plan");
    let cfg = pair(&dir, "conflict = \"hold\"");
    let a = db(&dir.path("a.db"));
    let b = db(&dir.path("b.db"));
    a.execute_batch(
        "INSERT INTO people (name, email, note, tier) VALUES ('Ada Lovelace', 'ada@x', 'n', 'gold'), ('Alan Turing', 'alan@x', NULL, 'standard'), (NULL, 'nameless@x', NULL, 'gold');",
    )
    .unwrap();
    b.execute_batch(
        "INSERT INTO clients (first, last, mail, memo, level) VALUES ('Ada', 'Lovelace', 'ADA@x', 'n', 'std'), ('Grace', 'Hopper', 'grace@x', NULL, 'std');",
    )
    .unwrap();
    drop((a, b));
    let bytes = |f: &str| std::fs::read(dir.path(f)).unwrap();
    let files = || {
        let mut v: Vec<String> =
            std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let (a0, b0, f0) = (bytes("a.db"), bytes("b.db"), files());
    let c = cfg.to_str().unwrap();

    let out = tandem(&["plan", "-c", c]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("the first sync would"), "{t}");
    assert!(t.contains("link 1 existing records matched by match_on"), "{t}");
    assert!(t.contains("create 1 on a, 1 on b"), "{t}");
    // Ada's tier differs, and so does the case of her email: both held (the sync's rule).
    assert!(t.contains("decide conflicts: 2 by hold") && t.contains("field tier: held for a person"), "{t}");
    assert!(t.contains("send 1 records to dead letters") && t.contains("clients.first is NOT NULL"), "{t}");
    assert!(t.contains("lossy field `name`: split_name"), "{t}");
    let json = tandem(&["plan", "-c", c, "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&json)));
    let p = &j["syncs"][0];
    assert_eq!((p["create_on"]["b"].as_u64(), p["create_on"]["a"].as_u64()), (Some(1), Some(1)), "{p}");
    assert_eq!(p["matched"], 1);
    assert_eq!(p["held_for_a_person"], 2);
    assert_eq!(p["dead_letters"][0]["field"], "first", "{p}");
    assert_eq!(p["dead_letters"][0]["from"], "a");

    // Nothing was written: the databases are byte for byte the same, no state file, no
    // capture installed.
    assert!(bytes("a.db") == a0 && bytes("b.db") == b0, "plan changed a database");
    assert_eq!(files(), f0, "plan left files behind");

    // The sync then does what the plan said.
    let run = tandem(&["run", "--once", "-c", c]);
    let r = text(&run);
    assert!(r.contains("a → b: 1 created") && r.contains("b → a: 1 created"), "{r}");
    assert!(
        r.contains("1 linked by match_on") && r.contains("2 held for a person") && r.contains("1 dead letters"),
        "{r}"
    );
    // A plan of the next sync, with state and capture in place, sees a waiting change.
    db(&dir.path("a.db")).execute("UPDATE people SET note = 'changed' WHERE email = 'alan@x'", []).unwrap();
    let (a1, b1) = (bytes("a.db"), bytes("b.db"));
    let state = bytes("state.db");
    let next = text(&tandem(&["plan", "-c", c]));
    assert!(next.contains("the next sync would") && next.contains("update 0 on a, 1 on b"), "{next}");
    assert!(bytes("a.db") == a1 && bytes("b.db") == b1 && bytes("state.db") == state, "plan wrote");
}
