//! The admin HTTP server of `tandem run`: `/health`, `/ready`, `/metrics` (Prometheus text),
//! the JSON API under `/api/` and the dashboard at `/`.
//!
//! The server runs on its own thread and never touches the systems: it reads what the sync loop
//! publishes (status, metrics, history), reads the state file on its own connection (conflicts,
//! dead letters, audit), and hands every change an operator asks for (pause, resume, resolve,
//! retry, discard) to the sync loop, which carries it out between cycles and answers.
//!
//! Every path but `/health` and the dashboard's static page needs `Authorization: Bearer TOKEN`.
//! The page holds no data: it asks for the token and sends it with each API call.

use crate::config::{Config, Secret};
use crate::format;
use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::{json, Value as Json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tandem_connectors::state::{AuditQuery, SqliteStore};
use tandem_core::engine::{redact, Resolution, REDACTED};
use tandem_core::mapping::Side;
use tandem_core::store::{AuditRow, StateStore};
use tandem_core::value::Value;

/// Width of one history bucket, and how many are kept (one hour).
pub const BUCKET_MS: i64 = 10_000;
const BUCKETS: usize = 360;

/// What the sync loop publishes about one sync.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncView {
    /// The sync's name.
    pub name: String,
    /// `system.table` of each side.
    pub left: String,
    /// `system.table` of the right side.
    pub right: String,
    /// `running`, `paused`, `starting` or `failing`.
    pub state: &'static str,
    /// Paused by an operator.
    pub paused: bool,
    /// Consecutive failed cycles.
    pub failures: u32,
    /// The last failure, while failing.
    pub last_error: Option<String>,
    /// Records linked.
    pub linked: u64,
    /// Changes waiting to be applied, by source side.
    pub pending: [u64; 2],
    /// How far behind each side's changes are (seconds).
    pub lag_seconds: [f64; 2],
    /// Open conflicts.
    pub conflicts_open: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Last successful sync (ms since the epoch).
    pub last_sync_ms: Option<i64>,
    /// An initial load is under way.
    pub initial_load: bool,
    /// Changes applied since start, by source side.
    pub applied: [u64; 2],
    /// Changes captured since start, by source side.
    pub captured: [u64; 2],
}

/// Ten seconds of one sync's activity.
#[derive(Clone, Debug, Default)]
struct Bucket {
    start: i64,
    applied: u64,
    captured: u64,
    latencies: Vec<u32>,
}

/// An operator's request, carried out by the sync loop.
pub enum Action {
    /// Stop syncing one sync until resumed.
    Pause(String),
    /// Sync it again.
    Resume(String),
    /// Resolve a held conflict.
    Resolve(i64, Resolution),
    /// Queue dead letters again: these ids, or all of a sync (or of every sync).
    Retry { sync: Option<String>, ids: Vec<i64> },
    /// Forget a dead letter.
    Discard(i64),
}

/// A request with the channel its answer goes back on.
pub struct OperatorRequest {
    /// What to do.
    pub action: Action,
    /// Where the answer goes: a JSON body, or an error for the operator.
    pub reply: mpsc::Sender<Result<Json, String>>,
}

/// Everything the server and the sync loop share.
pub struct Shared {
    cfg: Config,
    token: Option<Secret>,
    views: Mutex<Vec<SyncView>>,
    history: Mutex<Vec<VecDeque<Bucket>>>,
    ready: AtomicBool,
    requests: Mutex<mpsc::Sender<OperatorRequest>>,
    prometheus: PrometheusHandle,
}

impl Shared {
    /// Publishes the sync loop's view of every sync.
    pub fn publish(&self, views: Vec<SyncView>, ready: bool) {
        *self.views.lock().unwrap_or_else(|e| e.into_inner()) = views;
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Adds a cycle's numbers to sync `i`'s history.
    pub fn record(&self, i: usize, now: i64, applied: u64, captured: u64, latencies: &[u64]) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = h.get_mut(i) else { return };
        let start = now - now.rem_euclid(BUCKET_MS);
        if q.back().is_none_or(|b| b.start != start) {
            q.push_back(Bucket { start, ..Bucket::default() });
            while q.len() > BUCKETS {
                q.pop_front();
            }
        }
        let b = q.back_mut().expect("pushed above");
        b.applied += applied;
        b.captured += captured;
        // A bounded sample per bucket is plenty for percentiles on a chart.
        for l in latencies.iter().take(2_000usize.saturating_sub(b.latencies.len())) {
            b.latencies.push((*l).min(u32::MAX as u64) as u32);
        }
    }
}

/// The running server: what the sync loop needs to talk to it.
pub struct Admin {
    /// Shared with the server thread.
    pub shared: Arc<Shared>,
    /// Operators' requests, to carry out between cycles.
    pub requests: mpsc::Receiver<OperatorRequest>,
}

/// Starts the admin server of `cfg` on its own thread; `Ok(None)` when `[admin]` is not configured.
pub fn start(cfg: &Config) -> Result<Option<Admin>, String> {
    let Some(settings) = cfg.admin.clone() else { return Ok(None) };
    if let Some(problem) = &settings.token_problem {
        return Err(format!("{}: {problem}", cfg.file.display()));
    }
    let prometheus = install_metrics()?;
    let listener = std::net::TcpListener::bind(settings.listen).map_err(|e| {
        format!(
            "the admin server cannot listen on {}: {e}; set another address in [admin] listen of {}",
            settings.listen,
            cfg.file.display()
        )
    })?;
    listener.set_nonblocking(true).map_err(|e| format!("admin listener: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("admin listener: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        token: settings.token.clone(),
        views: Mutex::new(Vec::new()),
        history: Mutex::new(vec![VecDeque::new(); cfg.syncs.len()]),
        ready: AtomicBool::new(false),
        requests: Mutex::new(tx),
        prometheus,
    });
    let server = shared.clone();
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "the admin server could not start"),
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "the admin server could not start"),
                };
                let app = axum::Router::new().fallback(handle).with_state(server);
                if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
                    tracing::error!(error = %e, "the admin server stopped");
                }
            });
        })
        .map_err(|e| format!("admin thread: {e}"))?;
    if settings.token.is_none() {
        tracing::warn!(
            address = %addr,
            "admin server without a token: only /health answers; set [admin] token = \"${{TANDEM_ADMIN_TOKEN}}\""
        );
    }
    tracing::info!(address = %addr, "admin server listening");
    Ok(Some(Admin { shared, requests: rx }))
}

/// Installs the Prometheus recorder (once per process) and describes every metric.
fn install_metrics() -> Result<PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let latency = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
    let sizes = [1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("tandem_sync_latency_seconds".into()), &latency)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("tandem_batch_size".into()), &sizes))
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("tandem_changes_captured_total", "Changes captured from a system, by sync and direction");
    describe_counter!(
        "tandem_changes_applied_total",
        "Changes applied to the other system (creates, updates, deletes)"
    );
    describe_counter!(
        "tandem_changes_echo_total",
        "Captured changes that needed no write (echoes of Tandem's own writes, or already in agreement)"
    );
    describe_counter!("tandem_changes_failed_total", "Changes that could not be applied and went to dead letters");
    describe_histogram!(
        "tandem_sync_latency_seconds",
        Unit::Seconds,
        "End-to-end latency from the source commit to the change applied on the other side"
    );
    describe_gauge!("tandem_lag_seconds", Unit::Seconds, "How far behind a system's changes are (oldest waiting)");
    describe_gauge!("tandem_lag_changes", "Captured changes of a system waiting to be applied");
    describe_histogram!("tandem_batch_size", "Records processed per batch");
    describe_counter!("tandem_conflicts_total", "Conflicts decided or held, by rule");
    describe_gauge!("tandem_conflicts_open", "Conflicts held for a person");
    describe_counter!("tandem_dead_letters_total", "Records sent to dead letters, by direction");
    describe_gauge!("tandem_dead_letters", "Dead letters waiting for a retry or a discard");
    describe_counter!("tandem_retries_total", "Failed cycles retried with backoff");
    describe_counter!("tandem_reconnects_total", "Connections to a sync's systems opened again after a failure");
    describe_gauge!("tandem_last_success_timestamp_seconds", Unit::Seconds, "Time of the last successful sync");
    describe_gauge!("tandem_sync_paused", "1 while an operator has paused the sync");
    describe_gauge!("tandem_records_linked", "Records linked between the two systems");
}

fn json_response(status: StatusCode, body: Json) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({ "error": message.into() }))
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn same_secret(given: &str, secret: &str) -> bool {
    let (a, b) = (given.as_bytes(), secret.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &shared.token else { return false };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    given.is_some_and(|g| same_secret(g.trim(), token.expose()))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match (&method, path.as_str()) {
        (&Method::GET, "/health") => return json_response(StatusCode::OK, json!({ "status": "ok" })),
        (&Method::GET, "/" | "/index.html") => {
            return (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
                DASHBOARD,
            )
                .into_response()
        }
        _ => {}
    }
    if !authorized(&shared, req.headers()) {
        let why = if shared.token.is_none() {
            "no admin token is configured"
        } else if req.headers().contains_key(header::AUTHORIZATION) {
            "wrong token"
        } else {
            "no token"
        };
        tracing::warn!(peer = %peer, method = %method, path = %path, why, "admin request refused");
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            if shared.token.is_none() {
                "this admin server has no token configured: set [admin] token = \"${TANDEM_ADMIN_TOKEN}\""
            } else {
                "send Authorization: Bearer <the admin token>"
            },
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    let query: HashMap<String, String> =
        Query::<HashMap<String, String>>::try_from_uri(req.uri()).map(|q| q.0).unwrap_or_default();
    let body = match to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB"),
    };
    let body: Json = if body.is_empty() {
        Json::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(j) => j,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")),
        }
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let s = shared.clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["ready"]) => {
            let views = shared.views.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let ready = shared.ready.load(Ordering::SeqCst);
            let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let syncs: Vec<Json> =
                views.iter().map(|v| json!({ "name": v.name, "state": v.state, "last_error": v.last_error })).collect();
            json_response(code, json!({ "ready": ready, "syncs": syncs }))
        }
        (&Method::GET, ["metrics"]) => {
            shared.prometheus.run_upkeep();
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.prometheus.render()).into_response()
        }
        (&Method::GET, ["api", "status"]) => {
            let views = shared.views.lock().unwrap_or_else(|e| e.into_inner()).clone();
            json_response(StatusCode::OK, json!({ "ready": shared.ready.load(Ordering::SeqCst), "syncs": views }))
        }
        (&Method::GET, ["api", "history"]) => json_response(StatusCode::OK, history(&shared, query.get("sync"))),
        (&Method::GET, ["api", "conflicts"]) => {
            let all = query.get("all").is_some_and(|v| v == "true" || v == "1");
            read(s, move |sh, st| {
                let list = st.conflicts(query.get("sync").map(String::as_str), !all).map_err(|e| e.to_string())?;
                Ok(json!(list.iter().map(|c| conflict_json(&sh.cfg, c)).collect::<Vec<_>>()))
            })
            .await
        }
        (&Method::GET, ["api", "conflicts", id]) => {
            let Ok(id) = id.parse::<i64>() else { return error(StatusCode::BAD_REQUEST, "a conflict id is a number") };
            read(s, move |sh, st| {
                let c = st.conflicts(None, false).map_err(|e| e.to_string())?.into_iter().find(|c| c.id == id);
                c.map(|c| conflict_json(&sh.cfg, &c)).ok_or_else(|| format!("no conflict {id}"))
            })
            .await
        }
        (&Method::POST, ["api", "conflicts", id, "resolve"]) => {
            let Ok(id) = id.parse::<i64>() else { return error(StatusCode::BAD_REQUEST, "a conflict id is a number") };
            let how = match (body.get("take").and_then(Json::as_str), body.get("value")) {
                (Some("left"), _) => Resolution::Left,
                (Some("right"), _) => Resolution::Right,
                (None, Some(v)) => Resolution::Value(Value::from_json(v)),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "send {\"take\": \"left\"}, {\"take\": \"right\"} or {\"value\": VALUE}",
                    )
                }
            };
            ask(&shared, Action::Resolve(id, how)).await
        }
        (&Method::GET, ["api", "dead-letters"]) => {
            read(s, move |sh, st| {
                let list = st.dead_letters(query.get("sync").map(String::as_str)).map_err(|e| e.to_string())?;
                Ok(json!(list
                    .iter()
                    .map(|d| {
                        let system =
                            sh.cfg.syncs.iter().find(|x| x.name == d.sync).map(|x| x.system(d.side).to_string());
                        json!({
                            "id": d.id, "sync": d.sync, "side": d.side.as_str(), "system": system,
                            "key": d.key.as_str(), "field": d.field, "value_type": d.value_type,
                            "reason": d.error, "at_ms": d.at, "at": format::time(d.at),
                        })
                    })
                    .collect::<Vec<_>>()))
            })
            .await
        }
        (&Method::POST, ["api", "dead-letters", "retry"]) => {
            let sync = body.get("sync").and_then(Json::as_str).map(str::to_string);
            ask(&shared, Action::Retry { sync, ids: Vec::new() }).await
        }
        (&Method::POST, ["api", "dead-letters", id, "retry"]) => match id.parse::<i64>() {
            Ok(id) => ask(&shared, Action::Retry { sync: None, ids: vec![id] }).await,
            Err(_) => error(StatusCode::BAD_REQUEST, "a dead letter id is a number"),
        },
        (&Method::POST, ["api", "dead-letters", id, "discard"]) => match id.parse::<i64>() {
            Ok(id) => ask(&shared, Action::Discard(id)).await,
            Err(_) => error(StatusCode::BAD_REQUEST, "a dead letter id is a number"),
        },
        (&Method::POST, ["api", "syncs", name, "pause"]) => ask(&shared, Action::Pause(name.to_string())).await,
        (&Method::POST, ["api", "syncs", name, "resume"]) => ask(&shared, Action::Resume(name.to_string())).await,
        (&Method::GET, ["api", "audit"]) => {
            let now = crate::runner::now_ms();
            let time = |k: &str| -> Result<Option<i64>, String> {
                query.get(k).map(|t| format::parse_time(t, now).map_err(|e| format!("{k}: {e}"))).transpose()
            };
            let q = match (time("from"), time("to")) {
                (Ok(from), Ok(to)) => AuditQuery {
                    sync: query.get("sync").cloned(),
                    key: query.get("key").cloned(),
                    from,
                    to,
                    rule: query.get("rule").cloned(),
                    kind: query.get("kind").cloned(),
                    limit: query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(200).min(10_000),
                },
                (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
            };
            read(s, move |sh, st| {
                let rows = st.audit_query(&q).map_err(|e| e.to_string())?;
                Ok(json!(rows.iter().map(|a| audit_json(&sh.cfg, a)).collect::<Vec<_>>()))
            })
            .await
        }
        _ => error(StatusCode::NOT_FOUND, format!("no {method} {path}; the README lists the admin API")),
    }
}

/// Runs a read of the state file on a blocking thread, on a connection of its own.
async fn read(
    shared: Arc<Shared>,
    f: impl FnOnce(&Shared, &mut SqliteStore) -> Result<Json, String> + Send + 'static,
) -> Response {
    let out = tokio::task::spawn_blocking(move || {
        let mut store = SqliteStore::open_existing(&shared.cfg.state).map_err(|e| e.to_string())?;
        f(&shared, &mut store)
    })
    .await;
    match out {
        Ok(Ok(j)) => json_response(StatusCode::OK, j),
        Ok(Err(e)) if e.starts_with("no ") => error(StatusCode::NOT_FOUND, e),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Hands an operator's request to the sync loop and waits for its answer.
async fn ask(shared: &Shared, action: Action) -> Response {
    let (tx, rx) = mpsc::channel();
    let sent = shared.requests.lock().unwrap_or_else(|e| e.into_inner()).send(OperatorRequest { action, reply: tx });
    if sent.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "tandem is stopping");
    }
    let answer = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60))).await;
    match answer {
        Ok(Ok(Ok(j))) => json_response(StatusCode::OK, j),
        Ok(Ok(Err(e))) => error(StatusCode::CONFLICT, e),
        _ => error(StatusCode::GATEWAY_TIMEOUT, "the sync loop did not answer within 60 s (busy with a long batch?)"),
    }
}

fn history(shared: &Shared, sync: Option<&String>) -> Json {
    let h = shared.history.lock().unwrap_or_else(|e| e.into_inner());
    let out: Vec<Json> = shared
        .cfg
        .syncs
        .iter()
        .zip(h.iter())
        .filter(|(s, _)| sync.is_none_or(|n| &s.name == n))
        .map(|(s, q)| {
            let buckets: Vec<Json> = q
                .iter()
                .map(|b| {
                    let mut l = b.latencies.clone();
                    l.sort_unstable();
                    let pct = |p: f64| (!l.is_empty()).then(|| l[((l.len() - 1) as f64 * p).round() as usize]);
                    json!({
                        "t": b.start, "applied": b.applied, "captured": b.captured,
                        "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                    })
                })
                .collect();
            json!({ "sync": s.name, "bucket_ms": BUCKET_MS, "buckets": buckets })
        })
        .collect();
    json!(out)
}

fn conflict_json(cfg: &Config, c: &tandem_core::store::Conflict) -> Json {
    let spec = cfg.syncs.iter().find(|s| s.name == c.sync);
    let sensitive = spec.is_some_and(|s| s.sensitive.contains(&c.field));
    let shown = |v: &Value| if sensitive { json!(REDACTED) } else { v.to_json() };
    let sys = |side: Side| spec.map(|s| s.system(side).to_string()).unwrap_or_else(|| side.to_string());
    json!({
        "id": c.id,
        "sync": c.sync,
        "left_key": c.left_key.as_str(),
        "right_key": c.right_key.as_str(),
        "field": c.field,
        "base": c.base.as_ref().map(shown),
        "left": shown(&c.left),
        "right": shown(&c.right),
        "left_system": sys(Side::Left),
        "right_system": sys(Side::Right),
        "opened_at_ms": c.opened_at,
        "opened_at": format::time(c.opened_at),
        "resolution": c.resolution,
    })
}

fn audit_json(cfg: &Config, a: &AuditRow) -> Json {
    let mut a = a.clone();
    // Rows written before a field was marked sensitive are shown without its values too.
    if let Some(spec) = cfg.syncs.iter().find(|s| s.name == a.sync) {
        redact(spec, &mut a);
    }
    json!({
        "id": a.id,
        "at_ms": a.at,
        "at": format::time(a.at),
        "sync": a.sync,
        "kind": a.kind,
        "source": a.source.map(Side::as_str),
        "left_key": a.left_key.as_ref().map(|k| k.as_str().to_string()),
        "right_key": a.right_key.as_ref().map(|k| k.as_str().to_string()),
        "field": a.field,
        "base": a.base.as_ref().map(Value::to_json),
        "left": a.left.as_ref().map(Value::to_json),
        "right": a.right.as_ref().map(Value::to_json),
        "winner": a.winner.map(Side::as_str),
        "rule": a.rule,
        "position": a.position,
        "detail": a.detail,
        "line": crate::commands::audit_line(cfg, &a),
    })
}

/// The dashboard: one page, no external resources.
const DASHBOARD: &str = include_str!("dashboard.html");
