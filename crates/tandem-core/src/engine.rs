//! The sync loop for one sync: initial load, capture into the inbox, resolve, apply, commit.
//!
//! Each step is safe to interrupt: capture commits the inbox entries together with the new
//! cursor; creates are announced as intents before they are applied; the final commit records
//! links, bases and audit after the writes. A crash anywhere replays from the last commit, and
//! replaying is harmless because applies are idempotent and the base comparison sees that a
//! record already agrees.

use crate::connector::{BulkTarget, CaptureState, Connector, ConnectorError, RowError, Write, WriteResult};
use crate::mapping::{FieldMap, Flow, MapError, Side, Transform};
use crate::merge::{merge, Decision};
use crate::rules::{DeleteRule, OnPositionLost, SyncSpec};
use crate::store::{AuditRow, Conflict, DeadLetter, InboxEntry, Intent, Link, Op, StateStore, StoreError};
use crate::value::{pair_from_json_value, pair_to_json, Key, Name, Row, Value};
use std::collections::{HashMap, HashSet};

/// An engine step failed; the step's effects were not committed and it is retried.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A system failed.
    #[error("system `{system}` ({side}): {source}")]
    Connector {
        /// The system's name.
        system: String,
        /// Its side in the sync.
        side: Side,
        /// What it said.
        #[source]
        source: ConnectorError,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A capture position is gone and the sync is configured to stop.
    #[error(
        "the change capture position of {system}.{table} is gone: {why}. Changes made meanwhile were not captured, so Tandem stopped instead of starting from now. Remedy: set on_position_lost = \"resnapshot\" in this [[sync]] to re-read both sides and reconcile them against the links (deletes made meanwhile on that side are then applied by the delete rules)"
    )]
    PositionLost {
        /// The system.
        system: String,
        /// The table.
        table: String,
        /// What happened.
        why: String,
    },
    /// An operator request that cannot be carried out.
    #[error("{0}")]
    Request(String),
}

/// What one cycle (or a whole run) did, for summaries and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Change capture installed on first use, described for the user.
    pub installed: Vec<String>,
    /// Records read by the initial load, by side.
    pub loaded: [u64; 2],
    /// Changes captured, by side.
    pub captured: [u64; 2],
    /// Records processed from the inbox.
    pub processed: u64,
    /// Records updated on the other side, by source side (`[0]` is left → right).
    pub updated: [u64; 2],
    /// Records created on the other side, by source side.
    pub created: [u64; 2],
    /// Deletes carried out on the other side (propagated or soft), by source side.
    pub deleted: [u64; 2],
    /// Existing records linked by `match_on`.
    pub matched: u64,
    /// Conflicts decided by a rule.
    pub decided: u64,
    /// Conflicts held for a person.
    pub held: u64,
    /// Records sent to dead letters.
    pub dead_letters: u64,
    /// A capture stream had not caught up with its system yet.
    pub behind: bool,
    /// Captured changes that needed no write (echoes of Tandem's own writes, or records that
    /// already agreed), by source side.
    pub echo: [u64; 2],
    /// End-to-end latency (source commit → applied, ms) of each change applied, with its source side.
    pub latencies: Vec<(Side, u64)>,
    /// Records sent to dead letters, by source side.
    pub failed: [u64; 2],
    /// Conflicts decided or held, by rule label (`latest`, `prefer:erp`, `hold`, …).
    pub rules: std::collections::BTreeMap<String, u64>,
}

impl Report {
    /// True when the cycle found anything to do.
    pub fn busy(&self) -> bool {
        self.processed > 0 || self.captured != [0, 0] || self.loaded != [0, 0] || self.behind
    }

    /// Adds another report's counts to this one.
    pub fn add(&mut self, o: &Report) {
        self.installed.extend(o.installed.iter().cloned());
        for i in 0..2 {
            self.loaded[i] += o.loaded[i];
            self.captured[i] += o.captured[i];
            self.updated[i] += o.updated[i];
            self.created[i] += o.created[i];
            self.deleted[i] += o.deleted[i];
            self.echo[i] += o.echo[i];
            self.failed[i] += o.failed[i];
        }
        for (rule, n) in &o.rules {
            *self.rules.entry(rule.clone()).or_default() += n;
        }
        self.latencies.extend(o.latencies.iter().copied());
        self.processed += o.processed;
        self.matched += o.matched;
        self.decided += o.decided;
        self.held += o.held;
        self.dead_letters += o.dead_letters;
        self.behind |= o.behind;
    }
}

/// How an operator resolves a held conflict.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// Keep the left side's current value.
    Left,
    /// Keep the right side's current value.
    Right,
    /// Write this canonical value to both sides.
    Value(Value),
}

/// One sync's engine, borrowing its state store and the two entities' connectors.
pub struct Engine<'a> {
    spec: &'a SyncSpec,
    store: &'a mut dyn StateStore,
    conns: [&'a mut dyn Connector; 2],
    now: &'a dyn Fn() -> i64,
    batch: usize,
    epoch: Option<String>,
    /// Open conflicts of this sync by left key, read once per batch (there are few).
    open_conflicts: Option<HashMap<Key, Vec<Conflict>>>,
}

/// Records of one inbox batch that belong together (the two sides of one link).
struct Group {
    link: Option<Link>,
    keys: [Option<Key>; 2],
    times: [i64; 2],
    pos: [u64; 2],
    has_entry: [bool; 2],
    entries: Vec<(Side, Key)>,
    seq: i64,
}

/// The text that stands for a sensitive field's value in the audit trail and the admin API.
pub const REDACTED: &str = "(sensitive: not kept)";

/// Takes the values of sensitive fields out of an audit row: a decision on such a field keeps
/// who won and by which rule, an applied change keeps which columns changed.
pub fn redact(spec: &SyncSpec, a: &mut AuditRow) {
    let sensitive: Vec<&crate::mapping::FieldMap> =
        spec.fields.iter().filter(|f| spec.sensitive.iter().any(|s| f.name == *s)).collect();
    if sensitive.is_empty() {
        return;
    }
    if a.field.as_ref().is_some_and(|f| spec.sensitive.contains(f)) {
        for v in [&mut a.base, &mut a.left, &mut a.right] {
            if v.is_some() {
                *v = Some(Value::Text(REDACTED.into()));
            }
        }
    }
    if a.kind == "apply" || a.kind == "create" {
        if let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str::<serde_json::Value>(&a.detail) {
            let mut changed = false;
            for f in &sensitive {
                for c in f.left.iter().chain(&f.right).chain(std::iter::once(&f.name)) {
                    if let Some(v) = m.get_mut(c.as_str()) {
                        *v = serde_json::json!([REDACTED, REDACTED]);
                        changed = true;
                    }
                }
            }
            if changed {
                a.detail = serde_json::Value::Object(m).to_string();
            }
        }
    }
}

/// Replaces the values a record has in sensitive fields (on either side) in a text that is
/// about to be kept or shown, such as a system's refusal.
pub fn scrub_sensitive(spec: &SyncSpec, mut text: String, rows: &[Option<&Row>; 2]) -> String {
    for f in spec.fields.iter().filter(|f| spec.sensitive.iter().any(|s| f.name == *s)) {
        for (side, row) in [Side::Left, Side::Right].into_iter().zip(rows) {
            let Some(row) = row else { continue };
            let cols = if side == Side::Left { &f.left } else { &f.right };
            for c in cols {
                let shown = match row.get(c) {
                    Some(Value::Text(t)) => t.clone(),
                    Some(v) if !v.is_null() => v.to_string(),
                    _ => continue,
                };
                if shown.len() >= 3 {
                    text = text.replace(&shown, REDACTED);
                }
            }
        }
    }
    text
}

/// Captured changes with the state changes that record them (inbox entries and cursors) and
/// the positions the sources may forget once those are committed.
struct Direct {
    entries: Vec<InboxEntry>,
    ops: Vec<Op>,
    trims: Vec<(Side, u64)>,
}

/// A bulk page whose target transaction may or may not have committed (kept in state meta
/// `bulk_pending:<side>` until it is known).
#[derive(serde::Serialize, serde::Deserialize)]
struct BulkPending {
    /// The marker the target stores with the page.
    id: String,
    /// Where the load goes on after this page (`None`: the load is done).
    next: Option<String>,
    /// Left keys of the page's links.
    left: Vec<String>,
}

impl BulkPending {
    /// Ops removing the page's links (the page did not land).
    fn drop_links(&self, sync: &str) -> Vec<Op> {
        self.left.iter().filter_map(|k| Key::parse(k)).map(|left| Op::DropLink { sync: sync.into(), left }).collect()
    }
}

/// What a group does, decided before anything is written.
#[derive(Default)]
struct GroupPlan {
    /// Writes with their target side.
    writes: Vec<(Side, Write)>,
    /// State changes committed before any write: rule decisions, which must survive a crash
    /// right after the writes (the replay would find both sides equal and decide nothing).
    ops_first: Vec<Op>,
    /// State changes that hold only when every write of the group succeeded.
    ops_ok: Vec<Op>,
    /// State changes that hold in any case (inbox removal, dead letters found while planning).
    ops_always: Vec<Op>,
    /// A create waiting for its generated key.
    create: Option<Intent>,
    /// The values this group's updates write, per side (see [`Link::pending`]), by left key.
    pending: Option<(Key, [Row; 2])>,
    /// The side whose change this group carries, for dead letters.
    source: Option<(Side, Key)>,
    /// Counts for the report, applied when the group succeeds.
    report: Report,
}

/// The meta entry holding, while a batch writes, the values it writes to each record (left key
/// → `[left, right]` canonical values): one entry for the batch instead of a rewrite of each
/// record's link before the writes. After a crash, [`Engine::recover`] moves them into the
/// links' [`Link::pending`].
const PENDING: &str = "pending_writes";

/// The state meta entry, per sync, that is set while a bulk load writes into `side` (until its
/// end has been settled with the system).
pub fn bulk_target_meta(side: Side) -> String {
    format!("bulk_target:{side}")
}

fn pending_to_json(pending: &[&(Key, [Row; 2])]) -> String {
    let mut out = String::from("[");
    for (i, (left, pair)) in pending.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let key = serde_json::to_string(left.as_str()).expect("a key encodes");
        out.push_str(&format!("[{key},{}]", pair_to_json(pair)));
    }
    out.push(']');
    out
}

fn pending_from_json(text: &str) -> Option<Vec<(Key, [Row; 2])>> {
    let items: Vec<(String, serde_json::Value)> = serde_json::from_str(text).ok()?;
    items.into_iter().map(|(k, pair)| Some((Key::parse(&k)?, pair_from_json_value(&pair)))).collect()
}

/// A record's canonical values (field → value) read from a row of `side`; the field that cannot
/// be read, and why, otherwise. `get` reads one field (copying or moving its columns' values).
fn canonical_values(
    spec: &SyncSpec,
    mut get: impl FnMut(&FieldMap) -> Result<Value, MapError>,
) -> Result<Row, (Name, MapError)> {
    let mut out = Row::new();
    for f in &spec.fields {
        out.insert(f.name.clone(), get(f).map_err(|e| (f.name.clone(), e))?);
    }
    Ok(out)
}

/// What a record of `side` with canonical values `canon` becomes on the other side when it is
/// created there: the columns to write, the base, and whether it must be merged again after
/// (a field that does not flow from `side`, or a NULL one); the field that cannot be written,
/// and why, otherwise.
fn creation(spec: &SyncSpec, side: Side, mut canon: Row) -> Result<(Row, Row, bool), (Name, MapError)> {
    creation_with(spec, side, |f| Ok(canon.remove(&f.name).unwrap_or(Value::Null)))
}

/// [`creation`] from a record's canonical values as `get` reads them, field by field, without
/// a map of them in between (a bulk load's pages). Every field is read, also one that does not
/// flow from `side`, so a value that cannot be read fails the record as it would on its own.
fn creation_with(
    spec: &SyncSpec,
    side: Side,
    mut get: impl FnMut(&FieldMap) -> Result<Value, MapError>,
) -> Result<(Row, Row, bool), (Name, MapError)> {
    let other = side.other();
    let mut values = spec.defaults[other.index()].clone();
    let mut base = Row::new();
    let mut revisit = false;
    for f in &spec.fields {
        let v = get(f).map_err(|e| (f.name.clone(), e))?;
        if !f.flow.allows_from(side) {
            revisit = true;
            continue;
        }
        revisit |= v.is_null();
        f.put_into(other, v.clone(), &mut values).map_err(|e| (f.name.clone(), e))?;
        base.insert(f.name.clone(), v);
    }
    Ok((values, base, revisit))
}

/// Whether two fields read one column of `side`.
fn shared_columns(spec: &SyncSpec, side: Side) -> bool {
    let cols: Vec<&Name> = spec.fields.iter().flat_map(|f| f.columns(side)).collect();
    cols.iter().enumerate().any(|(i, c)| cols[i + 1..].contains(c))
}

/// [`creation`] of a page of rows of `side` for a bulk load, in order: `None` for a row that
/// cannot be mapped (it goes the one-by-one way, which records why). Values move out of the
/// rows, unless `shared` (two fields read one column of `side`). A big page is split over two
/// threads: the work is pure, and the engine thread is a bulk load's bottleneck.
fn creations(spec: &SyncSpec, side: Side, shared: bool, mut rows: Vec<Row>) -> Vec<Option<(Row, Row)>> {
    let renames = Renames::of(spec, side);
    let one = |mut row: Row| {
        if let Some(r) = &renames {
            return Some(r.create(spec, side, row));
        }
        let made = if shared {
            creation_with(spec, side, |f| f.get(side, &row))
        } else {
            creation_with(spec, side, |f| f.take(side, &mut row))
        };
        made.ok().map(|(values, base, _)| (values, base))
    };
    if rows.len() < 1000 {
        return rows.into_iter().map(one).collect();
    }
    let second = rows.split_off(rows.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| second.into_iter().map(one).collect::<Vec<_>>());
        let mut out: Vec<_> = rows.into_iter().map(one).collect();
        out.extend(other.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        out
    })
}

/// [`creation`] for a sync whose every field is a plain rename (one column each side, no two
/// fields on one column): a row's values go to their fields in one pass over its sorted
/// columns, and the new rows are built from sorted lists, instead of a map lookup, removal and
/// insertion per field.
struct Renames {
    /// (column of the source side, field index), by column.
    by_column: Vec<(Name, usize)>,
    /// (column of the other side, field index) of the fields that flow from the source side,
    /// by column.
    targets: Vec<(Name, usize)>,
    /// (field name, field index) of the same fields, by name.
    bases: Vec<(Name, usize)>,
}

impl Renames {
    fn of(spec: &SyncSpec, side: Side) -> Option<Renames> {
        let other = side.other();
        if spec.fields.iter().any(|f| !matches!(f.transform, Transform::Rename))
            || shared_columns(spec, side)
            || shared_columns(spec, other)
        {
            return None;
        }
        let flowing = || spec.fields.iter().enumerate().filter(|(_, f)| f.flow.allows_from(side));
        let mut by_column: Vec<(Name, usize)> =
            spec.fields.iter().enumerate().map(|(i, f)| (f.columns(side)[0].clone(), i)).collect();
        let mut targets: Vec<(Name, usize)> = flowing().map(|(i, f)| (f.columns(other)[0].clone(), i)).collect();
        let mut bases: Vec<(Name, usize)> = flowing().map(|(i, f)| (f.name.clone(), i)).collect();
        for list in [&mut by_column, &mut targets, &mut bases] {
            list.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Some(Renames { by_column, targets, bases })
    }

    /// The values for the other side and the base of a record read as `row`.
    fn create(&self, spec: &SyncSpec, side: Side, row: Row) -> (Row, Row) {
        let mut values: Vec<Value> = vec![Value::Null; spec.fields.len()];
        let mut wanted = self.by_column.iter().peekable();
        for (column, value) in row {
            while wanted.next_if(|(c, _)| c.as_str() < column.as_str()).is_some() {}
            if let Some((_, i)) = wanted.next_if(|(c, _)| c.as_str() == column.as_str()) {
                values[*i] = value;
            }
        }
        let targets = self.targets.iter().map(|(c, i)| (c.clone(), values[*i].clone()));
        let defaults = &spec.defaults[side.other().index()];
        let target = if defaults.is_empty() {
            targets.collect()
        } else {
            let mut t = defaults.clone();
            t.extend(targets);
            t
        };
        let base =
            self.bases.iter().map(|(n, i)| (n.clone(), std::mem::replace(&mut values[*i], Value::Null))).collect();
        (target, base)
    }
}

impl<'a> Engine<'a> {
    /// An engine for `spec` over `store` and the two connectors (left, right). `now` gives the
    /// time in ms; `batch` bounds the records handled per step.
    pub fn new(
        spec: &'a SyncSpec,
        store: &'a mut dyn StateStore,
        left: &'a mut dyn Connector,
        right: &'a mut dyn Connector,
        now: &'a dyn Fn() -> i64,
        batch: usize,
    ) -> Self {
        Engine { spec, store, conns: [left, right], now, batch: batch.max(1), epoch: None, open_conflicts: None }
    }

    fn conn_err(&self, side: Side) -> impl Fn(ConnectorError) -> EngineError + use<> {
        let system = self.spec.system(side).to_string();
        move |source| EngineError::Connector { system: system.clone(), side, source }
    }

    fn sync(&self) -> String {
        self.spec.name.clone()
    }

    /// Installs change capture on first use, checks that capture positions are intact, and
    /// finishes creates interrupted by a crash. Call once when the engine starts, before
    /// [`Engine::cycle`].
    ///
    /// A position that is gone (capture removed, slot dropped, log purged, a different server)
    /// stops the sync with [`EngineError::PositionLost`], or with `on_position_lost =
    /// resnapshot` installs capture again and re-reads the whole entity: never "from now".
    pub fn start(&mut self) -> Result<Report, EngineError> {
        let mut report = Report::default();
        if self.store.meta("", "epoch")?.is_none() {
            // Distinguishes this state file's intent ids from those of an earlier one.
            self.commit(vec![Op::Meta {
                sync: String::new(),
                name: "epoch".into(),
                value: Some((self.now)().to_string()),
            }])?;
        }
        for side in [Side::Left, Side::Right] {
            let conn_err = self.conn_err(side);
            let cursor = self.store.cursor(&self.spec.name, side)?;
            let state = self.conns[side.index()].capture_state(cursor).map_err(&conn_err)?;
            let identity = self.conns[side.index()].identity().map_err(&conn_err)?;
            let init = self.store.meta(&self.spec.name, &format!("init:{side}"))?;
            let known = self.store.meta(&self.spec.name, &format!("identity:{side}"))?;
            // Set before a re-read starts and cleared once it is set up: a crash in between
            // (or `tandem uninstall`) re-reads again on the next start.
            let reread = self.store.meta(&self.spec.name, &format!("reread:{side}"))?;
            let lost = match (&init, &state) {
                (None, _) => None,
                (Some(_), CaptureState::Ready) => match (&known, &identity) {
                    (Some(k), Some(i)) if k != i => Some(format!(
                        "it is a different server now (identity {i}, was {k}): the database was restored or replaced"
                    )),
                    _ => None,
                },
                (Some(_), CaptureState::Missing) => {
                    Some("its change capture is missing (removed, or the database was restored)".to_string())
                }
                (Some(_), CaptureState::Lost(why)) => Some(why.clone()),
            };
            if let (Some(why), None) = (&lost, &reread) {
                if self.spec.on_position_lost == OnPositionLost::Fail {
                    return Err(EngineError::PositionLost {
                        system: self.spec.system(side).to_string(),
                        table: self.spec.side(side).table.clone(),
                        why: why.clone(),
                    });
                }
            }
            if init.is_none() || lost.is_some() || reread.is_some() || state != CaptureState::Ready {
                if init.is_some() && reread.is_none() {
                    // Records deleted while capture was gone are not in the re-read: queue every
                    // linked record of this side so each is checked against the links.
                    let mut ops =
                        vec![Op::Meta { sync: self.sync(), name: format!("reread:{side}"), value: Some("1".into()) }];
                    for link in self.store.links(&self.spec.name)? {
                        ops.push(Op::Touch { sync: self.sync(), side, key: link.key(side).clone(), at: 0, pos: 0 });
                    }
                    ops.push(Op::Audit(AuditRow {
                        kind: "resnapshot".into(),
                        source: Some(side),
                        detail: format!(
                            "capture position of {} was lost ({}); re-reading it to reconcile",
                            self.spec.system(side),
                            lost.as_deref().unwrap_or("capture was reinstalled")
                        ),
                        ..self.audit_base()
                    }));
                    self.commit(ops)?;
                }
                if state != CaptureState::Ready || lost.is_some() {
                    report.installed.push(self.conns[side.index()].install().map_err(&conn_err)?);
                }
                // Changes made before this point were not captured: load the whole entity.
                let head = self.conns[side.index()].head().map_err(&conn_err)?;
                self.commit(vec![
                    Op::Cursor { sync: self.sync(), side, pos: head },
                    Op::Meta { sync: self.sync(), name: format!("init:{side}"), value: Some("1".into()) },
                    Op::Meta { sync: self.sync(), name: format!("snapshot:{side}"), value: Some(String::new()) },
                    Op::Meta { sync: self.sync(), name: format!("identity:{side}"), value: identity.clone() },
                    Op::Meta { sync: self.sync(), name: format!("reread:{side}"), value: None },
                ])?;
            }
        }
        self.choose_bulk()?;
        self.recover()?;
        self.settle_bulk_targets(true)?;
        self.sweep()?;
        Ok(report)
    }

    /// Keeps the target of a bulk load told where the load stands (see
    /// [`Connector::bulk_target`]): `Begin` while it runs (at start, so again after a restart,
    /// with `starting`), and once it is done, `End`, whose records are queued as changes of the target in the commit that
    /// closes the load's phase there, then `Forget`. Meta `bulk_target:<side>` is set with
    /// `bulk:<other side>` and cleared by that commit, so a crash anywhere repeats a phase.
    fn settle_bulk_targets(&mut self, starting: bool) -> Result<(), EngineError> {
        for target in [Side::Left, Side::Right] {
            let name = bulk_target_meta(target);
            if self.store.meta(&self.spec.name, &name)?.is_none() {
                continue;
            }
            let conn_err = self.conn_err(target);
            let conn = &mut self.conns[target.index()];
            if self.store.meta(&self.spec.name, &format!("bulk:{}", target.other()))?.is_some() {
                if starting {
                    conn.bulk_target(BulkTarget::Begin).map_err(&conn_err)?;
                }
                continue;
            }
            let strays = conn.bulk_target(BulkTarget::End).map_err(&conn_err)?;
            let n = strays.len();
            let mut ops: Vec<Op> = strays
                .into_iter()
                .map(|key| Op::Touch { sync: self.sync(), side: target, key, at: 0, pos: 0 })
                .collect();
            ops.push(Op::Meta { sync: self.sync(), name, value: None });
            ops.push(Op::Audit(AuditRow {
                kind: "load".into(),
                source: Some(target),
                detail: match n {
                    0 => format!("initial load into {} done", self.spec.system(target)),
                    _ => format!(
                        "initial load into {} done: {n} records there that its batches did not write (or that changed since) are checked as changes",
                        self.spec.system(target)
                    ),
                },
                ..self.audit_base()
            }));
            self.commit(ops)?;
            self.conns[target.index()].bulk_target(BulkTarget::Forget).map_err(&conn_err)?;
        }
        Ok(())
    }

    /// Removes markers a crash left on the systems after their outcome was committed to the
    /// state (between that commit and the marker's removal): this state file's markers of
    /// this sync that no pending create or bulk page refers to any more.
    fn sweep(&mut self) -> Result<(), EngineError> {
        let mut known: HashSet<String> = self.store.intents(&self.spec.name)?.into_iter().map(|i| i.id).collect();
        for side in [Side::Left, Side::Right] {
            if let Some(text) = self.store.meta(&self.spec.name, &format!("bulk_pending:{side}"))? {
                if let Ok(p) = serde_json::from_str::<BulkPending>(&text) {
                    known.insert(p.id);
                }
            }
        }
        let (prefix, epoch) = (format!("{}:", self.spec.name), format!(":{}:", self.epoch()?));
        let mut ids: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        for side in [Side::Left, Side::Right] {
            ids[side.index()] = self.conns[side.index()]
                .intent_ids()
                .map_err(self.conn_err(side))?
                .into_iter()
                .filter(|id| id.starts_with(&prefix) && id.contains(&epoch) && !known.contains(id))
                .collect();
        }
        self.forget(ids)
    }

    /// A first sync into an empty side copies in bulk. When neither side has begun its initial
    /// load, nothing is linked yet and one side's table is empty, that side has nothing to load
    /// (its capture is already installed, so rows inserted from now on arrive as changes) and
    /// the other side's records are created on it in batches of whole pages: one state commit
    /// and one target transaction per page instead of per record. Records the batch path cannot
    /// take (a key the target generates, a value that does not map, a key that is taken) go
    /// through the one-by-one path.
    fn choose_bulk(&mut self) -> Result<(), EngineError> {
        for side in [Side::Left, Side::Right] {
            let snap = self.store.meta(&self.spec.name, &format!("snapshot:{side}"))?;
            let bulk = self.store.meta(&self.spec.name, &format!("bulk:{side}"))?;
            if snap.as_deref() != Some("") || bulk.is_some() {
                return Ok(());
            }
        }
        if self.store.link_count(&self.spec.name)? > 0 {
            return Ok(());
        }
        let mut empty = [false; 2];
        for side in [Side::Left, Side::Right] {
            empty[side.index()] = self.conns[side.index()].scan(None, 1).map_err(self.conn_err(side))?.is_empty();
        }
        for side in [Side::Left, Side::Right] {
            let other = side.other();
            if empty[other.index()] && !empty[side.index()] {
                self.commit(vec![
                    Op::Meta { sync: self.sync(), name: format!("bulk:{side}"), value: Some("1".into()) },
                    Op::Meta { sync: self.sync(), name: bulk_target_meta(other), value: Some("1".into()) },
                    Op::Meta { sync: self.sync(), name: format!("snapshot:{other}"), value: None },
                    Op::Audit(AuditRow {
                        kind: "load".into(),
                        source: Some(side),
                        detail: format!(
                            "initial load: {} is empty, so {}'s records are created on it in batches",
                            self.spec.system(other),
                            self.spec.system(side)
                        ),
                        ..self.audit_base()
                    }),
                ])?;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Finishes or abandons creates that were announced but not confirmed.
    fn recover(&mut self) -> Result<(), EngineError> {
        if let Some(text) = self.store.meta(&self.spec.name, PENDING)? {
            // A batch was cut short between recording what it writes and its outcome: the
            // records keep what it was writing until their next merge.
            let mut ops = Vec::new();
            for (left, pending) in
                pending_from_json(&text).ok_or_else(|| EngineError::Request(format!("state: unreadable {PENDING}")))?
            {
                if let Some(link) = self.store.link(&self.spec.name, Side::Left, &left)? {
                    ops.push(Op::PutLink { sync: self.sync(), link: Link { pending, ..link } });
                }
            }
            ops.push(Op::Meta { sync: self.sync(), name: PENDING.into(), value: None });
            self.commit(ops)?;
        }
        for side in [Side::Left, Side::Right] {
            let Some(text) = self.store.meta(&self.spec.name, &format!("bulk_pending:{side}"))? else { continue };
            let pending: BulkPending = serde_json::from_str(&text)
                .map_err(|e| EngineError::Request(format!("state: unreadable bulk_pending:{side} ({e})")))?;
            let other = side.other();
            if self.conns[other.index()].created(&pending.id).map_err(self.conn_err(other))?.is_some() {
                self.finish_bulk(side, &pending, &mut Report::default())?;
            } else {
                // The batch never reached the target: forget its links and read the page again.
                let mut ops = pending.drop_links(&self.spec.name);
                ops.push(Op::Meta { sync: self.sync(), name: format!("bulk_pending:{side}"), value: None });
                self.commit(ops)?;
            }
        }
        let intents = self.store.intents(&self.spec.name)?;
        if intents.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut confirmed: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        for intent in intents {
            let target = intent.source.other();
            ops.push(Op::DropIntent { sync: self.sync(), id: intent.id.clone() });
            if let Some(key) = self.conns[target.index()].created(&intent.id).map_err(self.conn_err(target))? {
                let link = self.new_link(intent.source, intent.source_key.clone(), key.clone(), intent.base.clone());
                ops.push(Op::Audit(AuditRow {
                    kind: "create".into(),
                    source: Some(intent.source),
                    left_key: Some(link.left.clone()),
                    right_key: Some(link.right.clone()),
                    detail: "create confirmed after a restart".into(),
                    ..self.audit_base()
                }));
                ops.push(Op::PutLink { sync: self.sync(), link });
                if intent.revisit {
                    ops.push(Op::Touch { sync: self.sync(), side: target, key, at: 0, pos: 0 });
                }
                confirmed[target.index()].push(intent.id);
            }
        }
        self.commit(ops)?;
        self.forget(confirmed)
    }

    fn forget(&mut self, ids: [Vec<String>; 2]) -> Result<(), EngineError> {
        for side in [Side::Left, Side::Right] {
            if !ids[side.index()].is_empty() {
                self.conns[side.index()].forget_intents(&ids[side.index()]).map_err(self.conn_err(side))?;
            }
        }
        Ok(())
    }

    fn new_link(&self, source: Side, source_key: Key, other_key: Key, base: Row) -> Link {
        let (left, right) = match source {
            Side::Left => (source_key, other_key),
            Side::Right => (other_key, source_key),
        };
        Link { left, right, base, tombstone: None, pending: Default::default() }
    }

    /// Commits state changes, keeping the values of sensitive fields out of the audit rows.
    fn commit(&mut self, mut ops: Vec<Op>) -> Result<(), StoreError> {
        if !self.spec.sensitive.is_empty() {
            for op in &mut ops {
                if let Op::Audit(a) = op {
                    redact(self.spec, a);
                }
            }
        }
        self.store.commit(ops)
    }

    fn audit_base(&self) -> AuditRow {
        AuditRow { at: (self.now)(), sync: self.sync(), ..AuditRow::default() }
    }

    /// One round: a page of initial load, a page of changes from each side, one inbox batch.
    pub fn cycle(&mut self) -> Result<Report, EngineError> {
        let mut report = Report::default();
        self.recover()?;
        for side in [Side::Left, Side::Right] {
            self.load_page(side, &mut report)?;
        }
        let direct = self.capture(&mut report)?;
        self.process(&mut report, direct)?;
        Ok(report)
    }

    /// Reads one page of the initial load of a side into the inbox, if a load is under way.
    fn load_page(&mut self, side: Side, report: &mut Report) -> Result<(), EngineError> {
        let name = format!("snapshot:{side}");
        let Some(after) = self.store.meta(&self.spec.name, &name)? else {
            return Ok(());
        };
        let after = Key::parse(&after);
        if self.store.meta(&self.spec.name, &format!("bulk:{side}"))?.is_some() {
            self.bulk_page(side, after, report)?;
            return self.settle_bulk_targets(false);
        }
        let rows = self.conns[side.index()].scan(after.as_ref(), self.batch).map_err(self.conn_err(side))?;
        let mut ops: Vec<Op> = rows
            .iter()
            .map(|(key, _)| Op::Touch { sync: self.sync(), side, key: key.clone(), at: 0, pos: 0 })
            .collect();
        let next = if rows.len() < self.batch { None } else { rows.last().map(|(k, _)| k.as_str().to_string()) };
        ops.push(Op::Meta { sync: self.sync(), name, value: next });
        report.loaded[side.index()] += rows.len() as u64;
        self.commit(ops)?;
        Ok(())
    }

    /// One page of a bulk initial load (see [`Engine::choose_bulk`]). The links of the page
    /// are committed first, marked pending; the target inserts the page with a marker in one
    /// transaction; the next commit moves the load on. After a crash, the marker says whether
    /// the page reached the target (keep the links) or not (drop them, read the page again).
    fn bulk_page(&mut self, side: Side, after: Option<Key>, report: &mut Report) -> Result<(), EngineError> {
        let other = side.other();
        let rows = self.conns[side.index()].scan(after.as_ref(), self.batch).map_err(self.conn_err(side))?;
        let next = if rows.len() < self.batch { None } else { rows.last().map(|(k, _)| k.as_str().to_string()) };
        report.loaded[side.index()] += rows.len() as u64;
        let keys: Vec<Key> = rows.iter().map(|(k, _)| k.clone()).collect();
        let linked = self.store.links_of(&self.spec.name, side, &keys)?;
        // A field that does not flow from this side takes the target's value: read it back.
        let one_way = self.spec.fields.iter().any(|f| !f.flow.allows_from(side));
        let shared = shared_columns(self.spec, side);
        let mut touches = Vec::new();
        let mut sources = Vec::new();
        let mut inserts = Vec::new();
        let mut bases = Vec::new();
        let mut targets = HashSet::new();
        let (keys, rows): (Vec<Key>, Vec<Row>) = rows
            .into_iter()
            // Not one created or matched already, from a change captured meanwhile.
            .filter(|(key, row)| {
                !linked.contains_key(key) && self.spec.filters[side.index()].as_ref().is_none_or(|f| f.matches(row))
            })
            .unzip();
        for (key, made) in keys.into_iter().zip(creations(self.spec, side, shared, rows)) {
            match made {
                Some((values, base)) if self.conns[other.index()].key_of(&values).is_none_or(|t| targets.insert(t)) => {
                    sources.push(key);
                    inserts.push(values);
                    bases.push(base);
                }
                // The one-by-one path creates it, or records why it cannot.
                _ => touches.push(Op::Touch { sync: self.sync(), side, key, at: 0, pos: 0 }),
            }
        }
        let id = format!("{}:{}:bulk:{side}:{}", self.spec.name, self.epoch()?, (self.now)());
        if inserts.is_empty() {
            touches.extend(self.bulk_done_ops(side, &next));
            self.commit(touches)?;
            return Ok(());
        }
        let n = inserts.len();
        // The page's links are made durable, marked pending, before the target commits: while
        // the rows are on their way when their keys are known, else once the target has
        // generated them.
        let sync = self.sync();
        let store = &mut *self.store;
        let mut first = Some(touches);
        let mut bases = Some(bases);
        let mut stored = Ok(());
        let mut pending: Option<BulkPending> = None;
        let outcome = self.conns[other.index()].bulk_insert(&id, inserts, &mut |keys: &[Key]| {
            let (Some(mut ops), Some(bases)) = (first.take(), bases.take()) else { return false };
            if keys.len() != sources.len() {
                stored = Err(StoreError::new(format!(
                    "the target reported {} keys for {} new records",
                    keys.len(),
                    sources.len()
                )));
                return false;
            }
            let mut left = Vec::with_capacity(keys.len());
            for ((source, target), base) in sources.iter().zip(keys).zip(bases) {
                if one_way {
                    ops.push(Op::Touch { sync: sync.clone(), side: other, key: target.clone(), at: 0, pos: 0 });
                }
                let (l, r) = match side {
                    Side::Left => (source.clone(), target.clone()),
                    Side::Right => (target.clone(), source.clone()),
                };
                left.push(l.as_str().to_string());
                let link = Link { left: l, right: r, base, tombstone: None, pending: Default::default() };
                ops.push(Op::NewLink { sync: sync.clone(), link });
            }
            let p = BulkPending { id: id.clone(), next: next.clone(), left };
            let text = serde_json::to_string(&p).expect("a pending batch encodes");
            ops.push(Op::Meta { sync: sync.clone(), name: format!("bulk_pending:{side}"), value: Some(text) });
            pending = Some(p);
            stored = store.commit(ops);
            stored.is_ok()
        });
        stored?;
        match (outcome.map_err(self.conn_err(other))?, pending) {
            (Ok(()), Some(pending)) => self.finish_bulk(side, &pending, report),
            (Ok(()), None) => Err(EngineError::Request(format!(
                "system `{}` inserted a batch without asking to commit it",
                self.spec.system(other)
            ))),
            (Err(refused), pending) => {
                // Nothing was written (say a user created one of these keys meanwhile): the
                // page's records go one by one, where each gets its own outcome. If the target
                // refused before the page's links were committed, its other records' touches
                // are committed here.
                let mut ops: Vec<Op> = first.take().unwrap_or_default();
                ops.extend(pending.iter().flat_map(|p| p.drop_links(&self.spec.name)));
                ops.extend(sources.into_iter().map(|key| Op::Touch { sync: self.sync(), side, key, at: 0, pos: 0 }));
                ops.extend(self.bulk_done_ops(side, &next));
                ops.push(Op::Audit(AuditRow {
                    kind: "load".into(),
                    source: Some(side),
                    detail: format!(
                        "initial load: {} refused a batch of {n} records ({refused}); they are created one by one",
                        self.spec.system(other),
                    ),
                    ..self.audit_base()
                }));
                self.commit(ops)?;
                Ok(())
            }
        }
    }

    /// State changes that move a bulk load past a page (`next`: where it goes on, if anywhere).
    fn bulk_done_ops(&self, side: Side, next: &Option<String>) -> Vec<Op> {
        let mut ops = vec![
            Op::Meta { sync: self.sync(), name: format!("snapshot:{side}"), value: next.clone() },
            Op::Meta { sync: self.sync(), name: format!("bulk_pending:{side}"), value: None },
        ];
        if next.is_none() {
            ops.push(Op::Meta { sync: self.sync(), name: format!("bulk:{side}"), value: None });
        }
        ops
    }

    /// A bulk page reached the target: keep its links, move on, drop the target's marker.
    fn finish_bulk(&mut self, side: Side, pending: &BulkPending, report: &mut Report) -> Result<(), EngineError> {
        let other = side.other();
        let n = pending.left.len();
        let mut ops = self.bulk_done_ops(side, &pending.next);
        let (first, last) = (pending.left.first(), pending.left.last());
        ops.push(Op::Audit(AuditRow {
            kind: "create".into(),
            source: Some(side),
            detail: format!(
                "initial load: created {n} records on {} in one batch (left keys {} … {})",
                self.spec.system(other),
                first.map(String::as_str).unwrap_or(""),
                last.map(String::as_str).unwrap_or("")
            ),
            ..self.audit_base()
        }));
        ops.push(Op::Meta { sync: self.sync(), name: "last_sync".into(), value: Some((self.now)().to_string()) });
        self.commit(ops)?;
        report.created[side.index()] += n as u64;
        let mut ids: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        ids[other.index()].push(pending.id.clone());
        self.forget(ids)
    }

    /// Moves one page of captured changes of each side into the inbox, with the cursors, in
    /// one commit; only then are the sources told the positions are done. When the inbox is
    /// empty and the changes fit one batch they are handed to [`Engine::process`] directly
    /// instead: the commit that records their outcome then also moves the cursors (nothing is
    /// acknowledged to a source before that). A stream is waited for only when there is
    /// nothing else to do: during an initial load or with changes waiting in the inbox, each
    /// round takes what the streams have delivered and goes on with its other work.
    ///
    /// A round takes at most a batch of changes: up to half from each side, and a side with
    /// more fills what the other left. Neither side can hold the other up, and with an empty
    /// inbox a busy round's changes still fit one batch, merged directly.
    fn capture(&mut self, report: &mut Report) -> Result<Option<Direct>, EngineError> {
        let mut ops = Vec::new();
        let mut trims = Vec::new();
        let mut entries = Vec::new();
        let inbox_empty = self.store.inbox(&self.spec.name, 1)?.is_empty();
        let wait = inbox_empty && report.loaded == [0, 0];
        let mut pages = Vec::with_capacity(2);
        for side in [Side::Left, Side::Right] {
            let cursor = self.store.cursor(&self.spec.name, side)?.unwrap_or(0);
            let half = self.batch.div_ceil(2);
            let page = self.conns[side.index()].changes(cursor, half, wait).map_err(self.conn_err(side))?;
            pages.push((side, cursor, page));
        }
        let mut room = self.batch.saturating_sub(pages.iter().map(|(_, _, p)| p.touched.len()).sum());
        for (side, _, page) in &mut pages {
            // Only a side that had changes and more waiting; a stream that is merely catching up
            // (with Tandem's own writes, say) is not asked twice.
            if room == 0 || page.touched.is_empty() || !page.behind {
                continue;
            }
            let more = self.conns[side.index()].changes(page.next, room, false).map_err(self.conn_err(*side))?;
            room = room.saturating_sub(more.touched.len());
            page.touched.extend(more.touched);
            page.next = page.next.max(more.next);
            page.behind = more.behind;
            page.label = more.label.or(page.label.take());
        }
        for (side, cursor, page) in pages {
            report.behind |= page.behind;
            if page.touched.is_empty() && page.next <= cursor {
                continue;
            }
            for t in &page.touched {
                ops.push(Op::Touch { sync: self.sync(), side, key: t.key.clone(), at: t.at_ms, pos: t.pos });
                entries.push(InboxEntry {
                    seq: entries.len() as i64,
                    side,
                    key: t.key.clone(),
                    at: t.at_ms,
                    pos: t.pos,
                });
            }
            ops.push(Op::Cursor { sync: self.sync(), side, pos: page.next.max(cursor) });
            if let Some(label) = page.label.filter(|_| page.next > cursor) {
                ops.push(Op::Meta { sync: self.sync(), name: format!("position:{side}"), value: Some(label) });
            }
            report.captured[side.index()] += page.touched.len() as u64;
            trims.push((side, page.next));
        }
        if ops.is_empty() {
            return Ok(None);
        }
        let direct = Direct { entries, ops, trims };
        if !direct.entries.is_empty() && direct.entries.len() <= self.batch && inbox_empty {
            return Ok(Some(direct));
        }
        self.commit_capture(direct)?;
        Ok(None)
    }

    /// Commits captured changes to the inbox with the cursors, then lets the sources forget them.
    fn commit_capture(&mut self, captured: Direct) -> Result<(), EngineError> {
        self.commit(captured.ops)?;
        self.trim(captured.trims)
    }

    fn trim(&mut self, trims: Vec<(Side, u64)>) -> Result<(), EngineError> {
        for (side, upto) in trims {
            self.conns[side.index()].trim(upto).map_err(self.conn_err(side))?;
        }
        Ok(())
    }

    fn group(&mut self, entries: Vec<InboxEntry>) -> Result<Vec<Group>, EngineError> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(Side, Key), usize> = HashMap::new();
        let mut links = [HashMap::new(), HashMap::new()];
        for side in [Side::Left, Side::Right] {
            let keys: Vec<Key> = entries.iter().filter(|e| e.side == side).map(|e| e.key.clone()).collect();
            links[side.index()] = self.store.links_of(&self.spec.name, side, &keys)?;
        }
        for e in entries {
            let gi = match index.get(&(e.side, e.key.clone())) {
                Some(i) => *i,
                None => {
                    let link = links[e.side.index()].remove(&e.key);
                    let mut keys = [None, None];
                    keys[e.side.index()] = Some(e.key.clone());
                    if let Some(l) = &link {
                        keys = [Some(l.left.clone()), Some(l.right.clone())];
                    }
                    groups.push(Group {
                        link,
                        keys,
                        times: [0, 0],
                        pos: [0, 0],
                        has_entry: [false, false],
                        entries: Vec::new(),
                        seq: e.seq,
                    });
                    let gi = groups.len() - 1;
                    for side in [Side::Left, Side::Right] {
                        if let Some(k) = &groups[gi].keys[side.index()] {
                            index.insert((side, k.clone()), gi);
                        }
                    }
                    gi
                }
            };
            let g = &mut groups[gi];
            g.times[e.side.index()] = g.times[e.side.index()].max(e.at);
            g.pos[e.side.index()] = g.pos[e.side.index()].max(e.pos);
            g.has_entry[e.side.index()] = true;
            g.entries.push((e.side, e.key));
        }
        Ok(groups)
    }

    /// Processes one batch, from the inbox or handed over by capture: read, decide, announce
    /// creates, apply, commit.
    fn process(&mut self, report: &mut Report, mut direct: Option<Direct>) -> Result<(), EngineError> {
        let entries = match &mut direct {
            Some(d) => std::mem::take(&mut d.entries),
            None => self.store.inbox(&self.spec.name, self.batch)?,
        };
        if entries.is_empty() {
            return Ok(());
        }
        self.open_conflicts = None;
        let n = entries.len() as u64;
        let groups = self.group(entries)?;
        if let Some(d) = direct.take_if(|_| groups.iter().any(|g| g.link.is_none())) {
            // A record without a link may be created; creates take the inbox's way, whose
            // sequence numbers make their intent ids unique.
            self.commit_capture(d)?;
            return self.process(report, None);
        }
        report.processed += n;
        let mut rows: [HashMap<Key, Row>; 2] = [HashMap::new(), HashMap::new()];
        let keys: [Vec<Key>; 2] =
            [Side::Left, Side::Right].map(|side| groups.iter().filter_map(|g| g.keys[side.index()].clone()).collect());
        for side in [Side::Left, Side::Right] {
            self.conns[side.index()].prefetch(&keys[side.index()]);
        }
        for (side, keys) in [Side::Left, Side::Right].into_iter().zip(keys) {
            if keys.is_empty() {
                continue;
            }
            let found = self.conns[side.index()].read(&keys).map_err(self.conn_err(side))?;
            for (k, r) in keys.into_iter().zip(found) {
                if let Some(r) = r {
                    rows[side.index()].insert(k, r);
                }
            }
        }
        let mut claimed: HashSet<(Side, Key)> = HashSet::new();
        let mut plans = Vec::with_capacity(groups.len());
        for g in &groups {
            let mut plan = GroupPlan::default();
            if direct.is_none() {
                for (side, key) in &g.entries {
                    plan.ops_always.push(Op::Untouch { sync: self.sync(), side: *side, key: key.clone() });
                }
            }
            self.plan_group(g, &rows, &mut claimed, &mut plan)?;
            plans.push(plan);
        }

        let mut first: Vec<Op> = Vec::new();
        let mut pending: Vec<&(Key, [Row; 2])> = Vec::new();
        for p in &mut plans {
            first.append(&mut p.ops_first);
        }
        for p in &plans {
            pending.extend(&p.pending);
            if let Some(intent) = &p.create {
                first.push(Op::PutIntent { sync: self.sync(), intent: intent.clone() });
            }
        }
        let decided: Vec<String> = first
            .iter()
            .filter_map(|op| match op {
                Op::Audit(a) if a.kind == "decision" => a.rule.clone(),
                _ => None,
            })
            .collect();
        let recorded = !pending.is_empty();
        if recorded {
            first.push(Op::Meta { sync: self.sync(), name: PENDING.into(), value: Some(pending_to_json(&pending)) });
        }
        drop(pending);
        if !first.is_empty() {
            self.commit(first)?;
        }
        for rule in decided {
            *report.rules.entry(rule).or_default() += 1;
        }
        let mut results: Vec<Vec<Result<Key, RowError>>> = plans.iter().map(|_| Vec::new()).collect();
        let mut owners: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        let mut writes: [Vec<Write>; 2] = [Vec::new(), Vec::new()];
        for (pi, plan) in plans.iter_mut().enumerate() {
            for (target, w) in std::mem::take(&mut plan.writes) {
                owners[target.index()].push(pi);
                writes[target.index()].push(w);
            }
        }
        let outs = self.apply_both(&writes)?;
        for (((side, writes), owners), out) in [Side::Left, Side::Right].into_iter().zip(writes).zip(owners).zip(outs) {
            if writes.is_empty() {
                continue;
            }
            if out.len() != writes.len() {
                return Err(EngineError::Request(format!(
                    "system `{}` answered {} results for {} writes",
                    self.spec.system(side),
                    out.len(),
                    writes.len()
                )));
            }
            for (pi, r) in owners.into_iter().zip(out) {
                results[pi].push(r);
            }
        }
        let mut ops = Vec::new();
        let mut confirmed: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        let now = (self.now)();
        let dead: HashSet<(Side, Key)> =
            self.store.dead_letters(Some(&self.spec.name))?.into_iter().map(|d| (d.side, d.key)).collect();
        for ((plan, res), g) in plans.into_iter().zip(results).zip(&groups) {
            for op in &plan.ops_always {
                if let Op::DeadLetter(d) = op {
                    report.dead_letters += 1;
                    report.failed[d.side.index()] += 1;
                }
            }
            ops.extend(plan.ops_always);
            let settled = res.iter().all(Result::is_ok);
            if let (false, Some((_, pending)), Some(link)) = (settled, plan.pending, &g.link) {
                // Some of the group's writes may have gone through: the link keeps what they
                // wrote (and its old base) until the record's next merge.
                ops.push(Op::PutLink { sync: self.sync(), link: Link { pending, ..link.clone() } });
            }
            if res.iter().any(|r| r.as_ref().is_err_and(|e| e.stale)) {
                // A user wrote the record meanwhile; that write is captured and the record is
                // merged again then. Decisions made on the old read are not applied.
                continue;
            }
            if let Some(err) = res.iter().find_map(|r| r.as_ref().err()) {
                if let Some((side, key)) = plan.source {
                    report.dead_letters += 1;
                    report.failed[side.index()] += 1;
                    // A system's refusal may quote the value it refused: not a sensitive one.
                    let found = [Side::Left, Side::Right]
                        .map(|s| g.keys[s.index()].as_ref().and_then(|k| rows[s.index()].get(k)));
                    let reason = scrub_sensitive(self.spec, err.to_string(), &found);
                    ops.extend(self.dead_letter(
                        side,
                        &key,
                        err.column.clone(),
                        err.value_type.map(str::to_string),
                        reason,
                        now,
                    ));
                }
                if let Some(intent) = plan.create {
                    ops.push(Op::DropIntent { sync: self.sync(), id: intent.id });
                }
                continue;
            }
            let r = &plan.report;
            for side in [Side::Left, Side::Right] {
                let i = side.index();
                if !g.has_entry[i] || g.times[i] <= 0 {
                    continue; // not a captured change (initial load, a revisit)
                }
                if r.updated[i] + r.created[i] + r.deleted[i] > 0 {
                    report.latencies.push((side, now.saturating_sub(g.times[i]).max(0) as u64));
                } else if r.updated[1 - i] + r.created[1 - i] + r.deleted[1 - i] == 0 && r.decided + r.held == 0 {
                    report.echo[i] += 1;
                }
            }
            for op in &plan.ops_ok {
                if let Op::Audit(a) = op {
                    if a.kind == "conflict" {
                        *report.rules.entry(a.rule.clone().unwrap_or_else(|| "hold".into())).or_default() += 1;
                    }
                }
            }
            report.add(&plan.report);
            ops.extend(plan.ops_ok);
            if let Some((side, key)) = &plan.source {
                if dead.contains(&(*side, key.clone())) {
                    // The record went through this time: its dead letter is settled.
                    ops.push(Op::ClearDeadLetter { sync: self.sync(), side: *side, key: key.clone() });
                }
            }
            if let Some(intent) = plan.create {
                let target = intent.source.other();
                let Some(Ok(new_key)) = res.into_iter().next() else { continue };
                let link =
                    self.new_link(intent.source, intent.source_key.clone(), new_key.clone(), intent.base.clone());
                ops.push(Op::Audit(AuditRow {
                    kind: "create".into(),
                    source: Some(intent.source),
                    left_key: Some(link.left.clone()),
                    right_key: Some(link.right.clone()),
                    // The fields the new record got (a create is the first "before → after").
                    detail: serde_json::Value::Object(
                        intent
                            .base
                            .iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(f, v)| (f.to_string(), serde_json::json!([null, v.to_json()])))
                            .collect(),
                    )
                    .to_string(),
                    ..self.audit_base()
                }));
                ops.push(Op::PutLink { sync: self.sync(), link });
                ops.push(Op::DropIntent { sync: self.sync(), id: intent.id.clone() });
                if intent.revisit {
                    ops.push(Op::Touch { sync: self.sync(), side: target, key: new_key, at: 0, pos: 0 });
                }
                confirmed[target.index()].push(intent.id);
            }
        }
        ops.push(Op::Meta { sync: self.sync(), name: "last_sync".into(), value: Some(now.to_string()) });
        if recorded {
            // Every link the batch recorded values for has its outcome above: a new base, or
            // what was written kept in the link.
            ops.push(Op::Meta { sync: self.sync(), name: PENDING.into(), value: None });
        }
        let trims = match direct {
            Some(d) => {
                ops.extend(d.ops.into_iter().filter(|op| match op {
                    Op::Cursor { .. } => true,
                    Op::Meta { name, .. } => name.starts_with("position:"),
                    _ => false,
                }));
                d.trims
            }
            None => Vec::new(),
        };
        self.commit(ops)?;
        self.trim(trims)?;
        self.forget(confirmed)
    }

    /// Applies each side's writes of a batch (none where a side has none): both sides at once
    /// where both connectors may be used from another thread, else left then right.
    fn apply_both(&mut self, writes: &[Vec<Write>; 2]) -> Result<[Vec<WriteResult>; 2], EngineError> {
        let errs = [self.conn_err(Side::Left), self.conn_err(Side::Right)];
        let [left, right] = &mut self.conns;
        let [lw, rw] = writes;
        if !lw.is_empty() && !rw.is_empty() {
            if let (Some(l), Some(r)) = (left.as_send(), right.as_send()) {
                let (a, b) = std::thread::scope(|s| {
                    let other = s.spawn(move || r.apply(rw));
                    let mine = l.apply(lw);
                    (mine, other.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                });
                return Ok([a.map_err(&errs[0])?, b.map_err(&errs[1])?]);
            }
        }
        let mut out = [Vec::new(), Vec::new()];
        for (i, (conn, w)) in [left, right].into_iter().zip([lw, rw]).enumerate() {
            if !w.is_empty() {
                out[i] = conn.apply(w).map_err(&errs[i])?;
            }
        }
        Ok(out)
    }

    fn dead_letter(
        &self,
        side: Side,
        key: &Key,
        field: Option<String>,
        value_type: Option<String>,
        error: String,
        now: i64,
    ) -> Vec<Op> {
        let dl = DeadLetter {
            id: 0,
            sync: self.sync(),
            side,
            key: key.clone(),
            field: field.clone(),
            value_type,
            error: error.clone(),
            at: now,
        };
        let mut audit =
            AuditRow { kind: "dead_letter".into(), source: Some(side), field, detail: error, ..self.audit_base() };
        match side {
            Side::Left => audit.left_key = Some(key.clone()),
            Side::Right => audit.right_key = Some(key.clone()),
        }
        vec![Op::DeadLetter(dl), Op::Audit(audit)]
    }

    /// The canonical record of a side's row, or the dead letter ops saying why it has none.
    fn canonical(&self, side: Side, key: &Key, row: &Row) -> Result<Row, Vec<Op>> {
        self.canonical_with(side, key, |f| f.get(side, row))
    }

    fn canonical_with(
        &self,
        side: Side,
        key: &Key,
        get: impl FnMut(&FieldMap) -> Result<Value, MapError>,
    ) -> Result<Row, Vec<Op>> {
        canonical_values(self.spec, get).map_err(|e| self.unmappable(side, key, "from", side, e))
    }

    /// The dead letter of record `key` of `side` whose field cannot be mapped `dir` ("from" or
    /// "to") `system`'s side.
    fn unmappable(&self, side: Side, key: &Key, dir: &str, system: Side, (field, e): (Name, MapError)) -> Vec<Op> {
        let msg = format!("cannot map {dir} {}: {e}", self.spec.system(system));
        self.dead_letter(side, key, Some(field.to_string()), Some(e.value_type.to_string()), msg, (self.now)())
    }

    fn plan_group(
        &mut self,
        g: &Group,
        rows: &[HashMap<Key, Row>; 2],
        claimed: &mut HashSet<(Side, Key)>,
        plan: &mut GroupPlan,
    ) -> Result<(), EngineError> {
        let row_of = |side: Side| g.keys[side.index()].as_ref().and_then(|k| rows[side.index()].get(k));
        if let Some(link) = &g.link {
            if let Some(dead) = link.tombstone {
                if row_of(dead).is_some() {
                    // The deleted side has a record under that key again: a new record.
                    plan.ops_ok.push(Op::DropLink { sync: self.sync(), left: link.left.clone() });
                    plan.ops_ok.push(Op::Touch {
                        sync: self.sync(),
                        side: dead,
                        key: link.key(dead).clone(),
                        at: g.times[dead.index()],
                        pos: g.pos[dead.index()],
                    });
                } else if row_of(dead.other()).is_none() {
                    plan.ops_ok.push(Op::DropLink { sync: self.sync(), left: link.left.clone() });
                }
                return Ok(());
            }
            return match (row_of(Side::Left), row_of(Side::Right)) {
                (None, None) => {
                    plan.ops_ok.push(Op::DropLink { sync: self.sync(), left: link.left.clone() });
                    plan.ops_ok.push(Op::Audit(AuditRow {
                        kind: "delete".into(),
                        left_key: Some(link.left.clone()),
                        right_key: Some(link.right.clone()),
                        detail: "deleted on both sides".into(),
                        ..self.audit_base()
                    }));
                    self.close_conflicts(link, "record deleted", plan)
                }
                (None, Some(r)) => self.plan_delete(Side::Left, link, r, plan),
                (Some(l), None) => self.plan_delete(Side::Right, link, l, plan),
                (Some(l), Some(r)) => {
                    // The merge makes the new base: the link goes in without its old one.
                    let shell = Link {
                        left: link.left.clone(),
                        right: link.right.clone(),
                        base: Row::new(),
                        tombstone: link.tombstone,
                        pending: link.pending.clone(),
                    };
                    self.plan_merge(shell, Some(&link.base), [l, r], g, plan)
                }
            };
        }

        let side = if g.keys[0].is_some() { Side::Left } else { Side::Right };
        let key = g.keys[side.index()].clone().expect("an unlinked group has its source key");
        if claimed.contains(&(side, key.clone())) {
            return Ok(());
        }
        let Some(row) = row_of(side) else {
            // Gone while a bulk load of its side is under way: the load copies a snapshot, so a
            // page still to come may create the record on the other side. The change waits in
            // the inbox until the load is done, and is merged then (a delete, if a page did).
            if self.store.meta(&self.spec.name, &format!("bulk:{side}"))?.is_some() {
                let (at, pos) = (g.times[side.index()], g.pos[side.index()]);
                plan.ops_always.push(Op::Touch { sync: self.sync(), side, key, at, pos });
            }
            return Ok(());
        };
        if let Some(filter) = &self.spec.filters[side.index()] {
            if !filter.matches(row) {
                return Ok(());
            }
        }
        plan.source = Some((side, key.clone()));
        let canon = match self.canonical(side, &key, row) {
            Ok(c) => c,
            Err(ops) => {
                plan.ops_always.extend(ops);
                return Ok(());
            }
        };
        let other = side.other();
        if let Some(m) = &self.spec.match_on {
            let (mine, theirs) = if side == Side::Left { (&m.left, &m.right) } else { (&m.right, &m.left) };
            let v = row.get(mine.as_str()).cloned().unwrap_or(Value::Null);
            if !v.is_null() && v != Value::Text(String::new()) {
                let candidates =
                    self.conns[other.index()].find(theirs, &v, m.case_insensitive).map_err(self.conn_err(other))?;
                for (ck, crow) in candidates {
                    if claimed.contains(&(other, ck.clone())) || self.store.link(&self.spec.name, other, &ck)?.is_some()
                    {
                        continue;
                    }
                    claimed.insert((other, ck.clone()));
                    claimed.insert((side, key.clone()));
                    let link = self.new_link(side, key.clone(), ck.clone(), Row::new());
                    plan.ops_ok.push(Op::Audit(AuditRow {
                        kind: "link".into(),
                        source: Some(side),
                        left_key: Some(link.left.clone()),
                        right_key: Some(link.right.clone()),
                        rule: Some("match_on".into()),
                        detail: format!("matched on {mine} = {theirs}"),
                        ..self.audit_base()
                    }));
                    plan.report.matched += 1;
                    let pair = if side == Side::Left { [row, &crow] } else { [&crow, row] };
                    return self.plan_merge(link, None, pair, g, plan);
                }
            }
        }

        // A new record: create it on the other side.
        let (values, base, revisit) = match self.create_values(side, &key, canon) {
            Ok(v) => v,
            Err(ops) => {
                plan.ops_always.extend(ops);
                return Ok(());
            }
        };
        claimed.insert((side, key.clone()));
        let intent = Intent {
            id: format!("{}:{side}:{}:{}", self.spec.name, self.epoch()?, g.seq),
            source: side,
            source_key: key,
            base,
            revisit,
        };
        plan.writes.push((other, Write::Insert { intent: intent.id.clone(), values }));
        plan.create = Some(intent);
        plan.report.created[side.index()] += 1;
        Ok(())
    }

    /// What creating a `side` record (canonical `canon`) on the other side writes: the
    /// column values, the base to link with, and whether the new record must be read back
    /// (a field that does not flow from `side`, or an empty one the target may fill with a
    /// default). Or the dead letter ops saying why it cannot be created.
    fn create_values(&self, side: Side, key: &Key, canon: Row) -> Result<(Row, Row, bool), Vec<Op>> {
        creation(self.spec, side, canon).map_err(|e| self.unmappable(side, key, "to", side.other(), e))
    }

    /// Open conflicts of one record, from the per-batch map.
    fn open_conflicts_of(&mut self, left: &Key) -> Result<Vec<Conflict>, EngineError> {
        if self.open_conflicts.is_none() {
            let mut map: HashMap<Key, Vec<Conflict>> = HashMap::new();
            for c in self.store.conflicts(Some(&self.spec.name), true)? {
                map.entry(c.left_key.clone()).or_default().push(c);
            }
            self.open_conflicts = Some(map);
        }
        Ok(self.open_conflicts.as_ref().and_then(|m| m.get(left)).cloned().unwrap_or_default())
    }

    /// This state file's epoch (part of every intent id), read once per engine.
    fn epoch(&mut self) -> Result<String, EngineError> {
        if self.epoch.is_none() {
            self.epoch = Some(self.store.meta("", "epoch")?.unwrap_or_default());
        }
        Ok(self.epoch.clone().unwrap_or_default())
    }

    fn close_conflicts(&mut self, link: &Link, why: &str, plan: &mut GroupPlan) -> Result<(), EngineError> {
        for c in self.open_conflicts_of(&link.left)? {
            plan.ops_ok.push(Op::CloseConflict { id: c.id, resolution: why.to_string() });
        }
        Ok(())
    }

    /// The record was deleted on `deleted`; `survivor` is the other side's current row.
    fn plan_delete(
        &mut self,
        deleted: Side,
        link: &Link,
        survivor: &Row,
        plan: &mut GroupPlan,
    ) -> Result<(), EngineError> {
        let other = deleted.other();
        let other_key = link.key(other).clone();
        plan.source = Some((deleted, link.key(deleted).clone()));
        let rule = &self.spec.deletes[deleted.index()];
        if let Ok(canon) = self.canonical(other, &other_key, survivor) {
            let changed: Vec<&str> = self
                .spec
                .fields
                .iter()
                .filter(|f| {
                    !canon.get(&f.name).unwrap_or(&Value::Null).same(link.base.get(&f.name).unwrap_or(&Value::Null))
                })
                .map(|f| f.name.as_str())
                .collect();
            if !changed.is_empty() && *rule != DeleteRule::Ignore {
                plan.ops_first.push(Op::Audit(AuditRow {
                    kind: "decision".into(),
                    source: Some(deleted),
                    left_key: Some(link.left.clone()),
                    right_key: Some(link.right.clone()),
                    winner: Some(deleted),
                    rule: Some("delete_wins".into()),
                    detail: format!(
                        "{} changed {} since the last sync; the delete on {} wins",
                        self.spec.system(other),
                        changed.join(", "),
                        self.spec.system(deleted)
                    ),
                    ..self.audit_base()
                }));
            }
        }
        match rule {
            DeleteRule::Propagate => {
                plan.writes.push((other, Write::Delete { key: other_key }));
                plan.ops_ok.push(Op::DropLink { sync: self.sync(), left: link.left.clone() });
                plan.report.deleted[deleted.index()] += 1;
            }
            DeleteRule::Soft { column, value } => {
                let mut values = Row::new();
                values.insert(column.as_str().into(), value.clone());
                plan.writes.push((other, Write::Update { key: other_key, values, expect: Row::new() }));
                plan.ops_ok
                    .push(Op::PutLink { sync: self.sync(), link: Link { tombstone: Some(deleted), ..link.clone() } });
                plan.report.deleted[deleted.index()] += 1;
            }
            DeleteRule::Ignore => {
                plan.ops_ok
                    .push(Op::PutLink { sync: self.sync(), link: Link { tombstone: Some(deleted), ..link.clone() } });
            }
        }
        plan.ops_ok.push(Op::Audit(AuditRow {
            kind: "delete".into(),
            source: Some(deleted),
            left_key: Some(link.left.clone()),
            right_key: Some(link.right.clone()),
            rule: Some(rule.name().into()),
            detail: format!("deleted on {}", self.spec.system(deleted)),
            ..self.audit_base()
        }));
        self.close_conflicts(link, "record deleted", plan)
    }

    /// Both records exist: merge them field by field against the base (none for a new match).
    fn plan_merge(
        &mut self,
        link: Link,
        base: Option<&Row>,
        rows: [&Row; 2],
        g: &Group,
        plan: &mut GroupPlan,
    ) -> Result<(), EngineError> {
        let mut canon = [Row::new(), Row::new()];
        for side in [Side::Left, Side::Right] {
            match self.canonical(side, link.key(side), rows[side.index()]) {
                Ok(c) => canon[side.index()] = c,
                Err(ops) => {
                    plan.ops_always.extend(ops);
                    return Ok(());
                }
            }
        }
        // A value Tandem was writing when a crash cut it short (recorded before the write) is
        // not a user's change on that side: count it as the base there.
        let adjusted: Option<Row> = base.filter(|_| link.pending.iter().any(|p| !p.is_empty())).map(|b| {
            let mut b = b.clone();
            for side in [Side::Left, Side::Right] {
                for (f, v) in &link.pending[side.index()] {
                    if canon[side.index()].get(f).unwrap_or(&Value::Null).same(v) {
                        b.insert(f.clone(), v.clone());
                    }
                }
            }
            b
        });
        let base = adjusted.as_ref().or(base);
        let mut times = g.times;
        for side in [Side::Left, Side::Right] {
            let s = side.index();
            let differs = base.is_some_and(|b| {
                self.spec.fields.iter().any(|f| {
                    !canon[s].get(&f.name).unwrap_or(&Value::Null).same(b.get(&f.name).unwrap_or(&Value::Null))
                })
            });
            if !g.has_entry[s] && differs {
                // The change may wait further back in the inbox, or still in the change log;
                // only a change not captured anywhere yet gets the current time.
                if let Some(at) = self.store.inbox_at(&self.spec.name, side, link.key(side))? {
                    times[s] = at;
                    continue;
                }
                times[s] = self.conns[s]
                    .last_change_at(link.key(side))
                    .map_err(self.conn_err(side))?
                    .unwrap_or_else(|| (self.now)());
            }
        }
        let merged = merge(self.spec, &canon[0], &canon[1], base, times);

        let source = if g.has_entry[1] && !g.has_entry[0] { Side::Right } else { Side::Left };
        plan.source = Some((source, link.key(source).clone()));
        // A mapped key column that changes moves the record to a new key: the link follows.
        let mut new_keys = [link.left.clone(), link.right.clone()];
        let mut pending: [Row; 2] = Default::default();
        for side in [Side::Left, Side::Right] {
            let s = side.index();
            let mut values = Row::new();
            let mut detail = serde_json::Map::new();
            for f in &self.spec.fields {
                let Some(v) = merged.values.get(&f.name) else { continue };
                if v.same(canon[s].get(&f.name).unwrap_or(&Value::Null)) {
                    continue;
                }
                if matches!(f.flow, Flow::From(owner) if owner == side) {
                    continue;
                }
                match f.put(side, v, Some(rows[s])) {
                    Ok(cols) => {
                        for (c, nv) in cols {
                            let before = rows[s].get(&c).cloned().unwrap_or(Value::Null);
                            if !before.same(&nv) {
                                detail.insert(c.to_string(), serde_json::json!([before.to_json(), nv.to_json()]));
                                values.insert(c, nv);
                                pending[s].insert(f.name.clone(), v.clone());
                            }
                        }
                    }
                    Err(e) => {
                        let msg = format!("cannot map to {}: {e}", self.spec.system(side));
                        let from = side.other();
                        plan.ops_always.extend(self.dead_letter(
                            from,
                            link.key(from),
                            Some(f.name.to_string()),
                            Some(e.value_type.to_string()),
                            msg,
                            (self.now)(),
                        ));
                        return Ok(());
                    }
                }
            }
            if !values.is_empty() {
                let key_cols = &self.spec.side(side).key;
                if key_cols.iter().any(|k| values.contains_key(k.as_str())) {
                    let key_values: Vec<Value> = key_cols
                        .iter()
                        .map(|k| {
                            values.get(k.as_str()).or_else(|| rows[s].get(k.as_str())).cloned().unwrap_or(Value::Null)
                        })
                        .collect();
                    new_keys[s] = Key::from_values(&key_values);
                }
                let expect =
                    values.keys().map(|c| (c.clone(), rows[s].get(c).cloned().unwrap_or(Value::Null))).collect();
                plan.writes.push((side, Write::Update { key: link.key(side).clone(), values, expect }));
                plan.report.updated[side.other().index()] += 1;
                let from = side.other();
                plan.ops_ok.push(Op::Audit(AuditRow {
                    kind: "apply".into(),
                    source: Some(from),
                    left_key: Some(link.left.clone()),
                    right_key: Some(link.right.clone()),
                    detail: serde_json::Value::Object(detail).to_string(),
                    position: (g.pos[from.index()] > 0).then_some(g.pos[from.index()]),
                    ..self.audit_base()
                }));
            }
        }
        if base.is_some() && pending.iter().any(|p| !p.is_empty()) {
            // Recorded before the writes (for the whole batch at once, see `PENDING`), cleared
            // with the new base after.
            plan.pending = Some((link.left.clone(), pending));
        }
        for d in &merged.decisions {
            plan.ops_first.push(Op::Audit(self.decision_audit(&link, d, "decision")));
        }
        plan.report.decided += merged.decisions.iter().filter(|d| !d.rule.starts_with("one_way")).count() as u64;
        let open = self.open_conflicts_of(&link.left)?;
        for h in &merged.held {
            match open.iter().find(|c| c.field == h.field) {
                Some(c) if c.left == h.left && c.right == h.right => {}
                Some(c) => {
                    plan.ops_ok.push(Op::RefreshConflict { id: c.id, left: h.left.clone(), right: h.right.clone() })
                }
                None => {
                    plan.report.held += 1;
                    plan.ops_ok.push(Op::OpenConflict(Conflict {
                        id: 0,
                        sync: self.sync(),
                        left_key: link.left.clone(),
                        right_key: link.right.clone(),
                        field: h.field.clone(),
                        base: h.base.clone(),
                        left: h.left.clone(),
                        right: h.right.clone(),
                        opened_at: (self.now)(),
                        resolution: None,
                    }));
                    plan.ops_ok.push(Op::Audit(self.decision_audit(&link, h, "conflict")));
                }
            }
        }
        for c in open.iter().filter(|c| !merged.held.iter().any(|h| h.field == c.field)) {
            plan.ops_ok.push(Op::CloseConflict { id: c.id, resolution: "both sides agree now".into() });
        }
        if new_keys[0] != link.left {
            // The link is stored by its left key: move it.
            plan.ops_ok.push(Op::DropLink { sync: self.sync(), left: link.left.clone() });
        }
        let [left, right] = new_keys;
        let pending = Default::default();
        plan.ops_ok
            .push(Op::PutLink { sync: self.sync(), link: Link { base: merged.base, left, right, pending, ..link } });
        Ok(())
    }

    /// A rule name with sides spelled as the systems' names (`prefer:erp`, `one_way:erp`).
    fn rule_label(&self, rule: &str) -> String {
        match rule.split_once(':') {
            Some((name, side)) => match Side::parse(side) {
                Some(s) => format!("{name}:{}", self.spec.system(s)),
                None => rule.to_string(),
            },
            None => rule.to_string(),
        }
    }

    fn decision_audit(&self, link: &Link, d: &Decision, kind: &str) -> AuditRow {
        AuditRow {
            kind: kind.into(),
            left_key: Some(link.left.clone()),
            right_key: Some(link.right.clone()),
            field: Some(d.field.clone()),
            base: d.base.clone(),
            left: Some(d.left.clone()),
            right: Some(d.right.clone()),
            winner: d.winner,
            rule: Some(self.rule_label(&d.rule)),
            detail: match d.winner {
                Some(w) => format!("{} wins by rule {}", self.spec.system(w), self.rule_label(&d.rule)),
                None if d.rule == "merge_lines" => "both sides' lines merged by rule merge_lines".into(),
                None => "held for a person: resolve with `tandem conflicts`".into(),
            },
            ..self.audit_base()
        }
    }

    /// Resolves a held conflict: writes the chosen value to both sides, records it as the base,
    /// closes the conflict and audits the resolution.
    pub fn resolve(&mut self, id: i64, how: Resolution) -> Result<Value, EngineError> {
        let conflict =
            self.store.conflicts(Some(&self.spec.name), true)?.into_iter().find(|c| c.id == id).ok_or_else(|| {
                EngineError::Request(format!(
                    "no open conflict {id} in sync `{}`; list them with `tandem conflicts`",
                    self.spec.name
                ))
            })?;
        let field = self.spec.fields.iter().find(|f| f.name == conflict.field).ok_or_else(|| {
            EngineError::Request(format!("field `{}` is no longer mapped in sync `{}`", conflict.field, self.spec.name))
        })?;
        let link = self
            .store
            .link(&self.spec.name, Side::Left, &conflict.left_key)?
            .ok_or_else(|| EngineError::Request(format!("record {} is no longer linked", conflict.left_key)))?;
        let mut rows = [Row::new(), Row::new()];
        for side in [Side::Left, Side::Right] {
            let got = self.conns[side.index()].read(&[link.key(side).clone()]).map_err(self.conn_err(side))?;
            rows[side.index()] = got.into_iter().next().flatten().ok_or_else(|| {
                EngineError::Request(format!(
                    "record {} no longer exists on {}",
                    link.key(side),
                    self.spec.system(side)
                ))
            })?;
        }
        let current =
            |side: Side| field.get(side, &rows[side.index()]).map_err(|e| EngineError::Request(e.to_string()));
        let (value, winner, label) = match how {
            Resolution::Left => (current(Side::Left)?, Some(Side::Left), "take left".to_string()),
            Resolution::Right => (current(Side::Right)?, Some(Side::Right), "take right".to_string()),
            Resolution::Value(v) => {
                let label = format!("set to {v}");
                (v, None, label)
            }
        };
        for side in [Side::Left, Side::Right] {
            if current(side)?.same(&value) {
                continue;
            }
            let cols =
                field.put(side, &value, Some(&rows[side.index()])).map_err(|e| EngineError::Request(e.to_string()))?;
            let values: Row = cols.into_iter().collect();
            let expect =
                values.keys().map(|c| (c.clone(), rows[side.index()].get(c).cloned().unwrap_or(Value::Null))).collect();
            let write = Write::Update { key: link.key(side).clone(), values, expect };
            let res = self.conns[side.index()].apply(&[write]).map_err(self.conn_err(side))?;
            if let Some(Err(e)) = res.into_iter().next() {
                if e.stale {
                    return Err(EngineError::Request(format!(
                        "the record changed on {} while resolving; list the conflicts again and retry",
                        self.spec.system(side)
                    )));
                }
                return Err(EngineError::Request(format!("{} refused the value: {e}", self.spec.system(side))));
            }
        }
        let mut base = link.base.clone();
        base.insert(field.name.clone(), value.clone());
        self.commit(vec![
            Op::PutLink { sync: self.sync(), link: Link { base, pending: Default::default(), ..link.clone() } },
            Op::CloseConflict { id, resolution: label.clone() },
            Op::Audit(AuditRow {
                kind: "resolve".into(),
                left_key: Some(link.left.clone()),
                right_key: Some(link.right.clone()),
                field: Some(field.name.to_string()),
                base: conflict.base.clone(),
                left: Some(conflict.left.clone()),
                right: Some(conflict.right.clone()),
                winner,
                rule: Some("operator".into()),
                detail: format!("conflict {id} resolved by an operator: {label}"),
                ..self.audit_base()
            }),
        ])?;
        Ok(value)
    }
}

/// Puts dead-lettered records back into the inbox (all of a sync's, or the given ids).
pub fn retry_dead_letters(store: &mut dyn StateStore, sync: Option<&str>, ids: &[i64]) -> Result<usize, StoreError> {
    let mut ops = Vec::new();
    for d in store.dead_letters(sync)? {
        if ids.is_empty() || ids.contains(&d.id) {
            ops.push(Op::ClearDeadLetter { sync: d.sync.clone(), side: d.side, key: d.key.clone() });
            // Time 0: a retried record is old news and must not beat newer edits under `latest`.
            ops.push(Op::Touch { sync: d.sync, side: d.side, key: d.key, at: 0, pos: 0 });
        }
    }
    let n = ops.len() / 2;
    store.commit(ops)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Transform;
    use crate::rules::{ConflictRule, EntitySpec};

    fn field(name: &str, left: &str, right: &str, transform: Transform) -> FieldMap {
        FieldMap { name: name.into(), left: vec![left.into()], right: vec![right.into()], transform, flow: Flow::Both }
    }

    /// A big bulk page is mapped on two threads: the outcome is the one of mapping each row on
    /// its own, in the page's order, unmappable rows included.
    #[test]
    fn a_big_page_maps_as_row_by_row_in_order() {
        let codes = vec![
            (Value::Text("a".into()), Value::Text("A".into())),
            (Value::Text("b".into()), Value::Text("B".into())),
        ];
        let spec = SyncSpec::new(
            "t",
            [
                EntitySpec { system: "l".into(), table: "l".into(), key: vec!["id".into()] },
                EntitySpec { system: "r".into(), table: "r".into(), key: vec!["no".into()] },
            ],
            vec![field("id", "id", "no", Transform::Rename), field("code", "code", "kind", Transform::ValueMap(codes))],
            ConflictRule::Latest,
        );
        let rows: Vec<Row> = (0..2501)
            .map(|i| {
                let code = if i % 7 == 3 {
                    "zzz"
                } else if i % 2 == 0 {
                    "a"
                } else {
                    "b"
                };
                [("id".into(), Value::Int(i)), ("code".into(), Value::Text(code.into()))].into_iter().collect()
            })
            .collect();
        let one_by_one: Vec<_> =
            rows.iter().map(|r| creations(&spec, Side::Left, false, vec![r.clone()]).remove(0)).collect();
        let page = creations(&spec, Side::Left, false, rows);
        assert_eq!(page.len(), 2501);
        assert_eq!(page, one_by_one);
        assert!(page[3].is_none() && page[2500].is_some());
        let (values, base) = page[2500].as_ref().unwrap();
        assert_eq!(values.get("no"), Some(&Value::Int(2500)));
        assert_eq!(values.get("kind"), Some(&Value::Text("A".into())));
        assert_eq!(base.get("code"), Some(&Value::Text("a".into())));
    }

    /// A sync of plain renames maps pages in one pass over each row (`Renames`): the outcome is
    /// the field-by-field one, with a field that flows one way, a create default, a column no
    /// field reads, a missing column, and column names that sort differently on each side.
    #[test]
    fn a_page_of_renames_maps_as_field_by_field() {
        let mut one_way = field("owner", "owner", "a_owner", Transform::Rename);
        one_way.flow = Flow::From(Side::Right);
        let mut spec = SyncSpec::new(
            "t",
            [
                EntitySpec { system: "l".into(), table: "l".into(), key: vec!["id".into()] },
                EntitySpec { system: "r".into(), table: "r".into(), key: vec!["no".into()] },
            ],
            vec![
                field("id", "id", "no", Transform::Rename),
                field("email", "email", "b_mail", Transform::Rename),
                field("name", "b_name", "y_name", Transform::Rename),
                one_way,
            ],
            ConflictRule::Latest,
        );
        spec.defaults[Side::Right.index()] = [("active".into(), Value::Bool(true))].into_iter().collect();
        let rows: Vec<Row> = (0..1500)
            .map(|i| {
                let mut r: Row = [
                    ("id".into(), Value::Int(i)),
                    ("email".into(), Value::Text(format!("m{i}@example.com"))),
                    ("owner".into(), Value::Text("x".into())),
                    ("aaa_unread".into(), Value::Int(7)),
                ]
                .into_iter()
                .collect();
                if i % 3 != 0 {
                    r.insert("b_name".into(), Value::Text(format!("Name {i}")));
                }
                r
            })
            .collect();
        assert!(Renames::of(&spec, Side::Left).is_some());
        let field_by_field: Vec<_> = rows
            .iter()
            .map(|row| creation_with(&spec, Side::Left, |f| f.get(Side::Left, row)).ok().map(|(v, b, _)| (v, b)))
            .collect();
        let page = creations(&spec, Side::Left, false, rows);
        assert_eq!(page, field_by_field);
        let (values, base) = page[4].as_ref().unwrap();
        assert_eq!(values.get("y_name"), Some(&Value::Text("Name 4".into())));
        assert_eq!(values.get("active"), Some(&Value::Bool(true)));
        assert!(!values.contains_key("a_owner") && !base.contains_key("owner"));
        assert_eq!(page[3].as_ref().unwrap().0.get("y_name"), Some(&Value::Null));
    }
}
