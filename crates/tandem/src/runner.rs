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
        let store = SqliteStore::open(&cfg.state)?;
        let n = cfg.syncs.len();
        Ok(Runner {
            cfg,
            store,
            tables: (0..n).map(|_| None).collect(),
            health: (0..n).map(|_| Health { started: false, failures: 0, next_try: Instant::now() }).collect(),
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

    /// One cycle of every sync that is due. Failing syncs back off (200 ms doubling to 30 s)
    /// without holding up the others.
    pub fn cycle(&mut self) -> (Vec<Report>, Vec<SyncFailure>) {
        let mut reports = Vec::with_capacity(self.cfg.syncs.len());
        let mut failures = Vec::new();
        for i in 0..self.cfg.syncs.len() {
            reports.push(Report::default());
            if self.health[i].next_try > Instant::now() {
                continue;
            }
            let started = self.health[i].started;
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
                    reports[i] = report;
                    self.health[i] = Health { started: true, failures: 0, next_try: Instant::now() };
                }
                Err(error) => {
                    let h = &mut self.health[i];
                    h.started = false;
                    h.failures += 1;
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
        System::Mysql { url } => Box::new(MyTable::open(url, &ent.table, &ent.key, &spec.name, side.as_str())?),
    })
}
