//! PostgreSQL: logical replication capture (`pgoutput`, a slot and a publication Tandem
//! creates), keyset snapshot, transactional apply tagged with a replication origin.
//!
//! Values travel in their text form and are cast in SQL to each column's type, so numeric,
//! dates, json, uuid and arrays keep their exact value. Tandem's own writes run in a session
//! set up with a replication origin named like its slot; capture drops transactions with an
//! origin starting with `tandem_`, and the base comparison stays as the safety net.

mod codec;
mod stream;
pub(crate) mod tls;

use crate::commits::STREAM_WAIT;
use codec::{copy_text, fits, from_text, key_value, to_text};
use pgwire_replication::{FeedbackObserver, Lsn, ReplicationConfig};
use std::sync::Arc;
use std::time::Duration;
use stream::{Capture, STATUS_INTERVAL};
use tandem_core::connector::{
    BulkTarget, CaptureNote, CaptureState, ChangePage, Connector, ConnectorError, ErrorKind, RowError, Write,
    WriteResult,
};
use tandem_core::value::{Key, Name, Row, Value};
use tokio_postgres::types::{ToSql, Type};

/// Statement parameters that are all `text[]`, typed up front: the statement is parsed, bound
/// and run in one round trip, with no separate prepare (as every statement on a hot path is).
fn text_arrays<T: ToSql + Sync>(arrays: &[T]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    arrays.iter().map(|a| (a as &(dyn ToSql + Sync), Type::TEXT_ARRAY)).collect()
}

/// One column of a PostgreSQL table.
#[derive(Clone, Debug, PartialEq)]
pub struct PgColumn {
    /// Column name.
    pub name: Name,
    /// Type OID.
    pub oid: u32,
    /// The type as SQL spells it (`numeric(12,2)`, `timestamp with time zone`).
    pub type_name: String,
    /// The type without its modifier, by its catalog name (`pg_catalog."varchar"`,
    /// `pg_catalog.bpchar`): values are cast to it and the column's own modifier applies on
    /// assignment, so an over-long text is refused instead of cut (an explicit cast to
    /// `varchar(3)` truncates silently, and `character` or `bit` alone mean length 1).
    pub base_type: String,
    /// Whether NULL is refused.
    pub not_null: bool,
    /// Whether the server fills it (default, identity, generated).
    pub has_default: bool,
    /// Position in the primary key (0 when not part of it).
    pub pk: i64,
}

/// Quotes an identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn pg_err(what: impl std::fmt::Display, e: tokio_postgres::Error) -> ConnectorError {
    let kind = match e.as_db_error() {
        Some(db) if db.code().code().starts_with("08") || db.code().code().starts_with("57") => ErrorKind::Unavailable,
        Some(db) if db.code().code() == "42P01" || db.code().code() == "42703" => ErrorKind::Schema,
        Some(_) => ErrorKind::Internal,
        None => ErrorKind::Unavailable,
    };
    let msg = match e.as_db_error() {
        Some(db) => format!("{what}: {}", db.message()),
        None => {
            // Name the cause too ("invalid peer certificate: NotValidForName", "connection refused").
            let mut msg = format!("{what}: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            msg
        }
    };
    ConnectorError { kind, message: msg, source: Some(Box::new(e)) }
}

/// Connection settings parsed from a `postgres://` URL (the password never printed).
#[derive(Clone)]
pub struct PgUrl {
    config: tokio_postgres::Config,
    tls: tls::Tls,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

impl PgUrl {
    /// Parses a URL; the error never repeats the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<PgUrl, String> {
        let (rest, tls) = tls::split_url(url)?;
        let mut config =
            rest.parse::<tokio_postgres::Config>().map_err(|e| format!("not a valid postgres:// URL ({e})"))?;
        config.ssl_mode(match tls.mode {
            tls::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgUrl { config, tls })
    }

    fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        }
    }

    fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    fn user(&self) -> String {
        self.config.get_user().unwrap_or("postgres").to_string()
    }

    fn dbname(&self) -> String {
        self.config.get_dbname().map(str::to_string).unwrap_or_else(|| self.user())
    }

    /// `host:port/db`, for messages.
    pub fn label(&self) -> String {
        format!("{}:{}/{}", self.host(), self.port(), self.dbname())
    }
}

/// One table of one PostgreSQL database.
pub struct PgTable {
    rt: tokio::runtime::Runtime,
    client: Arc<tokio_postgres::Client>,
    url: PgUrl,
    schema: String,
    table: String,
    key: Vec<String>,
    columns: Vec<PgColumn>,
    slot: String,
    publication: String,
    origin_ready: bool,
    capture: Option<Capture>,
    /// The next page of an initial load, read ahead on the I/O thread while the engine works
    /// on the current one: (after, limit, the query). Dropped when a change to the table is
    /// captured or applied meanwhile, so a page is never older than a change already handled.
    read_ahead: Option<ReadAhead>,
    /// The connection holding the snapshot a running initial load reads its pages in.
    snapshot: Option<Arc<tokio_postgres::Client>>,
    /// Rows being read for the engine's next `read` (see `Connector::prefetch`).
    prefetched: Option<(Vec<Key>, Pending)>,
    decode: Arc<Decode>,
    /// A bulk load into this table runs (see [`PgTable::bulk_target`]): each page's
    /// transaction also writes a row to `_tandem.loads`, whose `xmin` is the page's.
    loading: bool,
}

type Pending = tokio::task::JoinHandle<Result<Vec<(Key, Row)>, tokio_postgres::Error>>;
type ReadAhead = (Option<Key>, usize, Pending);

fn runtime() -> Result<tokio::runtime::Runtime, ConnectorError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| ConnectorError::new(ErrorKind::Internal, format!("starting the I/O runtime: {e}")))
}

async fn connect(url: &PgUrl) -> Result<tokio_postgres::Client, ConnectorError> {
    let fail = |e| pg_err(format_args!("connecting to {}", url.label()), e);
    let client = if url.tls.mode == tls::SslMode::Disable {
        let (client, connection) = url.config.connect(tokio_postgres::NoTls).await.map_err(fail)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    } else {
        let config = tls::client_config(&url.tls).map_err(|e| ConnectorError::new(ErrorKind::Schema, e))?;
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new(config);
        let (client, connection) = url.config.connect(connector).await.map_err(fail)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    };
    client
        .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 1;")
        .await
        .map_err(|e| pg_err("setting up the session", e))?;
    Ok(client)
}

/// Copies `rows` into `qualified` with one `COPY` per set of columns (text format).
async fn copy_rows(
    client: Arc<tokio_postgres::Client>,
    qualified: String,
    rows: Vec<Row>,
) -> Result<(), tokio_postgres::Error> {
    use futures_util::SinkExt;
    // Rows by their set of columns (nearly always one set: found without building a key).
    let mut shapes: Vec<(Vec<Name>, Vec<Row>)> = Vec::new();
    for r in rows {
        match shapes.iter_mut().find(|(cols, _)| cols.iter().eq(r.keys())) {
            Some((_, same)) => same.push(r),
            None => shapes.push((r.keys().cloned().collect(), vec![r])),
        }
    }
    for (cols, rows) in shapes {
        let names: Vec<String> = cols.iter().map(|c| ident(c)).collect();
        let sql = format!("COPY {qualified} ({}) FROM STDIN", names.join(", "));
        let sink = client.copy_in::<_, bytes::Bytes>(&sql).await?;
        futures_util::pin_mut!(sink);
        // Sent in small chunks: the server parses one while the next is encoded.
        const CHUNK: usize = 64 << 10;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 4096);
        for row in rows {
            for (i, v) in row.values().enumerate() {
                if i > 0 {
                    buf.push(b'\t');
                }
                copy_text(v, &mut buf);
            }
            buf.push(b'\n');
            if buf.len() >= CHUNK {
                sink.send(bytes::Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096)))).await?;
            }
        }
        if !buf.is_empty() {
            sink.send(bytes::Bytes::from(buf)).await?;
        }
        sink.finish().await?;
    }
    Ok(())
}

/// How result rows of `select_list` turn into records: column names and types, and where the
/// key columns are. Shared with the I/O thread, which decodes rows it reads ahead.
struct Decode {
    names: Vec<Name>,
    oids: Vec<u32>,
    key: Vec<usize>,
}

impl Decode {
    fn row(&self, r: &tokio_postgres::Row) -> (Key, Row) {
        let values: Vec<Value> =
            self.oids.iter().enumerate().map(|(i, oid)| from_text(*oid, r.get::<_, Option<&str>>(i))).collect();
        let key = Key::from_values(&self.key.iter().map(|i| values[*i].clone()).collect::<Vec<_>>());
        (key, self.names.iter().cloned().zip(values).collect())
    }

    /// The key of a result row that holds only the key columns, as text, in key order.
    fn key_only(&self, r: &tokio_postgres::Row) -> Key {
        let values: Vec<Value> =
            self.key.iter().enumerate().map(|(i, c)| from_text(self.oids[*c], r.get::<_, Option<&str>>(i))).collect();
        Key::from_values(&values)
    }

    fn rows(&self, rows: Vec<tokio_postgres::Row>) -> Vec<(Key, Row)> {
        rows.iter().map(|r| self.row(r)).collect()
    }
}

/// Reads rows by key (see `PgTable::read_query`).
async fn read_rows(
    client: Arc<tokio_postgres::Client>,
    sql: String,
    arrays: Vec<Vec<Option<String>>>,
    decode: Arc<Decode>,
) -> Result<Vec<(Key, Row)>, tokio_postgres::Error> {
    Ok(decode.rows(client.query_typed(&sql, &text_arrays(&arrays)).await?))
}

/// Runs one page query of the initial load.
async fn scan_page(
    client: Arc<tokio_postgres::Client>,
    sql: String,
    after: Option<Key>,
    decode: Arc<Decode>,
) -> Result<Vec<(Key, Row)>, tokio_postgres::Error> {
    let p: Vec<Option<String>> = after.map(|k| k.values().iter().map(to_text).collect()).unwrap_or_default();
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = p.iter().map(|x| (x as &(dyn ToSql + Sync), Type::TEXT)).collect();
    Ok(decode.rows(client.query_typed(&sql, &typed).await?))
}

/// Whether Tandem's table `_tandem.<name>` exists (a database Tandem never wrote to has none).
async fn has_tandem_table(c: &tokio_postgres::Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_opt("SELECT 1 FROM pg_tables WHERE schemaname = '_tandem' AND tablename = $1", &[&name])
        .await?
        .is_some())
}

/// Removes the rows `table` has in Tandem's table `_tandem.<name>` (`intents` or `loads`), if
/// that exists.
async fn forget_rows_of(c: &tokio_postgres::Client, name: &str, table: &str) -> Result<(), tokio_postgres::Error> {
    if has_tandem_table(c, name).await? {
        c.execute(&format!("DELETE FROM _tandem.{name} WHERE tbl = $1"), &[&table]).await?;
    }
    Ok(())
}

/// Waits until every transaction that was running when this is called has ended (as CREATE
/// INDEX CONCURRENTLY does), naming the oldest after a while; gives up after two minutes.
async fn wait_for_older_transactions(c: &tokio_postgres::Client, label: &str) -> Result<(), ConnectorError> {
    let fail = |e| pg_err(format_args!("waiting for older transactions on {label}"), e);
    let horizon: i64 =
        c.query_one("SELECT txid_snapshot_xmax(txid_current_snapshot())", &[]).await.map_err(fail)?.get(0);
    let start = std::time::Instant::now();
    loop {
        let oldest: i64 =
            c.query_one("SELECT txid_snapshot_xmin(txid_current_snapshot())", &[]).await.map_err(fail)?.get(0);
        if oldest >= horizon {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            let who = c
                .query_opt(
                    "SELECT pid::text || ' (' || coalesce(usename, '?') || ', ' || coalesce(state, '?') || ')'
                     FROM pg_stat_activity WHERE backend_xid IS NOT NULL ORDER BY xact_start LIMIT 1",
                    &[],
                )
                .await
                .map_err(fail)?
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_else(|| "a prepared transaction".into());
            return Err(ConnectorError::new(
                ErrorKind::Unavailable,
                format!(
                    "the initial load into {label} cannot end while an older transaction runs (backend {who}); it is retried"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The columns of `schema.table` (empty when the table does not exist).
async fn columns(client: &tokio_postgres::Client, qualified: &str) -> Result<Vec<PgColumn>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    (SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname) FROM pg_type t
                     JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = a.atttypid),
                    (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''),
                    coalesce((SELECT k.n FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(att, n)
                              WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.att = a.attnum), 0)::int8
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&qualified],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PgColumn {
            name: r.get::<_, String>(0).into(),
            oid: r.get(1),
            type_name: r.get(2),
            not_null: r.get(3),
            base_type: r.get(4),
            has_default: r.get(5),
            pk: r.get(6),
        })
        .collect())
}

/// Splits `schema.table` (default schema `public`).
fn split_table(table: &str) -> (String, String) {
    match table.split_once('.') {
        Some((s, t)) => (s.to_string(), t.to_string()),
        None => ("public".to_string(), table.to_string()),
    }
}

/// The columns of a table, for `tandem check` (reads only).
pub fn table_columns(url: &PgUrl, table: &str) -> Result<Vec<PgColumn>, ConnectorError> {
    let rt = runtime()?;
    let (schema, name) = split_table(table);
    rt.block_on(async {
        let client = connect(url).await?;
        columns(&client, &format!("{}.{}", ident(&schema), ident(&name)))
            .await
            .map_err(|e| pg_err(format_args!("reading {} on {}", table, url.label()), e))
    })
}

/// What the server lacks for Tandem to capture and apply on `table`: `(what, fix)` pairs,
/// empty when everything is in place. Reads only.
pub fn missing_requirements(url: &PgUrl, table: &str) -> Result<Vec<(String, String)>, ConnectorError> {
    let rt = runtime()?;
    let (schema, name) = split_table(table);
    let qualified = format!("{}.{}", ident(&schema), ident(&name));
    let row = rt.block_on(async {
        let client = connect(url).await?;
        client
            .query_one(
                "SELECT current_setting('wal_level'),
                        current_setting('max_replication_slots')::int8 - (SELECT count(*) FROM pg_replication_slots),
                        current_setting('max_wal_senders')::int8,
                        r.rolsuper, r.rolreplication,
                        r.rolsuper OR has_function_privilege('pg_replication_origin_session_setup(text)', 'EXECUTE'),
                        r.rolsuper OR has_function_privilege('pg_replication_origin_create(text)', 'EXECUTE'),
                        has_database_privilege(current_database(), 'CREATE'),
                        coalesce((SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = to_regclass($1)), false),
                        current_user::text
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[&qualified],
            )
            .await
            .map_err(|e| pg_err("reading server settings", e))
    })?;
    let user: String = row.get(9);
    let mut out = Vec::new();
    let wal: String = row.get(0);
    if wal != "logical" {
        out.push((
            format!("{}: wal_level is {wal}; logical replication needs `logical`", url.label()),
            "ALTER SYSTEM SET wal_level = 'logical'; then restart PostgreSQL".to_string(),
        ));
    }
    if row.get::<_, i64>(1) < 1 {
        out.push((
            format!("{}: no free replication slot (max_replication_slots is used up)", url.label()),
            "raise max_replication_slots (one slot per synced PostgreSQL table) and restart".to_string(),
        ));
    }
    if row.get::<_, i64>(2) < 1 {
        out.push((
            format!("{}: max_wal_senders is 0", url.label()),
            "set max_wal_senders to at least the number of synced tables and restart".to_string(),
        ));
    }
    let (superuser, replication): (bool, bool) = (row.get(3), row.get(4));
    if !superuser && !replication {
        out.push((
            format!("{}: role {user} may not stream replication", url.label()),
            format!("ALTER ROLE {user} WITH REPLICATION"),
        ));
    }
    if !row.get::<_, bool>(5) || !row.get::<_, bool>(6) {
        out.push((
            format!("{}: role {user} may not use replication origins (Tandem tags its own writes with one)", url.label()),
            format!("GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text), pg_replication_origin_create(text), pg_replication_origin_drop(text) TO {user}"),
        ));
    }
    if !row.get::<_, bool>(7) {
        out.push((
            format!("{}: role {user} may not create Tandem's schema _tandem", url.label()),
            format!("GRANT CREATE ON DATABASE {} TO {user}", url.dbname()),
        ));
    }
    if !row.get::<_, bool>(8) && !superuser {
        out.push((
            format!("{}: role {user} does not own {table}, so it cannot publish it", url.label()),
            format!("ALTER TABLE {table} OWNER TO {user} (or run Tandem as the table's owner)"),
        ));
    }
    Ok(out)
}

/// Slot (and origin) name for one side of a sync: unique in the cluster, at most 63 bytes.
pub fn slot_name(db: &str, sync: &str, side: &str) -> String {
    let clean = |s: &str| {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect::<String>()
    };
    let full = format!("tandem_{}_{}_{}", clean(db), clean(sync), clean(side));
    if full.len() <= 63 {
        return full;
    }
    // Keep it unique when cut: a hash of the whole name at the end.
    let hash = full.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    format!("{}_{hash:016x}", &full[..46])
}

impl PgTable {
    /// Connects and reads the table's columns. `slot` names Tandem's slot, publication and
    /// replication origin for this table.
    pub fn open(url: &PgUrl, table: &str, key: &[String], sync: &str, side: &str) -> Result<PgTable, ConnectorError> {
        let rt = runtime()?;
        let (schema, name) = split_table(table);
        let qualified = format!("{}.{}", ident(&schema), ident(&name));
        let (client, cols) = rt.block_on(async {
            let client = connect(url).await?;
            let cols = columns(&client, &qualified).await.map_err(|e| pg_err(format_args!("reading {table}"), e))?;
            Ok::<_, ConnectorError>((client, cols))
        })?;
        if cols.is_empty() {
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!("table `{table}` does not exist in {}", url.label()),
            ));
        }
        for k in key {
            if !cols.iter().any(|c| &c.name == k) {
                return Err(ConnectorError::new(
                    ErrorKind::Schema,
                    format!("key column `{k}` does not exist in {table}"),
                ));
            }
        }
        let slot = slot_name(&url.dbname(), sync, side);
        let decode = Arc::new(Decode {
            names: cols.iter().map(|c| c.name.clone()).collect(),
            oids: cols.iter().map(|c| c.oid).collect(),
            key: key.iter().filter_map(|k| cols.iter().position(|c| &c.name == k)).collect(),
        });
        Ok(PgTable {
            rt,
            client: Arc::new(client),
            url: url.clone(),
            publication: slot.clone(),
            slot,
            schema,
            table: name,
            key: key.to_vec(),
            columns: cols,
            origin_ready: false,
            capture: None,
            read_ahead: None,
            snapshot: None,
            prefetched: None,
            decode,
            loading: false,
        })
    }

    fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.table))
    }

    fn label(&self) -> String {
        format!("{} table {}.{}", self.url.label(), self.schema, self.table)
    }

    fn column(&self, name: &str) -> Option<&PgColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    fn cast(&self, name: &str) -> String {
        self.column(name).map(|c| c.base_type.clone()).unwrap_or_else(|| "text".into())
    }

    /// The condition that column `c` still holds the value whose text is `text_expr` (json and
    /// xml have no equality operator: their text is compared, which is what Tandem read).
    /// Strings compare exactly: citext, or a case-insensitive (nondeterministic) collation,
    /// would call an edit that only changes case no change, and Tandem's write would undo it.
    fn unchanged(&self, c: &str, text_expr: &str) -> String {
        match self.cast(c).as_str() {
            "pg_catalog.json" | "pg_catalog.xml" => format!("t.{}::text IS NOT DISTINCT FROM {text_expr}", ident(c)),
            cast if matches!(cast, "pg_catalog.text" | "pg_catalog.varchar") || cast.ends_with(".citext") => {
                format!("t.{}::text COLLATE \"C\" IS NOT DISTINCT FROM {text_expr} COLLATE \"C\"", ident(c))
            }
            // char(n) compares without its padding, as it should; only the collation goes.
            "pg_catalog.bpchar" => {
                format!(
                    "t.{} COLLATE \"C\" IS NOT DISTINCT FROM {text_expr}::pg_catalog.bpchar COLLATE \"C\"",
                    ident(c)
                )
            }
            cast => format!("t.{} IS NOT DISTINCT FROM {text_expr}::{cast}", ident(c)),
        }
    }

    fn select_list(&self) -> String {
        self.columns.iter().map(|c| format!("t.{}::text", ident(&c.name))).collect::<Vec<_>>().join(", ")
    }

    fn row_from(&self, r: &tokio_postgres::Row) -> (Key, Row) {
        self.decode.row(r)
    }

    fn key_match(&self, first: usize) -> String {
        self.key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = ${}::text::{}", ident(k), first + i, self.cast(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    async fn slot_row(&self) -> Result<Option<(Option<String>, Option<String>)>, ConnectorError> {
        let row = self
            .client
            .query_opt(
                "SELECT wal_status, (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
                &[&self.slot],
            )
            .await
            .map_err(|e| pg_err("reading replication slots", e))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn ensure_origin(&self) -> Result<(), ConnectorError> {
        self.client
            .execute(
                "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
                &[&self.slot],
            )
            .await
            .map_err(|e| pg_err("creating replication origin", e))?;
        Ok(())
    }

    /// Tags this session's writes with Tandem's replication origin, so capture skips them.
    async fn tag_session(&self) -> Result<(), ConnectorError> {
        self.ensure_origin().await?;
        self.client
            .execute("SELECT pg_replication_origin_session_setup($1)", &[&self.slot])
            .await
            .map_err(|e| pg_err("tagging the session with Tandem's replication origin", e))?;
        Ok(())
    }

    /// The query reading the rows of `keys`, with its parameters (one text array per key column).
    fn read_query(&self, keys: &[Key]) -> (String, Vec<Vec<Option<String>>>) {
        let arrays: Vec<Vec<Option<String>>> =
            (0..self.key.len()).map(|i| keys.iter().map(|k| k.values().get(i).and_then(to_text)).collect()).collect();
        let unnest: Vec<String> = (1..=self.key.len()).map(|i| format!("${i}::text[]")).collect();
        let names: Vec<String> = (1..=self.key.len()).map(|i| format!("k{i}")).collect();
        let on: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = u.k{}::{}", ident(k), i + 1, self.cast(k)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} AS t JOIN unnest({}) AS u({}) ON {}",
            self.select_list(),
            self.qualified(),
            unnest.join(", "),
            names.join(", "),
            on.join(" AND ")
        );
        (sql, arrays)
    }

    /// The keyset query of one page of the initial load (`$n` after-key parameters if `after`).
    fn scan_sql(&self, after: bool, limit: usize) -> String {
        let order: Vec<String> = self.key.iter().map(|k| format!("t.{}", ident(k))).collect();
        let order = order.join(", ");
        let filter = if after {
            let marks: Vec<String> =
                self.key.iter().enumerate().map(|(i, c)| format!("${}::text::{}", i + 1, self.cast(c))).collect();
            format!("WHERE ({order}) > ({})", marks.join(", "))
        } else {
            String::new()
        };
        format!("SELECT {} FROM {} AS t {filter} ORDER BY {order} LIMIT {limit}", self.select_list(), self.qualified())
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn write_row_error(&self, e: &tokio_postgres::Error, values: Option<&Row>) -> Option<RowError> {
        let db = e.as_db_error()?;
        let class = &db.code().code()[..2];
        if class != "23" && class != "22" {
            return None;
        }
        let column = db.column().map(str::to_string);
        let value_type =
            column.as_ref().map(|c| values.and_then(|v| v.get(c.as_str())).map(Value::type_name).unwrap_or("null"));
        Some(RowError::new(column, value_type, format!("{} refused the write: {}", self.label(), db.message())))
    }

    fn check_fit(&self, values: &Row) -> Result<(), RowError> {
        for (col, v) in values {
            let Some(c) = self.column(col) else {
                return Err(RowError::new(
                    Some(col.to_string()),
                    Some(v.type_name()),
                    format!("column {}.{col} does not exist", self.table),
                ));
            };
            if !fits(c.oid, &c.type_name, v) {
                return Err(RowError::new(
                    Some(col.to_string()),
                    Some(v.type_name()),
                    format!("column {}.{col} is {}; a {} value does not fit", self.table, c.type_name, v.type_name()),
                ));
            }
            crate::check_length(&self.table, col, &c.type_name, v)?;
        }
        Ok(())
    }

    async fn write_one(&self, w: &Write) -> Result<WriteResult, tokio_postgres::Error> {
        let values = match w {
            Write::Insert { values, .. } | Write::Update { values, .. } => Some(values),
            Write::Delete { .. } => None,
        };
        if let Some(v) = values {
            if let Err(e) = self.check_fit(v) {
                return Ok(Err(e));
            }
        }
        let params = |vals: Vec<Option<String>>| vals;
        match w {
            Write::Insert { intent, values } => {
                let values: Row = values
                    .iter()
                    .filter(|(c, v)| !(v.is_null() && self.column(c).is_some_and(|x| x.not_null && x.has_default)))
                    .map(|(c, v)| (c.clone(), v.clone()))
                    .collect();
                let cols: Vec<String> = values.keys().map(|c| ident(c)).collect();
                let marks: Vec<String> =
                    values.keys().enumerate().map(|(i, c)| format!("${}::text::{}", i + 1, self.cast(c))).collect();
                let keys: Vec<String> = self.key.iter().map(|k| format!("{}::text", ident(k))).collect();
                let sql = if values.is_empty() {
                    format!("INSERT INTO {} DEFAULT VALUES RETURNING {}", self.qualified(), keys.join(", "))
                } else {
                    format!(
                        "INSERT INTO {} ({}) VALUES ({}) RETURNING {}",
                        self.qualified(),
                        cols.join(", "),
                        marks.join(", "),
                        keys.join(", ")
                    )
                };
                let p = params(values.values().map(to_text).collect());
                let refs: Vec<&(dyn ToSql + Sync)> = p.iter().map(|x| x as &(dyn ToSql + Sync)).collect();
                let row = self.client.query_one(&sql, &refs).await?;
                let key_values: Vec<Value> = self.returned_key(&row);
                if key_values.iter().any(Value::is_null) {
                    return Ok(Err(RowError::new(
                        None,
                        None,
                        format!(
                            "{} gave the new record no key: map a field to the key column or give it a default",
                            self.label()
                        ),
                    )));
                }
                let key = Key::from_values(&key_values);
                self.client
                    .execute(
                        "INSERT INTO _tandem.intents (id, tbl, pk) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET tbl = excluded.tbl, pk = excluded.pk",
                        &[intent, &self.qualified(), &key.as_str()],
                    )
                    .await?;
                Ok(Ok(key))
            }
            Write::Update { key, values, expect } => {
                let sets: Vec<String> = values
                    .keys()
                    .enumerate()
                    .map(|(i, c)| format!("{} = ${}::text::{}", ident(c), i + 1, self.cast(c)))
                    .collect();
                let n = values.len();
                let m = n + self.key.len();
                let mut wh = vec![self.key_match(n + 1)];
                wh.extend(expect.keys().enumerate().map(|(i, c)| self.unchanged(c, &format!("${}::text", m + i + 1))));
                let sql =
                    format!("UPDATE {} AS t SET {} WHERE {}", self.qualified(), sets.join(", "), wh.join(" AND "));
                let p = params(
                    values
                        .values()
                        .map(to_text)
                        .chain(key.values().iter().map(to_text))
                        .chain(expect.values().map(to_text))
                        .collect(),
                );
                let refs: Vec<&(dyn ToSql + Sync)> = p.iter().map(|x| x as &(dyn ToSql + Sync)).collect();
                let changed = self.client.execute(&sql, &refs).await?;
                if changed == 0 && !expect.is_empty() {
                    let kp = params(key.values().iter().map(to_text).collect());
                    let krefs: Vec<&(dyn ToSql + Sync)> = kp.iter().map(|x| x as &(dyn ToSql + Sync)).collect();
                    let sql = format!("SELECT 1 FROM {} AS t WHERE {}", self.qualified(), self.key_match(1));
                    if self.client.query_opt(&sql, &krefs).await?.is_some() {
                        return Ok(Err(RowError::stale()));
                    }
                }
                Ok(Ok(key.clone()))
            }
            Write::Delete { key } => {
                let sql = format!("DELETE FROM {} AS t WHERE {}", self.qualified(), self.key_match(1));
                let p = params(key.values().iter().map(to_text).collect());
                let refs: Vec<&(dyn ToSql + Sync)> = p.iter().map(|x| x as &(dyn ToSql + Sync)).collect();
                self.client.execute(&sql, &refs).await?;
                Ok(Ok(key.clone()))
            }
        }
    }

    /// One statement inserting rows of these columns from text arrays `$1…` (one per column),
    /// returning the keys as text. Ordered by the arrays' ordinality, so RETURNING gives the
    /// rows in insertion order.
    fn unnest_insert_sql<C: AsRef<str>>(&self, cols: &[C]) -> String {
        let unnest: Vec<String> = (1..=cols.len()).map(|i| format!("${i}::text[]")).collect();
        let names: Vec<String> = (1..=cols.len()).map(|i| format!("c{i}")).collect();
        let casts: Vec<String> =
            cols.iter().enumerate().map(|(i, c)| format!("u.c{}::{}", i + 1, self.cast(c.as_ref()))).collect();
        let keys: Vec<String> = self.key.iter().map(|k| format!("{}::text", ident(k))).collect();
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM unnest({}) WITH ORDINALITY AS u({}, ord) ORDER BY u.ord RETURNING {}",
            self.qualified(),
            cols.iter().map(|c| ident(c.as_ref())).collect::<Vec<_>>().join(", "),
            casts.join(", "),
            unnest.join(", "),
            names.join(", "),
            keys.join(", ")
        )
    }

    /// Inserts `rows` (inside the caller's transaction) with one statement per set of columns
    /// and returns the keys the server gave them, in row order; `Ok(Err)` when one got none.
    async fn insert_returning(&self, rows: &[Row]) -> Result<Result<Vec<Key>, RowError>, tokio_postgres::Error> {
        let mut shapes: std::collections::BTreeMap<Vec<&Name>, Vec<usize>> = Default::default();
        for (i, r) in rows.iter().enumerate() {
            shapes.entry(r.keys().collect()).or_default().push(i);
        }
        let keys_sql: Vec<String> = self.key.iter().map(|k| format!("{}::text", ident(k))).collect();
        let mut keys: Vec<Option<Key>> = vec![None; rows.len()];
        for (cols, idx) in shapes {
            let returned = if cols.is_empty() {
                let sql = format!("INSERT INTO {} DEFAULT VALUES RETURNING {}", self.qualified(), keys_sql.join(", "));
                let mut out = Vec::with_capacity(idx.len());
                for _ in &idx {
                    out.push(self.client.query_one(&sql, &[]).await?);
                }
                out
            } else {
                let arrays: Vec<Vec<Option<String>>> =
                    cols.iter().map(|c| idx.iter().map(|i| to_text(&rows[*i][*c])).collect()).collect();
                let sql = self.unnest_insert_sql(&cols);
                let refs: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(|x| x as &(dyn ToSql + Sync)).collect();
                self.client.query(&sql, &refs).await?
            };
            for (i, r) in idx.iter().zip(&returned) {
                let values = self.returned_key(r);
                if values.iter().any(Value::is_null) {
                    return Ok(Err(RowError::new(
                        None,
                        None,
                        format!(
                            "{} gave a new record no key: map a field to the key column or give it a default",
                            self.label()
                        ),
                    )));
                }
                keys[*i] = Some(Key::from_values(&values));
            }
        }
        Ok(keys.into_iter().collect::<Option<Vec<Key>>>().ok_or_else(|| {
            RowError::new(None, None, format!("{} did not return a key for every new record", self.label()))
        }))
    }

    /// The key values in the first columns of a row returned by `RETURNING key::text, …`.
    fn returned_key(&self, row: &tokio_postgres::Row) -> Vec<Value> {
        self.key
            .iter()
            .enumerate()
            .map(|(i, k)| {
                from_text(self.column(k).map(|c| c.oid).unwrap_or(25), row.get::<_, Option<String>>(i).as_deref())
            })
            .collect()
    }

    /// Groups of write indices that can go in one statement: inserts with the same columns,
    /// updates with the same columns and checks; at most 1,000 each. Writes whose values do
    /// not fit are left to the one-by-one path, which reports them.
    fn batches(&self, writes: &[Write]) -> Vec<Vec<usize>> {
        let mut groups: std::collections::BTreeMap<(u8, Vec<Name>, Vec<Name>), Vec<usize>> = Default::default();
        for (i, w) in writes.iter().enumerate() {
            let shape = match w {
                Write::Insert { values, .. } if self.check_fit(values).is_ok() => {
                    let cols = self.insert_values(values).into_keys().collect::<Vec<_>>();
                    if cols.is_empty() {
                        continue;
                    }
                    (0, cols, Vec::new())
                }
                Write::Update { values, expect, .. } if self.check_fit(values).is_ok() => {
                    (1, values.keys().cloned().collect(), expect.keys().cloned().collect())
                }
                _ => continue,
            };
            groups.entry(shape).or_default().push(i);
        }
        groups
            .into_values()
            .flat_map(|g| g.chunks(1000).map(<[usize]>::to_vec).collect::<Vec<_>>())
            .filter(|g| g.len() > 1)
            .collect()
    }

    /// The values an insert writes: a NULL for a NOT NULL column with a default lets the
    /// default apply.
    fn insert_values(&self, values: &Row) -> Row {
        values
            .iter()
            .filter(|(c, v)| !(v.is_null() && self.column(c).is_some_and(|x| x.not_null && x.has_default)))
            .map(|(c, v)| (c.clone(), v.clone()))
            .collect()
    }

    /// Inserts a group in one statement; `Ok(None)` asks the caller to roll it back and take
    /// the writes one by one.
    async fn insert_batch(
        &self,
        writes: &[Write],
        group: &[usize],
    ) -> Result<Option<Vec<Option<Key>>>, tokio_postgres::Error> {
        let rows: Vec<(&String, Row)> = group
            .iter()
            .map(|i| match &writes[*i] {
                Write::Insert { intent, values } => (intent, self.insert_values(values)),
                _ => unreachable!("insert batches hold inserts"),
            })
            .collect();
        let cols: Vec<Name> = rows[0].1.keys().cloned().collect();
        let arrays: Vec<Vec<Option<String>>> =
            cols.iter().map(|c| rows.iter().map(|(_, r)| to_text(&r[c])).collect()).collect();
        let sql = self.unnest_insert_sql(&cols);
        let returned = self.client.query_typed(&sql, &text_arrays(&arrays)).await?;
        let mut out = Vec::with_capacity(group.len());
        let mut ids = Vec::new();
        let mut pks = Vec::new();
        for ((intent, _), r) in rows.iter().zip(&returned) {
            let key_values: Vec<Value> = self.returned_key(r);
            if returned.len() != rows.len() || key_values.iter().any(Value::is_null) {
                out.push(None);
                continue;
            }
            let key = Key::from_values(&key_values);
            ids.push((*intent).clone());
            pks.push(key.as_str().to_string());
            out.push(Some(key));
        }
        if out.iter().any(Option::is_none) {
            // Roll back and leave the group to the one-by-one path (it reports the missing key).
            return Ok(None);
        }
        let tbl = vec![self.qualified(); ids.len()];
        self.client
            .query_typed(
                "INSERT INTO _tandem.intents (id, tbl, pk) SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
                 ON CONFLICT (id) DO UPDATE SET tbl = excluded.tbl, pk = excluded.pk",
                &text_arrays(&[ids, tbl, pks]),
            )
            .await?;
        Ok(Some(out))
    }

    /// A group of same-shaped inserts or updates in one statement (see [`PgTable::batches`]).
    async fn group_batch(
        &self,
        writes: &[Write],
        group: &[usize],
    ) -> Result<Option<Vec<Option<Key>>>, tokio_postgres::Error> {
        match &writes[group[0]] {
            Write::Insert { .. } => self.insert_batch(writes, group).await,
            _ => self.update_batch(writes, group).await,
        }
    }

    /// Begins a transaction and applies every group in it, all sent at once (one round trip
    /// for the lot, not one for each statement). `None` when a group did not go through: the
    /// transaction is rolled back, for the caller to go again group by group.
    async fn pipelined_groups(
        &self,
        writes: &[Write],
        groups: &[Vec<usize>],
    ) -> Result<Option<Vec<Vec<Option<Key>>>>, tokio_postgres::Error> {
        let begin = self.client.batch_execute("BEGIN");
        let runs = futures_util::future::join_all(groups.iter().map(|g| self.group_batch(writes, g)));
        let (begun, results) = futures_util::future::join(begin, runs).await;
        let mut out = Vec::with_capacity(groups.len());
        let mut failed = begun.err();
        for r in results {
            match r {
                Ok(Some(keys)) => out.push(keys),
                Ok(None) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if out.len() == groups.len() && failed.is_none() {
            return Ok(Some(out));
        }
        let rolled_back = self.client.batch_execute("ROLLBACK").await;
        match failed {
            // The connection failed: the batch goes again when it is back.
            Some(e) if e.as_db_error().is_none() => Err(e),
            // The server refused a statement (a row that does not fit, say): go carefully.
            _ => rolled_back.map(|()| None),
        }
    }

    /// Updates a group in one statement; records it did not update (`None`) go one by one.
    async fn update_batch(
        &self,
        writes: &[Write],
        group: &[usize],
    ) -> Result<Option<Vec<Option<Key>>>, tokio_postgres::Error> {
        let items: Vec<(&Key, &Row, &Row)> = group
            .iter()
            .map(|i| match &writes[*i] {
                Write::Update { key, values, expect } => (key, values, expect),
                _ => unreachable!("update batches hold updates"),
            })
            .collect();
        let vcols: Vec<Name> = items[0].1.keys().cloned().collect();
        let ecols: Vec<Name> = items[0].2.keys().cloned().collect();
        let mut arrays: Vec<Vec<Option<String>>> = Vec::new();
        for i in 0..self.key.len() {
            arrays.push(items.iter().map(|(k, _, _)| k.values().get(i).and_then(to_text)).collect());
        }
        for c in &vcols {
            arrays.push(items.iter().map(|(_, v, _)| to_text(&v[c])).collect());
        }
        for c in &ecols {
            arrays.push(items.iter().map(|(_, _, e)| to_text(&e[c])).collect());
        }
        let nk = self.key.len();
        let nv = vcols.len();
        let names: Vec<String> = (1..=arrays.len()).map(|i| format!("a{i}")).collect();
        let unnest: Vec<String> = (1..=arrays.len()).map(|i| format!("${i}::text[]")).collect();
        let sets: Vec<String> = vcols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = u.a{}::{}", ident(c), nk + i + 1, self.cast(c)))
            .collect();
        let mut wh: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = u.a{}::{}", ident(k), i + 1, self.cast(k)))
            .collect();
        wh.extend(ecols.iter().enumerate().map(|(i, c)| self.unchanged(c, &format!("u.a{}", nk + nv + i + 1))));
        let keys: Vec<String> = self.key.iter().map(|k| format!("t.{}::text", ident(k))).collect();
        let sql = format!(
            "UPDATE {} AS t SET {} FROM unnest({}) AS u({}) WHERE {} RETURNING {}",
            self.qualified(),
            sets.join(", "),
            unnest.join(", "),
            names.join(", "),
            wh.join(" AND "),
            keys.join(", ")
        );
        let returned = self.client.query_typed(&sql, &text_arrays(&arrays)).await?;
        let updated: std::collections::HashSet<Key> =
            returned.iter().map(|r| Key::from_values(&self.returned_key(r))).collect();
        // Records not updated (changed meanwhile, or gone) go through the one-by-one path,
        // which tells stale from deleted.
        Ok(Some(items.iter().map(|(k, _, _)| updated.contains(k).then(|| (*k).clone())).collect()))
    }

    fn stop_capture(&mut self) {
        if let Some(c) = self.capture.take() {
            self.rt.block_on(c.stop());
        }
    }
}

impl Drop for PgTable {
    fn drop(&mut self) {
        self.stop_capture();
    }
}

impl Connector for PgTable {
    fn as_send(&mut self) -> Option<&mut (dyn Connector + Send)> {
        Some(self)
    }

    fn capture_state(&mut self, cursor: Option<u64>) -> Result<CaptureState, ConnectorError> {
        let slot = self.block(self.slot_row())?;
        let published: bool = self
            .block(self.client.query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&self.publication, &self.schema, &self.table],
            ))
            .map_err(|e| pg_err("reading publications", e))?
            .is_some();
        Ok(match slot {
            None if published => CaptureState::Lost(format!(
                "replication slot {} does not exist (it was dropped, or the server was restored); recreate nothing by hand",
                self.slot
            )),
            None => CaptureState::Missing,
            Some(_) if !published => CaptureState::Lost(format!(
                "publication {} no longer includes the table, so changes were not published",
                self.publication
            )),
            Some((Some(status), _)) if status == "lost" => CaptureState::Lost(format!(
                "replication slot {} was invalidated (the WAL it needed was removed; see max_slot_wal_keep_size)",
                self.slot
            )),
            Some((_, Some(flushed))) => match (flushed.parse::<u64>(), cursor) {
                (Ok(f), Some(c)) if f > c => CaptureState::Lost(format!(
                    "replication slot {} was advanced to {} past Tandem's position {} by another consumer",
                    self.slot,
                    Lsn::from_u64(f),
                    Lsn::from_u64(c)
                )),
                _ => CaptureState::Ready,
            },
            Some(_) => CaptureState::Ready,
        })
    }

    fn capture_notes(&mut self, loading: bool) -> Result<Vec<CaptureNote>, ConnectorError> {
        let inserts: Option<bool> = self
            .block(
                self.client.query_opt("SELECT pubinsert FROM pg_publication WHERE pubname = $1", &[&self.publication]),
            )
            .map_err(|e| pg_err("reading publications", e))?
            .map(|r| r.get(0));
        let p = &self.publication;
        Ok(match inserts {
            Some(false) if loading => vec![CaptureNote {
                text: format!(
                    "publication {p} publishes no inserts while the initial load into {} is under way (rows inserted beside the load are found when it ends)",
                    self.label()
                ),
                fix: "`tandem run` finishes the load and publishes inserts again; `tandem uninstall` removes capture".into(),
                problem: false,
            }],
            Some(false) => vec![CaptureNote {
                text: format!("publication {p} does not publish inserts, so rows inserted into {} are missed", self.label()),
                fix: format!(
                    "`tandem uninstall`, then `tandem run`: capture is installed anew and both sides are read again, so the rows inserted meanwhile arrive (ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate') alone does not bring them)",
                    ident(p)
                ),
                problem: true,
            }],
            _ => Vec::new(),
        })
    }

    fn install(&mut self) -> Result<String, ConnectorError> {
        self.stop_capture();
        let q = self.qualified();
        let (slot, publication) = (self.slot.clone(), self.publication.clone());
        self.block(async {
            let c = &self.client;
            c.batch_execute(
                "CREATE SCHEMA IF NOT EXISTS _tandem;
                 CREATE TABLE IF NOT EXISTS _tandem.intents (id text PRIMARY KEY, tbl text NOT NULL, pk text NOT NULL);",
            )
            .await
            .map_err(|e| pg_err("creating schema _tandem", e))?;
            c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {p}; CREATE PUBLICATION {p} FOR TABLE {q};", p = ident(&publication)))
                .await
                .map_err(|e| pg_err(format_args!("creating publication {publication}"), e))?;
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await
                .map_err(|e| pg_err(format_args!("dropping the old slot {slot}"), e))?;
            c.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
                .await
                .map_err(|e| pg_err(format_args!("creating replication slot {slot}"), e))?;
            self.ensure_origin().await
        })?;
        Ok(format!(
            "installed change capture on {}: publication {publication}, logical replication slot {slot} (pgoutput), replication origin {slot}; remove with `tandem uninstall`",
            self.label()
        ))
    }

    fn identity(&mut self) -> Result<Option<String>, ConnectorError> {
        let row =
            self.block(self.client.query_one(
                "SELECT system_identifier::text || '/' || current_database() FROM pg_control_system()",
                &[],
            ))
            .map_err(|e| pg_err("reading the system identifier", e))?;
        Ok(Some(row.get(0)))
    }

    fn head(&mut self) -> Result<u64, ConnectorError> {
        match self.block(self.slot_row())? {
            Some((_, Some(lsn))) => {
                lsn.parse().map_err(|_| ConnectorError::new(ErrorKind::Internal, format!("unreadable LSN {lsn}")))
            }
            _ => Err(ConnectorError::new(ErrorKind::Schema, format!("replication slot {} does not exist", self.slot))),
        }
    }

    fn changes(&mut self, after: u64, limit: usize, wait: bool) -> Result<ChangePage, ConnectorError> {
        if self.capture.is_none() {
            let password =
                self.url.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
            let cfg = ReplicationConfig::new(
                self.url.host(),
                self.url.user(),
                password,
                self.url.dbname(),
                self.slot.clone(),
                self.publication.clone(),
            )
            .with_port(self.url.port())
            .with_tls(tls::replication(&self.url.tls))
            .with_start_lsn(Lsn::from_u64(after))
            .with_status_interval(STATUS_INTERVAL)
            // Lets `Capture::stop` see whether the last acknowledged position was reported.
            .with_feedback_observer(FeedbackObserver::new(|_| {}))
            .with_wakeup_interval(Duration::from_secs(1));
            let key = self.key.clone();
            self.capture = Some(self.rt.block_on(Capture::start(cfg, key))?);
        }
        let until: u64 = self
            .block(self.client.query_typed_one("SELECT (pg_current_wal_flush_lsn() - '0/0')::text", &[]))
            .map_err(|e| pg_err("reading the WAL position", e))?
            .get::<_, String>(0)
            .parse()
            .unwrap_or(0);
        let capture = self.capture.as_mut().expect("started above");
        let page =
            self.rt.block_on(capture.changes(after, limit, until, if wait { STREAM_WAIT } else { Duration::ZERO }));
        match &page {
            Err(_) => self.stop_capture(),
            Ok(p) if !p.touched.is_empty() => self.read_ahead = None,
            Ok(_) => {}
        }
        page
    }

    fn trim(&mut self, upto: u64) -> Result<(), ConnectorError> {
        if let Some(c) = self.capture.as_mut() {
            c.ack(upto);
        }
        Ok(())
    }

    fn last_change_at(&mut self, _key: &Key) -> Result<Option<i64>, ConnectorError> {
        Ok(None)
    }

    /// A logical slot can move the point the server decodes from on a restart (its
    /// `restart_lsn`, behind the confirmed position) only to a snapshot of running transactions
    /// the server logged, which it does every 15 s or at a checkpoint: a run that stops right
    /// after a load or a catch-up leaves all of it to be decoded again at the next start (1.7 s
    /// after a 1,000,000-row load). Creating a logical slot logs one first (PostgreSQL 10 and
    /// later, with the replication privilege Tandem has, where `pg_log_standby_snapshot()` and
    /// `CHECKPOINT` need more): a temporary one is made and dropped here, and the last cycle's
    /// acknowledgement passes the snapshot. Making it waits for running transactions; the
    /// snapshot is logged before that wait, which is cut short (an open transaction holds the
    /// restart point back anyway).
    fn prepare_stop(&mut self) -> Result<bool, ConnectorError> {
        if self.capture.is_none() {
            return Ok(false);
        }
        let made = self.block(self.client.batch_execute(
            "SET statement_timeout = '500ms';
             SELECT pg_create_logical_replication_slot('tandem_mark_' || pg_backend_pid(), 'pgoutput', true);
             SELECT pg_drop_replication_slot('tandem_mark_' || pg_backend_pid());",
        ));
        let reset = self.block(self.client.batch_execute("RESET statement_timeout"));
        if let Err(e) = made.and(reset) {
            tracing::debug!(slot = %self.slot, error = %e, "a snapshot of running transactions may not have been logged");
        }
        Ok(true)
    }

    fn prefetch(&mut self, keys: &[Key]) {
        if keys.is_empty() {
            return;
        }
        let (sql, arrays) = self.read_query(keys);
        let task = self.rt.spawn(read_rows(self.client.clone(), sql, arrays, self.decode.clone()));
        self.prefetched = Some((keys.to_vec(), task));
    }

    fn read(&mut self, keys: &[Key]) -> Result<Vec<Option<Row>>, ConnectorError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let label = self.label();
        let fail = |e| pg_err(format_args!("reading {label}"), e);
        let rows = match self.prefetched.take() {
            Some((k, task)) if k == keys => {
                self.block(task).unwrap_or_else(|e| panic!("the read task failed: {e}")).map_err(fail)?
            }
            _ => {
                let (sql, arrays) = self.read_query(keys);
                self.block(read_rows(self.client.clone(), sql, arrays, self.decode.clone())).map_err(fail)?
            }
        };
        let mut found: std::collections::HashMap<Key, Row> = rows.into_iter().collect();
        let mut out: Vec<Option<Row>> = Vec::with_capacity(keys.len());
        let mut seen: std::collections::HashMap<&Key, usize> = Default::default();
        for (i, k) in keys.iter().enumerate() {
            // A key asked for twice gets the same row twice.
            let row = match seen.get(k) {
                Some(j) => out[*j].clone(),
                None => found.remove(k),
            };
            seen.insert(k, i);
            out.push(row);
        }
        Ok(out)
    }

    fn scan(&mut self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Row)>, ConnectorError> {
        let label = self.label();
        let fail = |e| pg_err(format_args!("scanning {label}"), e);
        // The pages of a load are read in one snapshot (REPEATABLE READ, read only) on a
        // connection of its own, taken at the first page (or the first after a restart). The
        // slot was created before the load, so its position is at or before the snapshot:
        // changes made meanwhile are streamed and merged, none is missed or doubled.
        if after.is_none() || self.snapshot.is_none() {
            self.read_ahead = None;
            self.snapshot = None;
            let url = self.url.clone();
            let client = self.block(async move {
                let c = connect(&url).await?;
                c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(|e| pg_err("starting the load's snapshot", e))?;
                Ok::<_, ConnectorError>(c)
            })?;
            self.snapshot = Some(Arc::new(client));
        }
        let client = self.snapshot.clone().expect("opened above");
        let rows = match self.read_ahead.take() {
            Some((a, l, task)) if a.as_ref() == after && l == limit => {
                self.block(task).unwrap_or_else(|e| panic!("the read-ahead task failed: {e}"))
            }
            _ => self.block(scan_page(
                client.clone(),
                self.scan_sql(after.is_some(), limit),
                after.cloned(),
                self.decode.clone(),
            )),
        };
        let page = match rows {
            Ok(p) => p,
            Err(e) => {
                self.snapshot = None;
                return Err(fail(e));
            }
        };
        if page.len() == limit {
            let last = page.last().map(|(k, _)| k.clone());
            let sql = self.scan_sql(true, limit);
            let task = self.rt.spawn(scan_page(client, sql, last.clone(), self.decode.clone()));
            self.read_ahead = Some((last, limit, task));
        } else if let Some(c) = self.snapshot.take() {
            // The load of this side is done: let the snapshot go.
            let _ = self.block(c.batch_execute("COMMIT"));
        }
        Ok(page)
    }

    fn find(&mut self, column: &str, value: &Value, case_insensitive: bool) -> Result<Vec<(Key, Row)>, ConnectorError> {
        let order: Vec<String> = self.key.iter().map(|k| format!("t.{}", ident(k))).collect();
        let cond = if case_insensitive && matches!(value, Value::Text(_)) {
            format!("lower(t.{}::text) = lower($1)", ident(column))
        } else {
            format!("t.{} = $1::text::{}", ident(column), self.cast(column))
        };
        let sql = format!(
            "SELECT {} FROM {} AS t WHERE {cond} ORDER BY {}",
            self.select_list(),
            self.qualified(),
            order.join(", ")
        );
        let p = to_text(value);
        let rows = self
            .block(self.client.query(&sql, &[&p]))
            .map_err(|e| pg_err(format_args!("matching on {}", self.label()), e))?;
        Ok(rows.iter().map(|r| self.row_from(r)).collect())
    }

    fn apply(&mut self, writes: &[Write]) -> Result<Vec<WriteResult>, ConnectorError> {
        self.read_ahead = None;
        let label = self.label();
        let setup = !self.origin_ready;
        let out = self.block(async {
            let c = &self.client;
            if setup {
                self.tag_session().await?;
            }
            let groups = self.batches(writes);
            // Fast path: inserts and updates of the same shape go in one statement each.
            // Optimistically, BEGIN and every group's statement go to the server together, with
            // no savepoints; if one fails, all is rolled back and the groups go again with a
            // savepoint each, so a group that fails leaves the others applied.
            let mut done: Vec<Option<WriteResult>> = vec![None; writes.len()];
            let pipelined = match groups.is_empty() {
                true => None,
                false => self
                    .pipelined_groups(writes, &groups)
                    .await
                    .map_err(|e| pg_err(format_args!("applying to {label}"), e))?,
            };
            let careful = match pipelined {
                Some(results) => {
                    for (group, results) in groups.iter().zip(results) {
                        for (i, r) in group.iter().zip(results) {
                            done[*i] = r.map(Ok);
                        }
                    }
                    Vec::new()
                }
                None => {
                    c.batch_execute("BEGIN").await.map_err(|e| pg_err(format_args!("applying to {label}"), e))?;
                    groups
                }
            };
            for group in careful {
                c.batch_execute("SAVEPOINT tandem_batch")
                    .await
                    .map_err(|e| pg_err(format_args!("applying to {label}"), e))?;
                let result = self.group_batch(writes, &group).await;
                match result {
                    Ok(None) => {
                        c.batch_execute("ROLLBACK TO SAVEPOINT tandem_batch; RELEASE SAVEPOINT tandem_batch")
                            .await
                            .map_err(|e| pg_err(format_args!("applying to {label}"), e))?;
                    }
                    Ok(Some(results)) => {
                        for (i, r) in group.iter().zip(results) {
                            done[*i] = r.map(Ok);
                        }
                        c.batch_execute("RELEASE SAVEPOINT tandem_batch")
                            .await
                            .map_err(|e| pg_err(format_args!("applying to {label}"), e))?;
                    }
                    Err(e) if e.as_db_error().is_some() => {
                        c.batch_execute("ROLLBACK TO SAVEPOINT tandem_batch; RELEASE SAVEPOINT tandem_batch")
                            .await
                            .map_err(|e| pg_err(format_args!("applying to {label}"), e))?;
                    }
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                        return Err(pg_err(format_args!("applying to {label}"), e));
                    }
                }
            }
            let mut out = Vec::with_capacity(writes.len());
            for (w, done) in writes.iter().zip(done) {
                if let Some(r) = done {
                    out.push(r);
                    continue;
                }
                c.batch_execute("SAVEPOINT tandem_write")
                    .await
                    .map_err(|e| pg_err(format_args!("applying to {label}"), e))?;
                match self.write_one(w).await {
                    Ok(r) => {
                        if r.is_err() {
                            c.batch_execute("ROLLBACK TO SAVEPOINT tandem_write")
                                .await
                                .map_err(|e| pg_err("rolling back a write", e))?;
                        }
                        out.push(r);
                    }
                    Err(e) => {
                        let values = match w {
                            Write::Insert { values, .. } | Write::Update { values, .. } => Some(values),
                            Write::Delete { .. } => None,
                        };
                        match self.write_row_error(&e, values) {
                            Some(row_err) => {
                                c.batch_execute("ROLLBACK TO SAVEPOINT tandem_write")
                                    .await
                                    .map_err(|e| pg_err("rolling back a write", e))?;
                                out.push(Err(row_err));
                            }
                            None => {
                                let _ = c.batch_execute("ROLLBACK").await;
                                return Err(pg_err(format_args!("applying to {label}"), e));
                            }
                        }
                    }
                }
                c.batch_execute("RELEASE SAVEPOINT tandem_write")
                    .await
                    .map_err(|e| pg_err(format_args!("applying to {label}"), e))?;
            }
            c.batch_execute("COMMIT").await.map_err(|e| pg_err(format_args!("committing to {label}"), e))?;
            Ok::<_, ConnectorError>(out)
        });
        match out {
            Ok(out) => {
                self.origin_ready = true;
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }

    fn created(&mut self, intent: &str) -> Result<Option<Key>, ConnectorError> {
        let q = self.qualified();
        let row = self
            .block(async {
                if !has_tandem_table(&self.client, "intents").await? {
                    return Ok(None);
                }
                self.client.query_opt("SELECT pk FROM _tandem.intents WHERE id = $1 AND tbl = $2", &[&intent, &q]).await
            })
            .map_err(|e| pg_err("reading intents", e))?;
        Ok(row.and_then(|r| Key::parse(&r.get::<_, String>(0))))
    }

    fn forget_intents(&mut self, ids: &[String]) -> Result<(), ConnectorError> {
        let ids = ids.to_vec();
        self.block(self.client.execute("DELETE FROM _tandem.intents WHERE id = ANY($1)", &[&ids]))
            .map_err(|e| pg_err("forgetting intents", e))?;
        Ok(())
    }

    fn intent_ids(&mut self) -> Result<Vec<String>, ConnectorError> {
        let q = self.qualified();
        let rows = self
            .block(async {
                if !has_tandem_table(&self.client, "intents").await? {
                    return Ok(Vec::new());
                }
                self.client.query("SELECT id FROM _tandem.intents WHERE tbl = $1", &[&q]).await
            })
            .map_err(|e| pg_err("reading intents", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn check_write(&mut self, w: &Write) -> Result<(), RowError> {
        if let Some(values) = crate::written(w) {
            self.check_fit(values)?;
        }
        let cols = self.columns.iter().map(|c| (c.name.as_str(), c.not_null, c.has_default));
        crate::check_required(&self.table, cols, w)
    }

    fn backlog(&mut self, _after: u64) -> Result<Option<u64>, ConnectorError> {
        Ok(None)
    }

    fn row_estimate(&mut self) -> Result<Option<u64>, ConnectorError> {
        let q = self.qualified();
        let row = self
            .block(self.client.query_one("SELECT reltuples::int8 FROM pg_class WHERE oid = to_regclass($1)", &[&q]))
            .map_err(|e| pg_err("estimating rows", e))?;
        let n: i64 = row.get(0);
        Ok((n >= 0).then_some(n as u64))
    }

    fn key_of(&self, values: &Row) -> Option<Key> {
        let vals: Option<Vec<Value>> =
            self.key.iter().map(|k| key_value(self.column(k)?.oid, values.get(k.as_str())?)).collect();
        Some(Key::from_values(&vals?))
    }

    /// PostgreSQL 15 cannot leave a replication origin's changes out of a `pgoutput` stream,
    /// so the slot would decode and send every page of a bulk load back to Tandem (costing the
    /// server more than the COPY itself). During the load the publication publishes no inserts;
    /// at its end the table's rows whose `xmin` is not a page's (inserted by others meanwhile,
    /// or changed since) are reported, after every transaction that may have started under the
    /// old publication has ended.
    fn bulk_target(&mut self, phase: BulkTarget) -> Result<Vec<Key>, ConnectorError> {
        let (publication, q) = (ident(&self.publication), self.qualified());
        let label = self.label();
        match phase {
            BulkTarget::Begin => {
                self.block(self.client.batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS _tandem;
                     CREATE TABLE IF NOT EXISTS _tandem.loads (tbl text NOT NULL);
                     ALTER PUBLICATION {publication} SET (publish = 'update, delete, truncate');"
                )))
                .map_err(|e| {
                    pg_err(format_args!("leaving inserts out of publication {publication} for the load"), e)
                })?;
                self.loading = true;
                Ok(Vec::new())
            }
            BulkTarget::End => {
                let keys = self.block(async {
                    let c = &self.client;
                    c.batch_execute(&format!(
                        "ALTER PUBLICATION {publication} SET (publish = 'insert, update, delete, truncate')"
                    ))
                    .await
                    .map_err(|e| pg_err(format_args!("publishing inserts again in {publication}"), e))?;
                    wait_for_older_transactions(c, &label).await?;
                    let key_list: Vec<String> = self.key.iter().map(|k| format!("t.{}::text", ident(k))).collect();
                    let rows = c
                        .query(
                            &format!(
                                "SELECT {} FROM {q} AS t WHERE NOT EXISTS
                                   (SELECT 1 FROM _tandem.loads AS l WHERE l.tbl = $1 AND l.xmin = t.xmin)",
                                key_list.join(", ")
                            ),
                            &[&q],
                        )
                        .await
                        .map_err(|e| {
                            pg_err(format_args!("finding the records of {label} the load did not write"), e)
                        })?;
                    Ok::<_, ConnectorError>(rows.iter().map(|r| self.decode.key_only(r)).collect())
                })?;
                self.loading = false;
                Ok(keys)
            }
            BulkTarget::Forget => {
                self.block(forget_rows_of(&self.client, "loads", &q))
                    .map_err(|e| pg_err("forgetting the load's pages", e))?;
                Ok(Vec::new())
            }
        }
    }

    fn bulk_insert(
        &mut self,
        batch: &str,
        rows: Vec<Row>,
        before_commit: &mut dyn FnMut(&[Key]) -> bool,
    ) -> Result<Result<(), RowError>, ConnectorError> {
        for r in &rows {
            if let Err(e) = self.check_fit(r) {
                return Ok(Err(e));
            }
        }
        self.read_ahead = None;
        let label = self.label();
        let fail = |e| pg_err(format_args!("copying into {label}"), e);
        if !self.origin_ready {
            self.block(self.tag_session())?;
            self.origin_ready = true;
        }
        self.block(self.client.batch_execute("BEGIN")).map_err(fail)?;
        let known: Option<Vec<Key>> = rows.iter().map(|r| self.key_of(r)).collect();
        let (written, go_on) = match known {
            // Keys known: the rows stream to the server by COPY on the I/O thread while the
            // caller makes its state durable; the transaction commits only after that.
            Some(keys) => {
                let copy = self.rt.spawn(copy_rows(self.client.clone(), self.qualified(), rows));
                let go_on = before_commit(&keys);
                (self.block(copy).unwrap_or_else(|e| panic!("the COPY task failed: {e}")), go_on)
            }
            // Keys the server generates: insert, learn them, then let the caller commit.
            None => match self.block(self.insert_returning(&rows)) {
                Ok(Ok(keys)) => (Ok(()), before_commit(&keys)),
                Ok(Err(refused)) => {
                    let _ = self.block(self.client.batch_execute("ROLLBACK"));
                    return Ok(Err(refused));
                }
                Err(e) => (Err(e), false),
            },
        };
        let q = self.qualified();
        self.block(async {
            let c = &self.client;
            let mut written = written;
            if written.is_ok() && go_on {
                let marker = if self.loading {
                    "WITH page AS (INSERT INTO _tandem.loads (tbl) VALUES ($2))
                     INSERT INTO _tandem.intents (id, tbl, pk) VALUES ($1, $2, '[]') ON CONFLICT (id) DO NOTHING"
                } else {
                    "INSERT INTO _tandem.intents (id, tbl, pk) VALUES ($1, $2, '[]') ON CONFLICT (id) DO NOTHING"
                };
                written = c.execute(marker, &[&batch, &q]).await.map(|_| ());
            }
            match written {
                Ok(()) if go_on => {
                    c.batch_execute("COMMIT").await.map_err(|e| pg_err(format_args!("committing to {label}"), e))?;
                    Ok(Ok(()))
                }
                Ok(()) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(ConnectorError::new(ErrorKind::Unavailable, format!("copy into {label} abandoned")))
                }
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    match self.write_row_error(&e, None) {
                        Some(refused) => Ok(Err(refused)),
                        None => Err(fail(e)),
                    }
                }
            }
        })
    }

    fn uninstall(&mut self) -> Result<String, ConnectorError> {
        self.stop_capture();
        let (slot, publication, q) = (self.slot.clone(), self.publication.clone(), self.qualified());
        self.block(async {
            let c = &self.client;
            c.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
            c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&publication))).await?;
            c.execute(
                "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1",
                &[&slot],
            )
            .await?;
            forget_rows_of(c, "intents", &q).await?;
            forget_rows_of(c, "loads", &q).await
        })
        .map_err(|e| pg_err("removing capture", e))?;
        Ok(format!("removed slot {slot}, publication {publication} and origin {slot} from {}", self.label()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops a test's database (with Tandem's slots and origins in it) however the test ends.
    struct Cleanup(PgUrl, String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let (url, db) = (self.0.clone(), self.1.clone());
            if let Ok(rt) = runtime() {
                let _ = rt.block_on(async move {
                    let c = connect(&url).await?;
                    // One statement a call: DROP DATABASE refuses the implicit transaction of many.
                    for sql in [
                        format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}'"),
                        format!("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE 'tandem_{db}_%'"),
                        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                    ] {
                        c.batch_execute(&sql).await.map_err(|e| pg_err("dropping", e))?;
                    }
                    Ok::<_, ConnectorError>(())
                });
            }
        }
    }

    /// A database of its own on the machine's PostgreSQL (scripts/pg-setup): its URL, and what
    /// drops it.
    fn fresh_db(rt: &tokio::runtime::Runtime, tag: &str) -> (PgUrl, Cleanup) {
        let db = format!("tandem_t_{tag}_{}", std::process::id());
        let admin_url = PgUrl::parse("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable").unwrap();
        let admin = rt.block_on(connect(&admin_url)).unwrap();
        rt.block_on(admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))).unwrap();
        rt.block_on(admin.batch_execute(&format!("CREATE DATABASE {db}"))).unwrap();
        let url = PgUrl::parse(&format!("postgres://postgres@127.0.0.1:5432/{db}?sslmode=disable")).unwrap();
        (url, Cleanup(admin_url, db))
    }

    #[test]
    fn an_initial_load_reads_one_snapshot() {
        let rt = runtime().unwrap();
        let run = |c: &tokio_postgres::Client, sql: String| rt.block_on(c.batch_execute(&sql)).unwrap();
        let (url, _cleanup) = fresh_db(&rt, "snapshot");
        let other = rt.block_on(connect(&url)).unwrap();
        run(&other, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'original' FROM generate_series(1, 10) g".into());
        let mut t = PgTable::open(&url, "t", &["id".to_string()], "s", "left").unwrap();
        let first = t.scan(None, 5).unwrap();
        assert_eq!(first.len(), 5);
        // Written after the load began: not in the load's pages (the slot brings them).
        run(&other, "UPDATE t SET v = 'changed' WHERE id = 7; INSERT INTO t VALUES (11, 'new')".into());
        let second = t.scan(first.last().map(|(k, _)| k), 5).unwrap();
        assert_eq!(second[1].1.get("v"), Some(&Value::Text("original".into())), "read outside the snapshot");
        let third = t.scan(second.last().map(|(k, _)| k), 5).unwrap();
        assert!(third.is_empty(), "a row inserted after the snapshot was read: {third:?}");
        assert_eq!(t.scan(None, 20).unwrap().len(), 11, "a new load sees the present");
        drop((t, other));
    }

    /// An update is guarded by the values the engine read, compared exactly: a user's edit that
    /// only changes case passes neither a citext column nor one with a case-insensitive
    /// (nondeterministic) collation.
    #[test]
    fn an_update_guard_sees_an_edit_the_collation_calls_equal() {
        let rt = runtime().unwrap();
        let (url, _cleanup) = fresh_db(&rt, "guard");
        let other = rt.block_on(connect(&url)).unwrap();
        rt.block_on(other.batch_execute(
            "CREATE EXTENSION IF NOT EXISTS citext;
             CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE t (id int PRIMARY KEY, e citext, v text COLLATE ci, w varchar(10), f char(4) COLLATE ci);
             INSERT INTO t VALUES (1, 'ANN@X.IO', 'x', 'x', 'a'), (2, 'bo@x.io', 'ABC', 'y', 'b'), (3, 'cy@x.io', 'z', 'z', 'c'),
               (4, 'di@x.io', 'q', 'q', 'DE'), (5, 'e@x.io', 'e', 'e', 'ab')",
        ))
        .unwrap();
        let mut t = PgTable::open(&url, "t", &["id".to_string()], "s", "left").unwrap();
        let text = |s: &str| Value::Text(s.into());
        let update = |id: i64, c: &str, new: &str, was: &str| Write::Update {
            key: Key::from_values(&[Value::Int(id)]),
            values: [(c.into(), text(new))].into_iter().collect(),
            expect: [(c.into(), text(was))].into_iter().collect(),
        };
        let stale = |r: &WriteResult| r.as_ref().is_err_and(|e| e.stale);
        // The engine read the lower-case values; users changed their case since.
        let out = t.apply(&[update(1, "e", "new@x.io", "ann@x.io")]).unwrap();
        assert!(stale(&out[0]), "{out:?}");
        // Two of one shape (one statement for both), and two alone.
        let out = t
            .apply(&[
                update(1, "e", "new@x.io", "ann@x.io"),
                update(4, "e", "dee@x.io", "di@x.io"),
                update(2, "v", "new", "abc"),
                update(3, "w", "new", "z"),
            ])
            .unwrap();
        assert!(stale(&out[0]) && out[1].is_ok() && stale(&out[2]) && out[3].is_ok(), "{out:?}");
        // char(n): a case-only edit is one; padding is not (the engine reads the padded text).
        let out = t.apply(&[update(4, "f", "x", "de"), update(5, "f", "y", "ab  ")]).unwrap();
        assert!(stale(&out[0]) && out[1].is_ok(), "{out:?}");
        let rows: Vec<String> = rt
            .block_on(other.query("SELECT id || '|' || e || '|' || v || '|' || w || '|' || f FROM t ORDER BY id", &[]))
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            rows,
            ["1|ANN@X.IO|x|x|a", "2|bo@x.io|ABC|y|b", "3|cy@x.io|z|new|c", "4|dee@x.io|q|q|DE", "5|e@x.io|e|e|y"]
        );
        drop((t, other));
    }
}
