//! The subcommands that work on a config: run, check, status, conflicts, dead letters, audit,
//! uninstall.

use crate::config::{self, Config};
use crate::error::CliError;
use crate::format;
use crate::runner::{open_entity, Runner};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_connectors::state::{AuditQuery, AuditVerdict, SqliteStore};
use tandem_core::connector::CaptureState;
use tandem_core::engine::{retry_dead_letters, Report, Resolution};
use tandem_core::mapping::Side;
use tandem_core::store::AuditRow;
use tandem_core::store::StateStore;

fn load(path: &Path) -> Result<Config, CliError> {
    Ok(config::load(path)?)
}

/// Runs the syncs until stopped (or caught up with `once`); returns the totals per sync.
pub fn sync_until(
    runner: &mut Runner,
    once: bool,
    stop: &AtomicBool,
    admin: Option<&crate::admin::Admin>,
) -> Result<Vec<Report>, CliError> {
    let mut totals = vec![Report::default(); runner.cfg.syncs.len()];
    let deadline_failures = 8;
    let terminal = std::io::stderr().is_terminal();
    let mut bars: Vec<Option<ProgressBar>> = vec![None; runner.cfg.syncs.len()];
    let mut published: Option<Instant> = None;
    let mut last = false;
    loop {
        runner.prune_audit();
        let (mut reports, failures) = runner.cycle();
        let mut busy = false;
        for (i, r) in reports.iter_mut().enumerate() {
            record_metrics(runner, i, r, admin);
            // Latencies went to the metrics and the history; the totals only count.
            r.latencies.clear();
            let r = &*r;
            let loaded = r.loaded[0] + r.loaded[1];
            if terminal && loaded > 0 {
                // Initial load on a terminal: a bar with rows/s and ETA (log lines otherwise).
                let name = runner.cfg.syncs[i].name.clone();
                let estimate = runner.estimate(i);
                let bar = bars[i].get_or_insert_with(|| {
                    let bar = ProgressBar::new(estimate.unwrap_or(0).max(1));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix}: initial load {bar:30} {pos}/{len} rows, {per_sec}, ETA {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_prefix(name);
                    bar
                });
                bar.inc(loaded);
            } else if let Some(bar) = bars[i].take() {
                bar.finish();
            }
            if r.busy() {
                busy = true;
                tracing::info!(
                    sync = %runner.cfg.syncs[i].name,
                    captured_left = r.captured[0],
                    captured_right = r.captured[1],
                    loaded = r.loaded[0] + r.loaded[1],
                    processed = r.processed,
                    created = r.created[0] + r.created[1],
                    updated = r.updated[0] + r.updated[1],
                    deleted = r.deleted[0] + r.deleted[1],
                    conflicts = r.decided + r.held,
                    dead_letters = r.dead_letters,
                    "batch"
                );
            }
            totals[i].add(r);
        }
        for f in &failures {
            tracing::error!(sync = %f.sync, failures = f.failures, error = %f.error, "sync failed; retrying with backoff");
            if f.fatal || (once && f.failures >= deadline_failures) {
                return Err(CliError::Engine(f.error_clone()));
            }
        }
        if last {
            return Ok(totals);
        }
        if stop.load(Ordering::SeqCst) || (once && !busy && failures.is_empty()) {
            // One more cycle acknowledges what the sources prepared for a quick resume.
            if failures.is_empty() && runner.prepare_stop() {
                last = true;
                continue;
            }
            return Ok(totals);
        }
        if let Some(a) = admin {
            if published.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                match runner.views() {
                    Ok(views) => a.shared.publish(views, runner.ready()),
                    Err(e) => tracing::error!(error = %e, "reading state for the admin server failed"),
                }
                published = Some(Instant::now());
            }
            while let Ok(req) = a.requests.try_recv() {
                serve(runner, req);
                published = None;
            }
        }
        if !busy {
            let until = Instant::now()
                + if failures.is_empty() { runner.cfg.poll_interval } else { Duration::from_millis(100) };
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                match admin {
                    Some(a) => {
                        if let Ok(req) = a.requests.recv_timeout(Duration::from_millis(20)) {
                            serve(runner, req);
                            break; // publish what changed now
                        }
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// Records one cycle's report of sync `i` in the metrics and the admin server's history.
fn record_metrics(runner: &Runner, i: usize, r: &Report, admin: Option<&crate::admin::Admin>) {
    let spec = &runner.cfg.syncs[i];
    let sync = spec.name.clone();
    for side in [Side::Left, Side::Right] {
        let s = side.index();
        let direction = format!("{}->{}", spec.system(side), spec.system(side.other()));
        let labels = [("sync", sync.clone()), ("direction", direction)];
        metrics::counter!("tandem_changes_captured_total", &labels).increment(r.captured[s]);
        metrics::counter!("tandem_changes_applied_total", &labels)
            .increment(r.created[s] + r.updated[s] + r.deleted[s]);
        metrics::counter!("tandem_changes_echo_total", &labels).increment(r.echo[s]);
        metrics::counter!("tandem_changes_failed_total", &labels).increment(r.failed[s]);
        metrics::counter!("tandem_dead_letters_total", &labels).increment(r.failed[s]);
        let latency = metrics::histogram!("tandem_sync_latency_seconds", &labels);
        for (_, ms) in r.latencies.iter().filter(|(from, _)| *from == side) {
            latency.record(*ms as f64 / 1000.0);
        }
    }
    if r.processed > 0 {
        metrics::histogram!("tandem_batch_size", "sync" => sync.clone()).record(r.processed as f64);
    }
    for (rule, n) in &r.rules {
        metrics::counter!("tandem_conflicts_total", "sync" => sync.clone(), "rule" => rule.clone()).increment(*n);
    }
    if let Some(a) = admin {
        let applied = (0..2).map(|s| r.created[s] + r.updated[s] + r.deleted[s]).sum();
        let latencies: Vec<u64> = r.latencies.iter().map(|(_, ms)| *ms).collect();
        a.shared.record(i, crate::runner::now_ms(), applied, r.captured[0] + r.captured[1], &latencies);
    }
}

/// Carries out an operator's request from the admin server and answers it.
fn serve(runner: &mut Runner, req: crate::admin::OperatorRequest) {
    use crate::admin::Action;
    let find = |runner: &Runner, name: &str| {
        runner.cfg.syncs.iter().position(|s| s.name == name).ok_or_else(|| format!("no sync named `{name}`"))
    };
    let answer: Result<serde_json::Value, String> = match req.action {
        Action::Pause(name) => find(runner, &name).and_then(|i| {
            runner.set_paused(i, true).map_err(|e| e.to_string())?;
            tracing::warn!(sync = %name, "paused by an operator");
            Ok(serde_json::json!({ "sync": name, "paused": true }))
        }),
        Action::Resume(name) => find(runner, &name).and_then(|i| {
            runner.set_paused(i, false).map_err(|e| e.to_string())?;
            tracing::warn!(sync = %name, "resumed by an operator");
            Ok(serde_json::json!({ "sync": name, "paused": false }))
        }),
        Action::Resolve(id, how) => (|| {
            let c = runner
                .store
                .conflicts(None, true)
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|c| c.id == id)
                .ok_or_else(|| format!("there is no open conflict {id}"))?;
            let i = find(runner, &c.sync)?;
            let value = runner.with_engine(i, |engine| engine.resolve(id, how)).map_err(|e| e.to_string())?;
            let sensitive = runner.cfg.syncs[i].sensitive.contains(&c.field);
            let shown = if sensitive { serde_json::json!(tandem_core::engine::REDACTED) } else { value.to_json() };
            tracing::info!(sync = %c.sync, conflict = id, field = %c.field, "conflict resolved by an operator");
            Ok(serde_json::json!({ "id": id, "field": c.field, "value": shown, "resolved": true }))
        })(),
        Action::Retry { sync, ids } => {
            if let Some(name) = &sync {
                if let Err(e) = find(runner, name) {
                    return reply(req.reply, Err(e));
                }
            }
            let known = runner.store.dead_letters(None).map_err(|e| e.to_string());
            match known {
                Err(e) => Err(e),
                Ok(list) if ids.iter().any(|id| !list.iter().any(|d| d.id == *id)) => {
                    Err(format!("no dead letter {}", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")))
                }
                Ok(_) => retry_dead_letters(&mut runner.store, sync.as_deref(), &ids)
                    .map(|n| serde_json::json!({ "queued": n }))
                    .map_err(|e| e.to_string()),
            }
        }
        Action::Discard(id) => match runner.store.discard_dead_letter(id, crate::runner::now_ms()) {
            Ok(true) => Ok(serde_json::json!({ "id": id, "discarded": true })),
            Ok(false) => Err(format!("no dead letter {id}")),
            Err(e) => Err(e.to_string()),
        },
    };
    reply(req.reply, answer);
}

fn reply(to: std::sync::mpsc::Sender<Result<serde_json::Value, String>>, answer: Result<serde_json::Value, String>) {
    // The requester may have given up waiting; nothing to do then.
    let _ = to.send(answer);
}

trait ErrorClone {
    fn error_clone(&self) -> tandem_core::engine::EngineError;
}

impl ErrorClone for crate::runner::SyncFailure {
    fn error_clone(&self) -> tandem_core::engine::EngineError {
        tandem_core::engine::EngineError::Request(format!("sync `{}` failed: {}", self.sync, self.error))
    }
}

/// Takes the state file's run lock: two `tandem run` on one state would both process its
/// inbox. The lock is released when the process exits, however it exits.
pub fn lock_state(state: &Path) -> Result<std::fs::File, CliError> {
    let path = state.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| CliError::Io { what: format!("opening {}", path.display()), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::Usage(format!(
            "another `tandem run` is using the state file {} (lock {}); stop it first, or give this config its own `state`",
            state.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(source)) => Err(CliError::Io { what: format!("locking {}", path.display()), source }),
    }
}

/// `tandem run`.
pub fn run(path: &Path, once: bool) -> Result<(), CliError> {
    let cfg = load(path)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| CliError::Usage(format!("cannot install the Ctrl-C handler: {e}")))?;
    }
    let _lock = lock_state(&cfg.state)?;
    let admin = crate::admin::start(&cfg).map_err(CliError::Usage)?;
    let mut runner = Runner::open(cfg)?;
    tracing::info!(syncs = runner.cfg.syncs.len(), once, "tandem started");
    let totals = sync_until(&mut runner, once, &stop, admin.as_ref())?;
    if once {
        for (spec, r) in runner.cfg.syncs.iter().zip(&totals) {
            print!("{}", format::summary(spec, r));
        }
    } else {
        tracing::info!("stopped cleanly");
    }
    Ok(())
}

/// `tandem check`.
pub fn check(path: &Path) -> Result<(), CliError> {
    let cfg = load(path)?;
    if let Some(problem) = cfg.admin.as_ref().and_then(|a| a.token_problem.as_ref()) {
        return Err(CliError::Usage(format!("{}: {problem}", cfg.file.display())));
    }
    println!("{}: OK", cfg.file.display());
    // The state file, when there is one, says whether a bulk load is under way.
    let mut state = if cfg.state.exists() { Some(SqliteStore::open_existing(&cfg.state)?) } else { None };
    let mut problems = Vec::new();
    for (i, spec) in cfg.syncs.iter().enumerate() {
        let l = spec.side(Side::Left);
        let r = spec.side(Side::Right);
        println!(
            "  sync `{}`: {}.{} (key {}) ⇄ {}.{} (key {}), {} fields",
            spec.name,
            l.system,
            l.table,
            l.key.join(", "),
            r.system,
            r.table,
            r.key.join(", "),
            spec.fields.len()
        );
        for f in &spec.fields {
            if let Some(note) = f.lossy_note() {
                println!("    note: field `{}` is lossy in one case: {note}", f.name);
            }
        }
        for side in [Side::Left, Side::Right] {
            let ent = spec.side(side);
            if let Ok(mut t) = open_entity(&cfg, i, side) {
                if t.capture_state(None).map(|s| s != CaptureState::Ready).unwrap_or(false) {
                    println!(
                        "    {}.{}: change capture is not installed yet; `tandem run` installs it",
                        ent.system, ent.table
                    );
                }
                let loading = match &mut state {
                    Some(store) => store.meta(&spec.name, &tandem_core::engine::bulk_target_meta(side))?.is_some(),
                    None => false,
                };
                for note in t.capture_notes(loading)? {
                    let (what, fix) = (format!("{}.{}: {}", ent.system, ent.table, note.text), note.fix);
                    println!("    {}: {what}\n      fix: {fix}", if note.problem { "problem" } else { "note" });
                    if note.problem {
                        problems.push(what);
                    }
                }
            }
        }
    }
    // Advice: nothing fails without it, but something is slower than it needs to be.
    for (name, system) in &cfg.systems {
        if let crate::config::System::Mysql { url } = system {
            for note in tandem_connectors::mysql::advice(url).unwrap_or_default() {
                println!("  note: system `{name}`: {note}");
            }
        }
    }
    if !problems.is_empty() {
        return Err(CliError::Usage(format!("change capture misses changes: {}", problems.join("; "))));
    }
    Ok(())
}

/// `tandem status`.
pub fn status(path: &Path) -> Result<(), CliError> {
    let cfg = load(path)?;
    SqliteStore::open_existing(&cfg.state)?;
    let mut runner = Runner::open(cfg)?;
    for i in 0..runner.cfg.syncs.len() {
        let spec = runner.cfg.syncs[i].clone();
        let name = spec.name.as_str();
        let linked = runner.store.link_count(name)?;
        println!("sync `{name}`: {} ⇄ {}", spec.system(Side::Left), spec.system(Side::Right));
        println!("  records linked:      {linked}");
        if let Some(since) = runner.store.meta(name, "paused")?.and_then(|v| v.parse::<i64>().ok()) {
            println!("  paused by an operator since {} (resume it through the admin API)", format::time(since));
        }
        for side in [Side::Left, Side::Right] {
            let inbox = runner.store.inbox_len(name, side)?;
            let backlog = runner.backlog(i, side);
            let pending = match backlog {
                Ok(Some(b)) => format!("{}", inbox + b),
                Ok(None) => {
                    format!("{inbox} (+ what {}'s change stream holds, which it cannot count)", spec.system(side))
                }
                Err(e) => format!("{inbox} (+ unknown: {} is unreachable: {e})", spec.system(side)),
            };
            println!("  pending from {:<7} {pending}", format!("{}:", spec.system(side)));
            if let Some(p) = runner.store.meta(name, &format!("position:{side}"))? {
                println!("  {} read up to:  {p}", spec.system(side));
            }
        }
        let last = runner.store.meta(name, "last_sync")?.and_then(|v| v.parse::<i64>().ok());
        println!("  last successful sync: {}", last.map(format::time).unwrap_or_else(|| "never".into()));
        let load = [Side::Left, Side::Right]
            .iter()
            .filter_map(|s| {
                runner.store.meta(name, &format!("snapshot:{s}")).ok().flatten()?;
                let bulk = runner.store.meta(name, &format!("bulk:{s}")).ok().flatten().is_some();
                let into = spec.system(s.other());
                Some(if bulk {
                    format!("{} (copied into {into} in batches)", spec.system(*s))
                } else {
                    spec.system(*s).to_string()
                })
            })
            .collect::<Vec<_>>();
        if !load.is_empty() {
            println!("  initial load running on: {}", load.join(", "));
        }
        println!("  open conflicts:      {}", runner.store.conflicts(Some(name), true)?.len());
        println!("  dead letters:        {}", runner.store.dead_letters(Some(name))?.len());
    }
    Ok(())
}

/// `tandem conflicts`.
pub fn conflicts(path: &Path, resolve: Option<(i64, Resolution)>, all: bool) -> Result<(), CliError> {
    let cfg = load(path)?;
    SqliteStore::open_existing(&cfg.state)?;
    let mut runner = Runner::open(cfg)?;
    if let Some((id, how)) = resolve {
        let c =
            runner.store.conflicts(None, true)?.into_iter().find(|c| c.id == id).ok_or_else(|| {
                CliError::Usage(format!("there is no open conflict {id}; `tandem conflicts` lists them"))
            })?;
        let i = runner.cfg.syncs.iter().position(|s| s.name == c.sync).ok_or_else(|| {
            CliError::Usage(format!("conflict {id} belongs to sync `{}`, which is no longer configured", c.sync))
        })?;
        let value = runner.with_engine(i, |engine| engine.resolve(id, how))?;
        let sensitive = runner.cfg.syncs[i].sensitive.contains(&c.field);
        println!(
            "conflict {id} resolved: field `{}` is now {} on both sides (audited)",
            c.field,
            if sensitive { tandem_core::engine::REDACTED.to_string() } else { format::value(&value) }
        );
        return Ok(());
    }
    let list = runner.store.conflicts(None, !all)?;
    if list.is_empty() {
        println!("no {}conflicts", if all { "" } else { "open " });
        return Ok(());
    }
    for c in list {
        let spec = runner.cfg.syncs.iter().find(|s| s.name == c.sync);
        let (l, r) = spec
            .map(|s| (s.system(Side::Left).to_string(), s.system(Side::Right).to_string()))
            .unwrap_or(("left".into(), "right".into()));
        println!(
            "conflict {} (sync `{}`, opened {}){}",
            c.id,
            c.sync,
            format::time(c.opened_at),
            c.resolution.as_ref().map(|r| format!(", resolved: {r}")).unwrap_or_default()
        );
        println!("  record: {l} {} ⇄ {r} {}", c.left_key, c.right_key);
        println!("  field:  {}", c.field);
        // A sensitive field's values are shown nowhere by Tandem: look them up in the systems.
        let sensitive = spec.is_some_and(|s| s.sensitive.contains(&c.field));
        let shown = |v: &tandem_core::value::Value| {
            if sensitive {
                tandem_core::engine::REDACTED.to_string()
            } else {
                format::value(v)
            }
        };
        println!("  base:   {}", c.base.as_ref().map(shown).unwrap_or_else(|| "(none: linked by match_on)".into()));
        println!("  {l:<7} {}", shown(&c.left));
        println!("  {r:<7} {}", shown(&c.right));
        if c.resolution.is_none() {
            println!("  resolve: tandem conflicts --resolve {} --take left|right   (or --value VALUE)", c.id);
        }
    }
    Ok(())
}

/// `tandem dead-letters`.
pub fn dead_letters(path: &Path, retry: &[i64], retry_all: bool) -> Result<(), CliError> {
    let cfg = load(path)?;
    let mut store = SqliteStore::open_existing(&cfg.state)?;
    if retry_all || !retry.is_empty() {
        let n = retry_dead_letters(&mut store, None, retry)?;
        println!("queued {n} record(s) again; `tandem run` syncs them");
        return Ok(());
    }
    let list = store.dead_letters(None)?;
    if list.is_empty() {
        println!("no dead letters");
    }
    for d in list {
        let spec = cfg.syncs.iter().find(|s| s.name == d.sync);
        let sys = spec.map(|s| s.system(d.side).to_string()).unwrap_or_else(|| d.side.to_string());
        println!(
            "dead letter {} (sync `{}`, {}): record {} from {sys}, field {}, value type {}\n  {}",
            d.id,
            d.sync,
            format::time(d.at),
            d.key,
            d.field.as_deref().unwrap_or("-"),
            d.value_type.as_deref().unwrap_or("-"),
            d.error
        );
    }
    Ok(())
}

/// What `tandem audit` shows.
pub struct AuditArgs {
    /// One record, by a key on either side.
    pub key: Option<String>,
    /// With `key`: what set this field.
    pub field: Option<String>,
    /// One sync.
    pub sync: Option<String>,
    /// From this time.
    pub from: Option<String>,
    /// Until this time.
    pub to: Option<String>,
    /// One rule's decisions.
    pub rule: Option<String>,
    /// One kind of row.
    pub kind: Option<String>,
    /// At most this many rows.
    pub limit: usize,
}

/// Whether an audit row is about `field` (a decision on it, or an applied change to one of its
/// columns), or about the record as a whole (created, linked, deleted, restored).
fn touches_field(cfg: &Config, a: &AuditRow, field: &str) -> bool {
    if a.field.is_some() {
        return a.field.as_deref() == Some(field);
    }
    match a.kind.as_str() {
        "apply" => {
            let Some(f) =
                cfg.syncs.iter().find(|s| s.name == a.sync).and_then(|s| s.fields.iter().find(|f| f.name == field))
            else {
                return false;
            };
            let detail: serde_json::Value = serde_json::from_str(&a.detail).unwrap_or_default();
            f.left.iter().chain(&f.right).any(|c| detail.get(c.as_str()).is_some())
        }
        "create" | "link" | "delete" | "restore" => true,
        _ => false,
    }
}

/// One audit row as a line for people.
pub fn audit_line(cfg: &Config, a: &AuditRow) -> String {
    let spec = cfg.syncs.iter().find(|s| s.name == a.sync);
    let sys = |s: Side| spec.map(|x| x.system(s).to_string()).unwrap_or_else(|| s.to_string());
    let mut line = format!("#{} {} [{}] {}", a.id, format::time(a.at), a.sync, a.kind);
    if let (Some(src), "apply" | "create" | "delete") = (a.source, a.kind.as_str()) {
        line.push_str(&format!(" ({} → {})", sys(src), sys(src.other())));
    }
    if let (Some(l), Some(r)) = (&a.left_key, &a.right_key) {
        line.push_str(&format!(" {} {l} ⇄ {} {r}", sys(Side::Left), sys(Side::Right)));
    } else if let Some(l) = &a.left_key {
        line.push_str(&format!(" {} {l}", sys(Side::Left)));
    } else if let Some(r) = &a.right_key {
        line.push_str(&format!(" {} {r}", sys(Side::Right)));
    }
    if let Some(f) = &a.field {
        let mut parts = Vec::new();
        if let Some(b) = &a.base {
            parts.push(format!("base {}", format::value(b)));
        }
        if let Some(l) = &a.left {
            parts.push(format!("{} {}", sys(Side::Left), format::value(l)));
        }
        if let Some(r) = &a.right {
            parts.push(format!("{} {}", sys(Side::Right), format::value(r)));
        }
        line.push_str(&format!(" field {f}: {}", parts.join(", ")));
    }
    if let Some(rule) = &a.rule {
        line.push_str(&format!(" rule {rule}"));
    }
    if let Some(p) = a.position {
        line.push_str(&format!(" at source position {p}"));
    }
    if !a.detail.is_empty() {
        line.push_str(&format!(" — {}", a.detail));
    }
    line
}

/// `tandem audit`.
pub fn audit(path: &Path, args: &AuditArgs) -> Result<(), CliError> {
    let cfg = load(path)?;
    let mut store = SqliteStore::open_existing(&cfg.state)?;
    let now = crate::runner::now_ms();
    let time = |t: &Option<String>, what: &str| -> Result<Option<i64>, CliError> {
        t.as_deref()
            .map(|t| format::parse_time(t, now).map_err(|e| CliError::Usage(format!("--{what}: {e}"))))
            .transpose()
    };
    let query = AuditQuery {
        sync: args.sync.clone(),
        key: args.key.clone(),
        from: time(&args.from, "from")?,
        to: time(&args.to, "to")?,
        rule: args.rule.clone(),
        kind: args.kind.clone(),
        limit: if args.field.is_some() { usize::MAX } else { args.limit },
    };
    if let Some(field) = &args.field {
        if !cfg.syncs.iter().any(|s| s.fields.iter().any(|f| &f.name == field)) {
            return Err(CliError::Usage(format!(
                "no sync maps a field named `{field}`; fields are named by their `name`, or their left column"
            )));
        }
    }
    let mut rows = store.audit_query(&query)?;
    if let Some(field) = &args.field {
        rows.retain(|a| touches_field(&cfg, a, field));
        let skip = rows.len().saturating_sub(args.limit);
        rows.drain(..skip);
    }
    for a in &rows {
        println!("{}", audit_line(&cfg, a));
    }
    if let (Some(field), Some(key)) = (&args.field, &args.key) {
        match rows.iter().rev().find(|a| a.kind != "link") {
            Some(last) => println!(
                "why: `{field}` of record {key} has its value from #{} ({}), the latest row above",
                last.id, last.kind
            ),
            None => println!(
                "why: nothing in the audit trail changed `{field}` of record {key}: it is as the initial load found it"
            ),
        }
    }
    Ok(())
}

/// `tandem audit verify`.
pub fn audit_verify(path: &Path) -> Result<(), CliError> {
    let cfg = load(path)?;
    let mut store = SqliteStore::open_existing(&cfg.state)?;
    match store.verify_audit()? {
        AuditVerdict::Intact { rows, head } => {
            println!("audit trail intact: {rows} rows chained, head hash {head}");
            Ok(())
        }
        AuditVerdict::Broken { id, why, checked } => Err(CliError::Usage(format!(
            "audit trail tampered with: row #{id} fails ({why}); {checked} rows before it are intact"
        ))),
    }
}

/// `tandem uninstall`.
pub fn uninstall(path: &Path) -> Result<(), CliError> {
    let cfg = load(path)?;
    let mut cleared = Vec::new();
    for (i, spec) in cfg.syncs.iter().enumerate() {
        for side in [Side::Left, Side::Right] {
            let mut t = open_entity(&cfg, i, side)?;
            println!("{}", t.uninstall()?);
        }
        cleared.push(spec.name.clone());
    }
    if cfg.state.exists() {
        let mut store = SqliteStore::open(&cfg.state)?;
        for name in cleared {
            for side in ["left", "right"] {
                store.commit(vec![tandem_core::store::Op::Meta {
                    sync: name.clone(),
                    name: format!("init:{side}"),
                    value: None,
                }])?;
            }
        }
        println!(
            "the state file keeps links and audit; the next `tandem run` reinstalls capture and re-reads both sides"
        );
    }
    Ok(())
}
