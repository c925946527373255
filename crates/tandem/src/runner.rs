//! Wiring: opens the state store and each sync's two tables, and runs engine cycles with
//! per-sync retry and backoff.

use crate::config::{Config, System};
use crate::error::CliError;
use std::time::{Duration, Instant};
use tandem_connectors::mysql::MyTable;
use tandem_connectors::postgres::PgTable;
use tandem_connectors::sqlite::SqliteTable;
use tandem_connectors::state::SqliteStore;
use tandem_core::connector::{Connector, ConnectorError, ErrorKind};
use tandem_core::engine::{Engine, EngineError, Report};
use tandem_core::mapping::Side;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Per-sync retry state.
struct Health {
    started: bool,
    failures: u32,
    next_try: Instant,
    last_error: Option<String>,
}

/// Everything `tandem run` holds open.
pub struct Runner {
    /// The validated config.
    pub cfg: Config,
    /// The state store.
    pub store: SqliteStore,
    tables: Vec<Option<[Box<dyn Connector>; 2]>>,
    health: Vec<Health>,
    pruned: Option<Instant>,
    /// Syncs an operator paused (kept in state, so a restart keeps them paused).
    paused: Vec<bool>,
    /// Changes applied and captured since start, by sync and source side.
    totals: Vec<[[u64; 2]; 2]>,
    /// The latest end-to-end latency seen, by sync and source side (ms).
    last_latency: Vec<[u64; 2]>,
}

/// A sync that failed in a cycle.
pub struct SyncFailure {
    /// The sync's name.
    pub sync: String,
    /// What went wrong.
    pub error: EngineError,
    /// Consecutive failures of this sync.
    pub failures: u32,
    /// True when retrying cannot help (the config or schema is wrong).
    pub fatal: bool,
}

impl Runner {
    /// Opens the state store; tables are opened on first use (and again after a failure).
    pub fn open(cfg: Config) -> Result<Runner, CliError> {
        let mut store = SqliteStore::open(&cfg.state)?;
        let n = cfg.syncs.len();
        let mut paused = Vec::with_capacity(n);
        for spec in &cfg.syncs {
            paused.push(tandem_core::store::StateStore::meta(&mut store, &spec.name, "paused")?.is_some());
        }
        Ok(Runner {
            paused,
            totals: vec![[[0; 2]; 2]; n],
            last_latency: vec![[0; 2]; n],
            cfg,
            store,
            tables: (0..n).map(|_| None).collect(),
            health: (0..n)
                .map(|_| Health { started: false, failures: 0, next_try: Instant::now(), last_error: None })
                .collect(),
            pruned: None,
        })
    }

    /// Removes audit rows past the configured retention, at start and then hourly.
    pub fn prune_audit(&mut self) {
        let Some(keep) = self.cfg.audit_retention else { return };
        if self.pruned.is_some_and(|t| t.elapsed() < Duration::from_secs(3600)) {
            return;
        }
        self.pruned = Some(Instant::now());
        match self.store.prune_audit(now_ms() - keep.as_millis() as i64) {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "audit rows past their retention removed"),
            Err(e) => tracing::error!(error = %e, "removing audit rows past their retention failed"),
        }
    }

    fn open_tables(cfg: &Config, i: usize) -> Result<[Box<dyn Connector>; 2], EngineError> {
        let spec = &cfg.syncs[i];
        let open = |side: Side| {
            let ent = spec.side(side);
            open_entity(cfg, i, side).map_err(|source| EngineError::Connector {
                system: ent.system.clone(),
                side,
                source,
            })
        };
        Ok([open(Side::Left)?, open(Side::Right)?])
    }

    /// Runs `f` with an engine for sync `i`, opening its tables if needed.
    pub fn with_engine<T>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Engine<'_>) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        if self.tables[i].is_none() {
            self.tables[i] = Some(Self::open_tables(&self.cfg, i)?);
        }
        let [left, right] = self.tables[i].as_mut().expect("opened above");
        let now = now_ms;
        let mut engine =
            Engine::new(&self.cfg.syncs[i], &mut self.store, left.as_mut(), right.as_mut(), &now, self.cfg.batch_size);
        f(&mut engine)
    }

    /// Before a graceful stop: lets each open table prepare a quick resume (see
    /// [`Connector::prepare_stop`]). True when one did: the caller runs one more cycle. Best
    /// effort: a table that cannot is only slower to resume.
    pub fn prepare_stop(&mut self) -> bool {
        let mut prepared = false;
        for (spec, tables) in self.cfg.syncs.iter().zip(&mut self.tables) {
            for t in tables.iter_mut().flatten() {
                match t.prepare_stop() {
                    Ok(p) => prepared |= p,
                    Err(e) => tracing::info!(sync = %spec.name, error = %e, "could not prepare a quick resume"),
                }
            }
        }
        prepared
    }

    /// One cycle of every sync that is due. Failing syncs back off (200 ms doubling to 30 s)
    /// without holding up the others.
    pub fn cycle(&mut self) -> (Vec<Report>, Vec<SyncFailure>) {
        let mut reports = Vec::with_capacity(self.cfg.syncs.len());
        let mut failures = Vec::new();
        for i in 0..self.cfg.syncs.len() {
            reports.push(Report::default());
            if self.paused[i] || self.health[i].next_try > Instant::now() {
                continue;
            }
            let started = self.health[i].started;
            let reconnect = self.tables[i].is_none() && self.health[i].failures > 0;
            let result = self.with_engine(i, |engine| {
                let mut report = if started { Report::default() } else { engine.start()? };
                report.add(&engine.cycle()?);
                Ok(report)
            });
            match result {
                Ok(report) => {
                    for what in &report.installed {
                        tracing::warn!(sync = %self.cfg.syncs[i].name, "{what}");
                    }
                    if reconnect {
                        metrics::counter!("tandem_reconnects_total", "sync" => self.cfg.syncs[i].name.clone())
                            .increment(1);
                    }
                    for side in 0..2 {
                        self.totals[i][0][side] += report.created[side] + report.updated[side] + report.deleted[side];
                        self.totals[i][1][side] += report.captured[side];
                    }
                    for (side, ms) in &report.latencies {
                        self.last_latency[i][side.index()] = *ms;
                    }
                    reports[i] = report;
                    self.health[i] = Health { started: true, failures: 0, next_try: Instant::now(), last_error: None };
                }
                Err(error) => {
                    let h = &mut self.health[i];
                    h.started = false;
                    h.failures += 1;
                    h.last_error = Some(error.to_string());
                    metrics::counter!("tandem_retries_total", "sync" => self.cfg.syncs[i].name.clone()).increment(1);
                    let delay = Duration::from_millis(200u64.saturating_mul(1 << h.failures.min(8)))
                        .min(Duration::from_secs(30));
                    h.next_try = Instant::now() + delay;
                    // Reconnect on the next try: the connection may be what broke.
                    self.tables[i] = None;
                    let fatal = matches!(&error, EngineError::Connector { source, .. } if source.kind == ErrorKind::Schema)
                        || matches!(&error, EngineError::PositionLost { .. });
                    failures.push(SyncFailure {
                        sync: self.cfg.syncs[i].name.clone(),
                        error,
                        failures: h.failures,
                        fatal,
                    });
                }
            }
        }
        (reports, failures)
    }

    /// Pauses or resumes sync `i` for an operator; kept in state and audited.
    pub fn set_paused(&mut self, i: usize, paused: bool) -> Result<(), tandem_core::store::StoreError> {
        let name = self.cfg.syncs[i].name.clone();
        let what = if paused { "pause" } else { "resume" };
        tandem_core::store::StateStore::commit(
            &mut self.store,
            vec![
                tandem_core::store::Op::Meta {
                    sync: name.clone(),
                    name: "paused".into(),
                    value: paused.then(|| now_ms().to_string()),
                },
                tandem_core::store::Op::Audit(tandem_core::store::AuditRow {
                    at: now_ms(),
                    sync: name.clone(),
                    kind: what.into(),
                    rule: Some("operator".into()),
                    detail: format!("sync {name} {what}d by an operator"),
                    ..Default::default()
                }),
            ],
        )?;
        self.paused[i] = paused;
        metrics::gauge!("tandem_sync_paused", "sync" => name).set(if paused { 1.0 } else { 0.0 });
        Ok(())
    }

    /// True when every sync that is not paused has started and its last cycle succeeded.
    pub fn ready(&self) -> bool {
        (0..self.cfg.syncs.len()).all(|i| self.paused[i] || (self.health[i].started && self.health[i].failures == 0))
    }

    /// What the admin server shows of each sync, read from state; also sets the gauges.
    pub fn views(&mut self) -> Result<Vec<crate::admin::SyncView>, tandem_core::store::StoreError> {
        use tandem_core::store::StateStore;
        let now = now_ms();
        let mut out = Vec::with_capacity(self.cfg.syncs.len());
        for i in 0..self.cfg.syncs.len() {
            let spec = &self.cfg.syncs[i];
            let name = spec.name.clone();
            let mut pending = [0; 2];
            let mut lag = [0.0; 2];
            for side in [Side::Left, Side::Right] {
                let s = side.index();
                pending[s] = self.store.inbox_len(&name, side)?;
                let oldest = self.store.inbox_oldest(&name, side)?;
                let waited = oldest.map(|at| (now - at).max(0) as f64 / 1000.0).unwrap_or(0.0);
                lag[s] = if pending[s] > 0 { waited.max(self.last_latency[i][s] as f64 / 1000.0) } else { 0.0 };
                let system = spec.system(side).to_string();
                metrics::gauge!("tandem_lag_seconds", "sync" => name.clone(), "system" => system.clone()).set(lag[s]);
                metrics::gauge!("tandem_lag_changes", "sync" => name.clone(), "system" => system)
                    .set(pending[s] as f64);
            }
            let h = &self.health[i];
            let linked = self.store.link_count(&name)?;
            let (conflicts_open, dead_letters) = self.store.open_counts(&name)?;
            let last_sync_ms = self.store.meta(&name, "last_sync")?.and_then(|v| v.parse::<i64>().ok());
            let initial_load = self.store.meta(&name, "snapshot:left")?.is_some()
                || self.store.meta(&name, "snapshot:right")?.is_some();
            metrics::gauge!("tandem_conflicts_open", "sync" => name.clone()).set(conflicts_open as f64);
            metrics::gauge!("tandem_dead_letters", "sync" => name.clone()).set(dead_letters as f64);
            metrics::gauge!("tandem_records_linked", "sync" => name.clone()).set(linked as f64);
            metrics::gauge!("tandem_sync_paused", "sync" => name.clone()).set(if self.paused[i] { 1.0 } else { 0.0 });
            if let Some(t) = last_sync_ms {
                metrics::gauge!("tandem_last_success_timestamp_seconds", "sync" => name.clone()).set(t as f64 / 1000.0);
            }
            let side_name = |side: Side| format!("{}.{}", spec.side(side).system, spec.side(side).table);
            out.push(crate::admin::SyncView {
                left: side_name(Side::Left),
                right: side_name(Side::Right),
                state: if self.paused[i] {
                    "paused"
                } else if h.failures > 0 {
                    "failing"
                } else if h.started {
                    "running"
                } else {
                    "starting"
                },
                paused: self.paused[i],
                failures: h.failures,
                last_error: h.last_error.clone(),
                linked,
                pending,
                lag_seconds: lag,
                conflicts_open,
                dead_letters,
                last_sync_ms,
                initial_load,
                applied: self.totals[i][0],
                captured: self.totals[i][1],
                name,
            });
        }
        Ok(out)
    }

    /// Estimated records on both sides of sync `i`, for the initial-load progress bar.
    pub fn estimate(&mut self, i: usize) -> Option<u64> {
        let tables = self.tables[i].as_mut()?;
        let mut total = 0;
        for t in tables.iter_mut() {
            total += t.row_estimate().ok()??;
        }
        Some(total)
    }

    /// Backlog of captured but not yet read changes of a sync's side (`None` when unknown).
    /// Changes waiting in a side's change log: `Ok(None)` when the system cannot count them
    /// (a replication stream), `Err` with the reason when it cannot be reached.
    pub fn backlog(&mut self, i: usize, side: Side) -> Result<Option<u64>, String> {
        let mut t = open_entity(&self.cfg, i, side).map_err(|e| e.to_string())?;
        let cursor = tandem_core::store::StateStore::cursor(&mut self.store, &self.cfg.syncs[i].name, side)
            .map_err(|e| e.to_string())?;
        let Some(cursor) = cursor else { return Ok(None) };
        t.backlog(cursor).map_err(|e| e.to_string())
    }
}

/// Opens one side of sync `i` with the connector of its system's kind.
pub fn open_entity(cfg: &Config, i: usize, side: Side) -> Result<Box<dyn Connector>, ConnectorError> {
    let spec = &cfg.syncs[i];
    let ent = spec.side(side);
    Ok(match &cfg.systems[&ent.system] {
        System::Sqlite { path } => Box::new(SqliteTable::open(path, &ent.table, &ent.key)?),
        System::Postgres { url } => Box::new(PgTable::open(url, &ent.table, &ent.key, &spec.name, side.as_str())?),
        System::Mysql { url } => {
            let mut t = MyTable::open(url, &ent.table, &ent.key, &spec.name, side.as_str())?;
            let mapped: Vec<String> =
                spec.fields.iter().flat_map(|f| f.columns(side).iter().map(|c| c.to_string())).collect();
            t.keep_mapped_stamps(&mapped);
            Box::new(t)
        }
    })
}
