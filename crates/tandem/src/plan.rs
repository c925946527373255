//! `tandem plan`: what the first (or next) sync would do, without writing anything.
//!
//! The engine runs for real against the systems, but each connector is wrapped so that every
//! write is only checked (columns, types, required values) and answered as if it had been
//! made, capture is never installed, and a replication stream is never read (reading it would
//! confirm its position). The state it works on is a copy of the state file, thrown away at
//! the end. What the run decided is the plan.

use crate::config::Config;
use crate::error::CliError;
use crate::runner::{now_ms, open_entity};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};
use tandem_connectors::state::SqliteStore;
use tandem_core::connector::{
    CaptureState, ChangePage, Connector, ConnectorError, ErrorKind, RowError, Write, WriteResult,
};
use tandem_core::engine::{Engine, Report};
use tandem_core::mapping::Side;
use tandem_core::store::StateStore;
use tandem_core::value::{Key, Row, Value};

/// A connector that reads through to the system and only pretends to write.
struct DryRun {
    inner: Box<dyn Connector>,
    /// Capture is not installed; the plan pretends it was.
    pretended: bool,
    /// Records "created" so far, for keys the system would generate.
    new_keys: u64,
    /// What the plan's writes would have made of the records they touched (`None`: deleted),
    /// so reading them back sees the planned state, as after real writes.
    overlay: std::collections::HashMap<Key, Option<Row>>,
}

impl DryRun {
    fn new_key(&mut self, values: &Row) -> Key {
        self.inner.key_of(values).unwrap_or_else(|| {
            self.new_keys += 1;
            Key::from_values(&[Value::Text(format!("(new {})", self.new_keys))])
        })
    }
}

impl Connector for DryRun {
    fn capture_state(&mut self, cursor: Option<u64>) -> Result<CaptureState, ConnectorError> {
        self.inner.capture_state(cursor)
    }
    fn install(&mut self) -> Result<String, ConnectorError> {
        self.pretended = true;
        Ok("change capture would be installed".into())
    }
    fn identity(&mut self) -> Result<Option<String>, ConnectorError> {
        self.inner.identity()
    }
    fn head(&mut self) -> Result<u64, ConnectorError> {
        if self.pretended {
            Ok(0)
        } else {
            self.inner.head()
        }
    }
    fn changes(&mut self, after: u64, limit: usize, wait: bool) -> Result<ChangePage, ConnectorError> {
        if !self.pretended && self.inner.changes_read_only() {
            self.inner.changes(after, limit, wait)
        } else {
            Ok(ChangePage { touched: Vec::new(), next: after, behind: false, label: None })
        }
    }
    fn trim(&mut self, _upto: u64) -> Result<(), ConnectorError> {
        Ok(())
    }
    fn last_change_at(&mut self, key: &Key) -> Result<Option<i64>, ConnectorError> {
        if self.pretended {
            return Ok(None);
        }
        self.inner.last_change_at(key)
    }
    fn prefetch(&mut self, keys: &[Key]) {
        self.inner.prefetch(keys)
    }
    fn read(&mut self, keys: &[Key]) -> Result<Vec<Option<Row>>, ConnectorError> {
        let unknown: Vec<Key> = keys.iter().filter(|k| !self.overlay.contains_key(*k)).cloned().collect();
        let mut found = self.inner.read(&unknown)?.into_iter();
        Ok(keys
            .iter()
            .map(|k| match self.overlay.get(k) {
                Some(row) => row.clone(),
                None => found.next().flatten(),
            })
            .collect())
    }
    fn scan(&mut self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Row)>, ConnectorError> {
        self.inner.scan(after, limit)
    }
    fn find(&mut self, column: &str, value: &Value, ci: bool) -> Result<Vec<(Key, Row)>, ConnectorError> {
        self.inner.find(column, value, ci)
    }
    fn apply(&mut self, writes: &[Write]) -> Result<Vec<WriteResult>, ConnectorError> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            if let Err(e) = self.inner.check_write(w) {
                out.push(Err(e));
                continue;
            }
            let key = match w {
                Write::Insert { values, .. } => {
                    let key = self.new_key(values);
                    self.overlay.insert(key.clone(), Some(values.clone()));
                    key
                }
                Write::Update { key, values, .. } => {
                    let mut row = self.read(std::slice::from_ref(key))?.pop().flatten().unwrap_or_default();
                    row.extend(values.iter().map(|(c, v)| (c.clone(), v.clone())));
                    self.overlay.insert(key.clone(), Some(row));
                    key.clone()
                }
                Write::Delete { key } => {
                    self.overlay.insert(key.clone(), None);
                    key.clone()
                }
            };
            out.push(Ok(key));
        }
        Ok(out)
    }
    fn created(&mut self, _intent: &str) -> Result<Option<Key>, ConnectorError> {
        Ok(None)
    }
    fn forget_intents(&mut self, _ids: &[String]) -> Result<(), ConnectorError> {
        Ok(())
    }
    fn backlog(&mut self, after: u64) -> Result<Option<u64>, ConnectorError> {
        self.inner.backlog(after)
    }
    fn row_estimate(&mut self) -> Result<Option<u64>, ConnectorError> {
        self.inner.row_estimate()
    }
    fn uninstall(&mut self) -> Result<String, ConnectorError> {
        Err(ConnectorError::new(ErrorKind::Internal, "a plan removes nothing"))
    }
    fn key_of(&self, values: &Row) -> Option<Key> {
        self.inner.key_of(values)
    }
    fn bulk_insert(
        &mut self,
        _batch: &str,
        rows: Vec<Row>,
        before_commit: &mut dyn FnMut(&[Key]) -> bool,
    ) -> Result<Result<(), RowError>, ConnectorError> {
        for values in &rows {
            if let Err(e) = self.inner.check_write(&Write::Insert { intent: String::new(), values: values.clone() }) {
                return Ok(Err(e));
            }
        }
        let keys: Vec<Key> = rows.iter().map(|r| self.new_key(r)).collect();
        for (k, r) in keys.iter().zip(rows) {
            self.overlay.insert(k.clone(), Some(r));
        }
        if before_commit(&keys) {
            Ok(Ok(()))
        } else {
            Err(ConnectorError::new(ErrorKind::Internal, "the plan's state copy refused a batch"))
        }
    }
}

/// A copy of the state file to plan on (empty when there is none yet), removed when dropped.
struct StateCopy(PathBuf);

impl StateCopy {
    fn of(state: &Path) -> Result<StateCopy, CliError> {
        let copy = std::env::temp_dir().join(format!("tandem-plan-{}-{}.db", std::process::id(), now_ms()));
        let fail = |e: rusqlite::Error| CliError::Usage(format!("copying the state file {}: {e}", state.display()));
        if state.exists() {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let src = rusqlite::Connection::open_with_flags(state, flags).map_err(fail)?;
            src.execute("VACUUM INTO ?1", [copy.to_string_lossy()]).map_err(fail)?;
        }
        Ok(StateCopy(copy))
    }
}

impl Drop for StateCopy {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.0.display()));
        }
    }
}

/// What the plan found for one sync.
fn plan_sync(cfg: &Config, i: usize, store: &mut SqliteStore) -> Result<Json, CliError> {
    let spec = &cfg.syncs[i];
    let name = spec.name.as_str();
    let first = store.link_count(name)? == 0 && store.meta(name, "init:left")?.is_none();
    let conflicts_before = store.conflicts(Some(name), false)?.iter().map(|c| c.id).max().unwrap_or(0);
    let audit_before = store.audit(Some(name))?.iter().map(|a| a.id).max().unwrap_or(0);
    let dead_before: Vec<i64> = store.dead_letters(Some(name))?.iter().map(|d| d.id).collect();
    let mut conns = [Side::Left, Side::Right].map(|side| {
        open_entity(cfg, i, side).map(|inner| DryRun {
            inner,
            pretended: false,
            new_keys: 0,
            overlay: Default::default(),
        })
    });
    let [left, right] = &mut conns;
    let (left, right) = match (left, right) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(e), _) | (_, Err(e)) => return Err(CliError::Usage(format!("sync `{name}`: {e}"))),
    };
    let now = now_ms;
    let mut total = Report::default();
    {
        let mut engine = Engine::new(spec, store, left, right, &now, cfg.batch_size);
        total.add(&engine.start().map_err(|e| CliError::Usage(format!("sync `{name}`: {e}")))?);
        loop {
            let r = engine.cycle().map_err(|e| CliError::Usage(format!("sync `{name}`: {e}")))?;
            total.add(&r);
            if !(r.processed > 0 || r.loaded != [0, 0] || r.captured != [0, 0]) {
                break;
            }
        }
    }
    let sys = |s: Side| spec.system(s).to_string();
    let decisions: Vec<Json> = store
        .audit(Some(name))?
        .into_iter()
        .filter(|a| a.id > audit_before && (a.kind == "decision" || a.kind == "conflict"))
        .map(|a| {
            json!({
                "left_key": a.left_key.map(|k| k.as_str().to_string()),
                "right_key": a.right_key.map(|k| k.as_str().to_string()),
                "field": a.field,
                "rule": a.rule,
                "winner": a.winner.map(sys),
                "held": a.kind == "conflict",
            })
        })
        .collect();
    let held = store.conflicts(Some(name), true)?.iter().filter(|c| c.id > conflicts_before).count();
    let dead: Vec<Json> = store
        .dead_letters(Some(name))?
        .into_iter()
        .filter(|d| !dead_before.contains(&d.id))
        .map(|d| {
            json!({
                "from": sys(d.side), "key": d.key.as_str(), "field": d.field,
                "value_type": d.value_type, "reason": d.error,
            })
        })
        .collect();
    let lossy: Vec<Json> =
        spec.fields.iter().filter_map(|f| f.lossy_note().map(|n| json!({ "field": f.name, "note": n }))).collect();
    let per_side = |v: [u64; 2]| json!({ sys(Side::Right): v[0], sys(Side::Left): v[1] });
    let streams: Vec<String> = [Side::Left, Side::Right]
        .iter()
        .filter(|s| {
            matches!(
                cfg.systems.get(&spec.side(**s).system),
                Some(crate::config::System::Postgres { .. } | crate::config::System::Mysql { .. })
            )
        })
        .map(|s| sys(*s))
        .collect();
    Ok(json!({
        "sync": name,
        "left": format!("{}.{}", spec.side(Side::Left).system, spec.side(Side::Left).table),
        "right": format!("{}.{}", spec.side(Side::Right).system, spec.side(Side::Right).table),
        "first_sync": first,
        "install": total.installed,
        "read": { sys(Side::Left): total.loaded[0], sys(Side::Right): total.loaded[1] },
        "matched": total.matched,
        "create_on": per_side(total.created),
        "update_on": per_side(total.updated),
        "delete_on": per_side(total.deleted),
        "conflicts_by_rule": total.rules,
        "held_for_a_person": held,
        "decisions": decisions,
        "dead_letters": dead,
        "lossy_fields": lossy,
        "not_read": streams.iter().map(|s| format!("changes waiting in {s}'s replication stream (reading them would confirm them)")).collect::<Vec<_>>(),
    }))
}

/// `tandem plan`.
pub fn plan(path: &Path, as_json: bool) -> Result<(), CliError> {
    let cfg = crate::config::load(path)?;
    let copy = StateCopy::of(&cfg.state)?;
    let mut store = SqliteStore::open(&copy.0)?;
    let mut out = Vec::new();
    for i in 0..cfg.syncs.len() {
        out.push(plan_sync(&cfg, i, &mut store)?);
    }
    drop(store);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json!({ "syncs": out })).unwrap_or_default());
        return Ok(());
    }
    for p in &out {
        print_plan(p);
    }
    println!("nothing was written: this was a plan");
    Ok(())
}

fn print_plan(p: &Json) {
    let n = |v: &Json| v.as_u64().unwrap_or(0);
    let (left, right) = (p["left"].as_str().unwrap_or(""), p["right"].as_str().unwrap_or(""));
    let what = if p["first_sync"] == true { "the first sync" } else { "the next sync" };
    println!("sync `{}` ({left} ⇄ {right}): {what} would", p["sync"].as_str().unwrap_or(""));
    for i in p["install"].as_array().into_iter().flatten() {
        println!("  note: {}", i.as_str().unwrap_or(""));
    }
    let read = p["read"].as_object().map(|m| m.iter().map(|(k, v)| format!("{} from {k}", n(v))).collect::<Vec<_>>());
    if let Some(r) = read.filter(|r| !r.is_empty()) {
        println!("  read {} records", r.join(", "));
    }
    println!("  link {} existing records matched by match_on", n(&p["matched"]));
    for (key, verb) in [("create_on", "create"), ("update_on", "update"), ("delete_on", "delete (or soft-delete)")] {
        let parts: Vec<String> = p[key]
            .as_object()
            .map(|m| m.iter().map(|(sys, v)| format!("{} on {sys}", n(v))).collect())
            .unwrap_or_default();
        println!("  {verb} {}", parts.join(", "));
    }
    let rules = p["conflicts_by_rule"].as_object().cloned().unwrap_or_default();
    if rules.is_empty() {
        println!("  decide no conflicts");
    } else {
        let parts: Vec<String> = rules.iter().map(|(r, v)| format!("{} by {r}", n(v))).collect();
        println!("  decide conflicts: {}", parts.join(", "));
        for d in p["decisions"].as_array().into_iter().flatten().take(20) {
            let who = match (d["held"].as_bool(), d["winner"].as_str()) {
                (Some(true), _) => "held for a person".to_string(),
                (_, Some(w)) => format!("{w} wins"),
                _ => "lines merged".to_string(),
            };
            println!(
                "    record {} ⇄ {} field {}: {who} (rule {})",
                d["left_key"].as_str().unwrap_or("-"),
                d["right_key"].as_str().unwrap_or("-"),
                d["field"].as_str().unwrap_or("-"),
                d["rule"].as_str().unwrap_or("-")
            );
        }
    }
    let dead = p["dead_letters"].as_array().cloned().unwrap_or_default();
    println!("  send {} records to dead letters", dead.len());
    for d in dead.iter().take(20) {
        println!(
            "    {} record {} field {}: {}",
            d["from"].as_str().unwrap_or(""),
            d["key"].as_str().unwrap_or(""),
            d["field"].as_str().unwrap_or("-"),
            d["reason"].as_str().unwrap_or("")
        );
    }
    for l in p["lossy_fields"].as_array().into_iter().flatten() {
        println!("  lossy field `{}`: {}", l["field"].as_str().unwrap_or(""), l["note"].as_str().unwrap_or(""));
    }
    for s in p["not_read"].as_array().into_iter().flatten() {
        println!("  not included: {}", s.as_str().unwrap_or(""));
    }
}
