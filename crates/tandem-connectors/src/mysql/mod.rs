//! MariaDB/MySQL tables: capture from the row-based binary log, batched apply in transactions
//! marked as Tandem's own by a row of `_tandem_writes`, intents and batch markers in
//! `_tandem_intents` (both tables in the synced table's database).

mod binlog;
mod zone;
pub use zone::Zone;
pub(crate) mod codec;

use crate::commits::STREAM_WAIT;
use crate::postgres::tls::{split_url, SslMode};
use binlog::{pos, split, Capture, Target, WRITES_TABLE};

/// Where Tandem remembers the records it creates until their links are durable.
const INTENTS_TABLE: &str = "_tandem_intents";
use codec::{decode, ident, key_value, literal, load_field, writable, Kind};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tandem_core::connector::{
    CaptureState, ChangePage, Connector, ConnectorError, ErrorKind, RowError, Write, WriteResult,
};
use tandem_core::value::{Key, Name, Row, Value};

/// Connection settings parsed from a `mysql://` (or `mariadb://`) URL; the password is never
/// printed.
#[derive(Clone)]
pub struct MyUrl {
    opts: Opts,
    /// The zone the server's `DATETIME` values mean (`datetime_zone`), if anyone said.
    datetime_zone: Option<zone::Zone>,
}

impl std::fmt::Debug for MyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

impl MyUrl {
    /// Says which zone the server's `DATETIME` values mean: they are then read as instants
    /// (in UTC, as PostgreSQL shows a `timestamptz`) and instants are written in that zone.
    pub fn with_datetime_zone(mut self, zone: Zone) -> MyUrl {
        self.datetime_zone = Some(zone);
        self
    }

    /// Parses a URL: `sslmode` (disable, prefer, require, verify-ca, verify-full) and
    /// `sslrootcert` as for PostgreSQL. The error never repeats the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<MyUrl, String> {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
        let (rest, tls) = split_url(&url)?;
        let opts = Opts::from_url(&rest).map_err(|e| format!("not a valid mysql:// URL ({e})"))?;
        if opts.db_name().is_none_or(str::is_empty) {
            return Err("the URL names no database: write mysql://user:${MYSQL_PASSWORD}@host:3306/database".into());
        }
        let ssl = match tls.mode {
            SslMode::Disable | SslMode::Prefer => None,
            mode => {
                let mut s = SslOpts::default();
                if let Some(root) = &tls.root_cert {
                    s = s.with_root_certs(vec![root.clone().into()]);
                }
                Some(
                    s.with_danger_accept_invalid_certs(mode == SslMode::Require)
                        .with_danger_skip_domain_validation(mode != SslMode::VerifyFull),
                )
            }
        };
        let opts = OptsBuilder::from_opts(opts)
            .ssl_opts(ssl)
            .client_found_rows(true)
            .prefer_socket(false)
            .init(vec![
                // Strict: a value that does not fit is refused, never cut or zeroed. TIMESTAMP
                // columns are read and written in UTC.
                "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', time_zone = '+00:00', NAMES utf8mb4",
            ]);
        Ok(MyUrl { opts: opts.into(), datetime_zone: None })
    }

    fn db(&self) -> String {
        self.opts.db_name().unwrap_or_default().to_string()
    }

    /// `host:port/db`, for messages.
    pub fn label(&self) -> String {
        format!("{}:{}/{}", self.opts.ip_or_hostname(), self.opts.tcp_port(), self.db())
    }
}

/// One column of a table.
#[derive(Clone, Debug)]
pub struct MyColumn {
    /// Name.
    pub name: Name,
    /// `DATA_TYPE` (`int`, `varchar`, …).
    pub data_type: String,
    /// `COLUMN_TYPE` (`int(10) unsigned`, `enum('a','b')`, …).
    pub column_type: String,
    /// NOT NULL.
    pub not_null: bool,
    /// Has a default or is AUTO_INCREMENT (may be left out of an insert).
    pub has_default: bool,
    /// AUTO_INCREMENT.
    pub auto_increment: bool,
    /// `ON UPDATE CURRENT_TIMESTAMP`: the server sets it on every update that leaves it out.
    pub on_update: bool,
    /// Position in the primary key (1-based), 0 when not part of it.
    pub pk: i64,
    /// `CHARACTER_SET_NAME` of a character column (text, ENUM, SET, JSON).
    pub charset: Option<String>,
    kind: Kind,
}

fn my_err(what: impl std::fmt::Display, e: mysql_async::Error) -> ConnectorError {
    let kind = match &e {
        mysql_async::Error::Server(s) if matches!(s.code, 1044 | 1045 | 1049 | 1142 | 1146 | 1054 | 1227) => {
            ErrorKind::Schema
        }
        mysql_async::Error::Server(_) | mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Internal,
    };
    ConnectorError { kind, message: format!("{what}: {e}"), source: Some(Box::new(e)) }
}

/// Server errors that refuse one row's values (the rest of the batch can still go).
fn row_refusal(e: &mysql_async::Error) -> Option<&mysql_async::ServerError> {
    match e {
        // Duplicate key, NOT NULL, FK, check, data too long, out of range, bad value/date,
        // truncated, bad JSON, bad enum value.
        mysql_async::Error::Server(s)
            if matches!(
                s.code,
                1048 | 1062
                    | 1169
                    | 1216
                    | 1217
                    | 1264
                    | 1265
                    | 1292
                    | 1366
                    | 1406
                    | 1451
                    | 1452
                    | 3819
                    | 4025
                    | 4078
                    | 1411
                    | 1367
                    | 3140
            ) =>
        {
            Some(s)
        }
        _ => None,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ConnectorError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| ConnectorError::new(ErrorKind::Internal, format!("starting the I/O runtime: {e}")))
}

/// name, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA, position in the primary key,
/// CHARACTER_SET_NAME.
type ColumnRow = (String, String, String, String, Option<String>, String, Option<i64>, Option<String>);

async fn columns(conn: &mut Conn, db: &str, table: &str) -> Result<Vec<MyColumn>, mysql_async::Error> {
    let rows: Vec<ColumnRow> = conn
        .exec(
            "SELECT c.COLUMN_NAME, c.DATA_TYPE, c.COLUMN_TYPE, c.IS_NULLABLE, c.COLUMN_DEFAULT, c.EXTRA,
               (SELECT k.ORDINAL_POSITION FROM information_schema.KEY_COLUMN_USAGE k WHERE k.TABLE_SCHEMA = c.TABLE_SCHEMA
                  AND k.TABLE_NAME = c.TABLE_NAME AND k.COLUMN_NAME = c.COLUMN_NAME AND k.CONSTRAINT_NAME = 'PRIMARY'),
               c.CHARACTER_SET_NAME
             FROM information_schema.COLUMNS c WHERE c.TABLE_SCHEMA = ? AND c.TABLE_NAME = ? ORDER BY c.ORDINAL_POSITION",
            (db, table),
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|(name, data_type, column_type, nullable, default, extra, pk, charset)| {
            let auto_increment = extra.contains("auto_increment");
            let on_update = extra.to_ascii_lowercase().contains("on update");
            MyColumn {
                kind: Kind::of(&data_type, &column_type),
                name: name.into(),
                data_type,
                column_type,
                not_null: nullable == "NO",
                has_default: auto_increment || default.is_some(),
                auto_increment,
                on_update,
                pk: pk.unwrap_or(0),
                // A name from the server, spliced into guards (see `MyTable::unchanged`).
                charset: charset.filter(|c| c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')),
            }
        })
        .collect())
}

/// The columns of `table` (for the config check).
pub fn table_columns(url: &MyUrl, table: &str) -> Result<Vec<MyColumn>, ConnectorError> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut conn =
            Conn::new(url.opts.clone()).await.map_err(|e| my_err(format_args!("connecting to {}", url.label()), e))?;
        let cols =
            columns(&mut conn, &url.db(), table).await.map_err(|e| my_err(format_args!("reading {table}"), e))?;
        let _ = conn.disconnect().await;
        Ok(cols)
    })
}

/// What the server lacks for Tandem (setting or grant, and how to fix it); empty when ready.
pub fn missing_requirements(url: &MyUrl) -> Result<Vec<(String, String)>, ConnectorError> {
    let rt = runtime()?;
    rt.block_on(async {
        let fail = |e| my_err(format_args!("checking {}", url.label()), e);
        let mut conn = Conn::new(url.opts.clone()).await.map_err(fail)?;
        let mut missing = Vec::new();
        let (log_bin, format, image): (i64, String, String) = conn
            .query_first("SELECT @@log_bin, @@global.binlog_format, @@global.binlog_row_image")
            .await
            .map_err(fail)?
            .unwrap_or((0, String::new(), String::new()));
        if log_bin != 1 {
            missing.push((
                "the binary log is off".into(),
                "set log_bin = ON (and server_id) in the server's config, then restart it (scripts/mariadb-setup does this for a test server)".into(),
            ));
        }
        if format != "ROW" {
            missing.push((
                format!("binlog_format is {format}; Tandem reads row changes"),
                "SET GLOBAL binlog_format = 'ROW', and put binlog_format = ROW in the server's config".into(),
            ));
        }
        if image == "MINIMAL" {
            missing.push((
                "binlog_row_image is MINIMAL".into(),
                "SET GLOBAL binlog_row_image = 'FULL' (or NOBLOB)".into(),
            ));
        }
        let grants: Vec<String> = conn.query("SHOW GRANTS").await.map_err(fail)?;
        let all = grants.join("\n").to_ascii_uppercase();
        let has = |p: &str| all.contains("ALL PRIVILEGES ON *.*") || all.contains(p);
        if !has("REPLICATION SLAVE") && !has("REPLICATION REPLICA") {
            missing.push(("the user may not read the binary log".into(), "GRANT REPLICATION SLAVE ON *.* TO the sync user".into()));
        }
        if !has("REPLICATION CLIENT") && !has("BINLOG MONITOR") && !has("SUPER") {
            missing.push((
                "the user may not see binary log positions".into(),
                "GRANT BINLOG MONITOR ON *.* (MariaDB; REPLICATION CLIENT on MySQL) TO the sync user".into(),
            ));
        }
        let _ = conn.disconnect().await;
        Ok(missing)
    })
}

/// What the server could do better for Tandem without anything failing (advice for `tandem
/// check`); empty when nothing.
pub fn advice(url: &MyUrl) -> Result<Vec<String>, ConnectorError> {
    let rt = runtime()?;
    rt.block_on(async {
        let fail = |e| my_err(format_args!("checking {}", url.label()), e);
        let mut conn = Conn::new(url.opts.clone()).await.map_err(fail)?;
        let mut notes = Vec::new();
        let local_infile: Option<i64> = conn.query_first("SELECT @@global.local_infile").await.map_err(fail)?;
        if local_infile == Some(0) {
            notes.push(
                "local_infile is OFF: a first sync into an empty table copies it with multi-row INSERTs instead of \
                 LOAD DATA LOCAL INFILE, several times slower; SET GLOBAL local_infile = ON (and local_infile = ON \
                 in the server's config) to let it"
                    .to_string(),
            );
        }
        let _ = conn.disconnect().await;
        Ok(notes)
    })
}

/// One table of one MariaDB/MySQL database.
pub struct MyTable {
    rt: tokio::runtime::Runtime,
    conn: Option<Conn>,
    url: MyUrl,
    table: String,
    key: Vec<String>,
    columns: Vec<MyColumn>,
    /// Names Tandem's row in `_tandem_writes` and the replica id of its binlog stream.
    name: String,
    capture: Option<Capture>,
    /// The spacing of AUTO_INCREMENT ids when one multi-row insert gets consecutive ids
    /// (`innodb_autoinc_lock_mode` 0 or 1); `None` when it may not (mode 2).
    id_step: Option<i64>,
    /// Mapped columns the server would stamp on update (see [`MyTable::keep_mapped_stamps`]).
    pinned: Vec<Name>,
    /// The connection holding the consistent-read snapshot of a running initial load.
    snapshot: Option<Conn>,
    /// When the position label (with its GTID) was last made, see [`LABEL_EVERY`].
    labelled: Option<Instant>,
    /// Bulk loads go through `LOAD DATA LOCAL INFILE` (off once the server refused it).
    load_local: bool,
}

/// Records a bulk page's marker (id, table) in the page's transaction.
const BATCH_MARKER: &str =
    "INSERT INTO _tandem_intents (id, tbl, pk) VALUES (?, ?, '[]') ON DUPLICATE KEY UPDATE pk = pk";

/// The columns an update sets and the ones it checks (see [`MyTable::update_shape`]).
type Shape = (Vec<Name>, Vec<Name>);

/// Why a `LOAD DATA` of a page wrote nothing.
enum Load {
    /// The server refused or adjusted rows of the page.
    Refused(String),
    /// The server does not take `LOAD DATA LOCAL INFILE`.
    Disabled(String),
}

/// How often the position Tandem has read up to gets a new label for `tandem status`. MariaDB
/// finds the GTID of a binlog offset by reading the binlog file up to it (a quarter second at
/// 700 MB): done for every page of changes, that read made the sync's latency grow with the
/// binlog.
const LABEL_EVERY: Duration = Duration::from_secs(30);

/// A replica server id for a stream name, away from the small ids servers use.
fn server_id(name: &str) -> u32 {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    0x4000_0000 | (h & 0x3fff_ffff)
}

impl MyTable {
    /// Connects and reads the table's columns.
    pub fn open(url: &MyUrl, table: &str, key: &[String], sync: &str, side: &str) -> Result<MyTable, ConnectorError> {
        let rt = runtime()?;
        let db = url.db();
        let (conn, cols, id_step) = rt.block_on(async {
            let mut conn = Conn::new(url.opts.clone())
                .await
                .map_err(|e| my_err(format_args!("connecting to {}", url.label()), e))?;
            let cols = columns(&mut conn, &db, table).await.map_err(|e| my_err(format_args!("reading {table}"), e))?;
            let ids: Option<(i64, i64)> = conn
                .query_first("SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment")
                .await
                .map_err(|e| my_err(format_args!("reading the settings of {}", url.label()), e))?;
            let id_step = ids.filter(|(mode, _)| *mode < 2).map(|(_, step)| step);
            Ok::<_, ConnectorError>((conn, cols, id_step))
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
        Ok(MyTable {
            rt,
            conn: Some(conn),
            url: url.clone(),
            table: table.to_string(),
            key: key.to_vec(),
            columns: cols,
            name: format!("{sync}:{side}:{table}"),
            capture: None,
            id_step,
            pinned: Vec::new(),
            snapshot: None,
            labelled: None,
            load_local: true,
        })
    }

    /// Says which columns the sync maps. A mapped column the server stamps on every update
    /// (`ON UPDATE CURRENT_TIMESTAMP`) keeps its value in Tandem's updates unless Tandem writes
    /// it: otherwise each write of Tandem's would change a synced value behind its back.
    pub fn keep_mapped_stamps(&mut self, mapped: &[String]) {
        self.pinned = self
            .columns
            .iter()
            .filter(|c| c.on_update && mapped.iter().any(|m| c.name == *m))
            .map(|c| c.name.clone())
            .collect();
    }

    fn label(&self) -> String {
        format!("{} table {}", self.url.label(), self.table)
    }

    fn qualified(&self) -> String {
        ident(&self.table)
    }

    fn column(&self, name: &str) -> Option<&MyColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The connection, opened again if a failure dropped it.
    fn conn(&mut self) -> Result<&mut Conn, ConnectorError> {
        if self.conn.is_none() {
            let c = self
                .rt
                .block_on(Conn::new(self.url.opts.clone()))
                .map_err(|e| my_err(format_args!("connecting to {}", self.url.label()), e))?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Runs `f` on the connection; an error that is not a refused row drops the connection
    /// (the next call reconnects).
    fn with<T>(
        &mut self,
        what: &str,
        f: impl for<'c> FnOnce(&'c mut Conn) -> futures_util::future::BoxFuture<'c, Result<T, mysql_async::Error>>,
    ) -> Result<T, ConnectorError> {
        let label = self.label();
        self.conn()?;
        let conn = self.conn.as_mut().expect("connected above");
        let out = self.rt.block_on(f(conn));
        out.map_err(|e| {
            self.conn = None;
            my_err(format_args!("{what} {label}"), e)
        })
    }

    /// The columns a read selects. A FLOAT is read through DOUBLE: its own text has six
    /// significant digits (123456.789 reads 123457), the DOUBLE holds its exact value.
    fn select_list(&self) -> String {
        let col = |c: &MyColumn| match c.kind {
            Kind::Float { single: true } => format!("CAST({} AS DOUBLE)", ident(&c.name)),
            _ => ident(&c.name),
        };
        self.columns.iter().map(col).collect::<Vec<_>>().join(", ")
    }

    fn row_from(&self, r: &mysql_async::Row) -> (Key, Row) {
        let mut row = Row::new();
        for (i, c) in self.columns.iter().enumerate() {
            let v = r.as_ref(i).map(|v| decode(c.kind, v)).unwrap_or(Value::Null);
            row.insert(c.name.clone(), self.read_temporal(c, v));
        }
        let key = Key::from_values(
            &self.key.iter().map(|k| row.get(k.as_str()).cloned().unwrap_or(Value::Null)).collect::<Vec<_>>(),
        );
        (key, row)
    }

    /// A `TIMESTAMP` (or a `DATETIME` whose zone is configured) as an instant in UTC.
    fn read_temporal(&self, c: &MyColumn, v: Value) -> Value {
        match (c.data_type.as_str(), &v, &self.url.datetime_zone) {
            ("timestamp", Value::Text(t), _) => Value::Text(zone::read_instant(t, None)),
            ("datetime", Value::Text(t), Some(z)) => Value::Text(zone::read_instant(t, Some(z))),
            _ => v,
        }
    }

    /// The SQL literal of a value for column `col`: instants go into `TIMESTAMP` as UTC and
    /// into `DATETIME` as the configured zone's wall clock.
    fn lit(&self, col: &str, v: &Value) -> Result<String, String> {
        match self.stored(col, v)? {
            Some(wall) => literal(&wall),
            None => literal(v),
        }
    }

    /// What the column stores for `v` where that is not `v` itself: an instant in a DATETIME
    /// or TIMESTAMP column is written as its wall time (in the configured zone, or UTC).
    fn stored(&self, col: &str, v: &Value) -> Result<Option<Value>, String> {
        // A FLOAT stores the single-precision value nearest to a number: written as that value
        // exactly, the largest one (3.4028235e38, as PostgreSQL prints it) is not out of range.
        if let (Some(Kind::Float { single: true }), Value::Float(x)) = (self.column(col).map(|c| c.kind), v) {
            let f = *x as f32;
            if x.is_finite() && !f.is_finite() {
                return Err(format!("column {}.{col}: the value {x} is out of FLOAT's range", self.table));
            }
            return Ok(Some(Value::Float(f64::from(f))));
        }
        if let (Some(c), Value::Text(t)) = (self.column(col), v) {
            if c.data_type == "timestamp" || c.data_type == "datetime" {
                let wall = zone::write_instant(t, c.data_type == "timestamp", self.url.datetime_zone.as_ref())
                    .map_err(|e| format!("column {}.{col}: the value {e}", self.table))?;
                return Ok(Some(Value::Text(wall)));
            }
        }
        Ok(None)
    }

    /// A page of new rows (all setting the same columns) as `LOAD DATA LOCAL INFILE`: the
    /// statement and the data it reads. Blob columns (and any column given a blob) travel in
    /// hexadecimal through `UNHEX`.
    fn load_data(&self, rows: &[Row]) -> Result<(String, Vec<u8>), String> {
        let Some(first) = rows.first() else { return Err("no rows".into()) };
        let cols: Vec<&Name> = first.keys().collect();
        let hex: Vec<bool> = cols
            .iter()
            .map(|c| {
                self.column(c).is_some_and(|x| x.kind == Kind::Bytes)
                    || rows.iter().any(|r| matches!(r.get(*c), Some(Value::Bytes(_))))
            })
            .collect();
        let mut data = Vec::with_capacity(rows.len() * 256);
        for r in rows {
            for (i, (c, v)) in r.iter().enumerate() {
                if i > 0 {
                    data.push(b'\t');
                }
                match self.stored(c, v)? {
                    Some(wall) => load_field(&wall, hex[i], &mut data)?,
                    None => load_field(v, hex[i], &mut data)?,
                }
            }
            data.push(b'\n');
        }
        let targets: Vec<String> =
            cols.iter().enumerate().map(|(i, c)| if hex[i] { format!("@v{i}") } else { ident(c) }).collect();
        let sets: Vec<String> = cols
            .iter()
            .enumerate()
            .filter(|(i, _)| hex[*i])
            .map(|(i, c)| format!("{} = UNHEX(@v{i})", ident(c)))
            .collect();
        let mut sql = format!(
            "LOAD DATA LOCAL INFILE 'tandem' INTO TABLE {} CHARACTER SET utf8mb4 ({})",
            self.qualified(),
            targets.join(", ")
        );
        if !sets.is_empty() {
            sql.push_str(&format!(" SET {}", sets.join(", ")));
        }
        Ok((sql, data))
    }

    fn key_literals(&self, key: &Key) -> Result<Vec<String>, ConnectorError> {
        key.values()
            .iter()
            .map(|v| literal(v).map_err(|e| ConnectorError::new(ErrorKind::Internal, format!("key value: {e}"))))
            .collect()
    }

    fn key_match(&self, key: &Key) -> Result<String, ConnectorError> {
        let lits = self.key_literals(key)?;
        Ok(self.key.iter().zip(lits).map(|(k, l)| format!("{} = {l}", ident(k))).collect::<Vec<_>>().join(" AND "))
    }

    fn keys_in(&self, keys: &[Key]) -> Result<String, ConnectorError> {
        let cols: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
        let mut tuples = Vec::with_capacity(keys.len());
        for k in keys {
            tuples.push(format!("({})", self.key_literals(k)?.join(", ")));
        }
        Ok(format!("({}) IN ({})", cols.join(", "), tuples.join(", ")))
    }

    fn query_rows(&mut self, what: &str, sql: String) -> Result<Vec<(Key, Row)>, ConnectorError> {
        let rows: Vec<mysql_async::Row> = self.with(what, move |c| Box::pin(c.query(sql)))?;
        Ok(rows.iter().map(|r| self.row_from(r)).collect())
    }

    /// The value check done before writing, so the dead letter names the column.
    fn check_fit(&self, values: &Row) -> Result<(), RowError> {
        for (col, v) in values {
            let Some(c) = self.column(col) else {
                return Err(RowError::new(
                    Some(col.to_string()),
                    Some(v.type_name()),
                    format!("column {}.{col} does not exist", self.table),
                ));
            };
            if let Err(e) = self.stored(col, v).and_then(|_| writable(v)) {
                return Err(RowError::new(Some(col.to_string()), Some(v.type_name()), e));
            }
            crate::check_length(&self.table, col, &c.column_type, v)?;
            if let (Kind::Bytes, Value::Text(_)) | (Kind::Int { .. } | Kind::Bool, Value::Bytes(_)) = (c.kind, v) {
                if c.kind != Kind::Bytes {
                    return Err(RowError::new(
                        Some(col.to_string()),
                        Some(v.type_name()),
                        format!("column {}.{col} is {}; a blob does not fit", self.table, c.column_type),
                    ));
                }
            }
        }
        Ok(())
    }

    fn refused(&self, s: &mysql_async::ServerError, values: Option<&Row>) -> RowError {
        // "Data too long for column 'x' at row 1", "Column 'x' cannot be null", "Incorrect … value: '…' for column `db`.`t`.`x`".
        let column = self
            .columns
            .iter()
            .map(|c| c.name.to_string())
            .find(|n| s.message.contains(&format!("'{n}'")) || s.message.contains(&format!("`{n}`")));
        let value_type =
            column.as_ref().map(|c| values.and_then(|v| v.get(c.as_str())).map(Value::type_name).unwrap_or("null"));
        RowError::new(column, value_type, format!("{} refused the write: {}", self.label(), s.message))
    }

    /// Values of an insert, leaving out NULLs for NOT NULL columns that have a default.
    fn insert_values(&self, values: &Row) -> Row {
        self.insert_values_owned(values.clone())
    }

    /// [`MyTable::insert_values`] of a row not needed after.
    fn insert_values_owned(&self, mut values: Row) -> Row {
        values.retain(|c, v| !(v.is_null() && self.column(c).is_some_and(|x| x.not_null && x.has_default)));
        values
    }

    fn insert_sql<C: AsRef<str>>(&self, cols: &[C], rows: &[Vec<String>]) -> String {
        let cols: Vec<String> = cols.iter().map(|c| ident(c.as_ref())).collect();
        let tuples: Vec<String> = rows.iter().map(|r| format!("({})", r.join(", "))).collect();
        if cols.is_empty() {
            return format!("INSERT INTO {} () VALUES {}", self.qualified(), tuples.join(", "));
        }
        format!("INSERT INTO {} ({}) VALUES {}", self.qualified(), cols.join(", "), tuples.join(", "))
    }

    fn auto_key(&self) -> Option<&MyColumn> {
        match self.key.as_slice() {
            [k] => self.column(k).filter(|c| c.auto_increment),
            _ => None,
        }
    }

    fn stop_capture(&mut self) {
        if let Some(c) = self.capture.take() {
            self.rt.block_on(c.stop());
        }
    }

    /// A position as the server names it: `mariadb-bin.000003:1234`, with MariaDB's GTID
    /// position there (`BINLOG_GTID_POS`) when the server has one.
    fn position_label(&mut self, base: &str, position: u64) -> String {
        let (n, offset) = split(position);
        let file = format!("{base}.{n:06}");
        let gtid: Option<Option<String>> = self
            .with("reading the GTID of", {
                let file = file.clone();
                move |c| Box::pin(c.exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, offset)))
            })
            .ok()
            .flatten();
        match gtid.flatten().filter(|g| !g.is_empty()) {
            Some(g) => format!("{file}:{offset} (GTID {g})"),
            None => format!("{file}:{offset}"),
        }
    }

    /// The server's current binlog base name and position.
    fn master(&mut self) -> Result<(String, u64), ConnectorError> {
        let row: Option<mysql_async::Row> =
            self.with("reading the binlog position of", |c| Box::pin(c.query_first("SHOW MASTER STATUS")))?;
        let Some(row) = row else {
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!(
                    "{} has no binary log: set log_bin = ON and binlog_format = ROW, then restart the server",
                    self.url.label()
                ),
            ));
        };
        let file: String = row.get(0).unwrap_or_default();
        let offset: u64 = row.get(1).unwrap_or_default();
        let (base, n) = file
            .rsplit_once('.')
            .and_then(|(b, n)| Some((b.to_string(), n.parse::<u32>().ok()?)))
            .ok_or_else(|| ConnectorError::new(ErrorKind::Internal, format!("unreadable binlog file name {file}")))?;
        Ok((base, pos(n, offset as u32)))
    }

    fn binlog_files(&mut self) -> Result<Vec<(String, u64)>, ConnectorError> {
        let rows: Vec<mysql_async::Row> =
            self.with("listing the binlog files of", |c| Box::pin(c.query("SHOW BINARY LOGS")))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0).unwrap_or_default(), r.get::<u64, _>(1).unwrap_or_default()))
            .collect())
    }

    fn target(&self) -> Target {
        Target {
            db: self.url.db(),
            table: self.table.clone(),
            key: self
                .key
                .iter()
                .filter_map(|k| self.columns.iter().position(|c| &c.name == k).map(|i| (i, self.columns[i].kind)))
                .collect(),
        }
    }

    /// Whether the synced database has a table of this name (Tandem's own tables appear on the
    /// first run).
    fn has_table(&mut self, name: &'static str) -> Result<bool, ConnectorError> {
        let db = self.url.db();
        let n: Option<i64> = self.with("reading the tables of", move |c| {
            Box::pin(c.exec_first(
                "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (db, name),
            ))
        })?;
        Ok(n.unwrap_or(0) > 0)
    }

    fn installed(&mut self) -> Result<bool, ConnectorError> {
        if !self.has_table(WRITES_TABLE)? {
            return Ok(false);
        }
        let name = self.name.clone();
        let row: Option<i64> = self.with("reading", move |c| {
            Box::pin(c.exec_first(format!("SELECT count(*) FROM {} WHERE id = ?", ident(WRITES_TABLE)), (name,)))
        })?;
        Ok(row.unwrap_or(0) > 0)
    }

    /// The condition that column `c` (as `column`, an SQL expression) still holds `value` (an SQL
    /// expression): NULL-safe, and for character columns byte for byte in the column's character
    /// set, as the engine read it. The column's collation would call an edit that only changes
    /// case, accents or trailing spaces no change at all, and Tandem's write would undo it.
    fn unchanged(&self, c: &str, column: &str, value: &str) -> String {
        match self.column(c).and_then(|x| x.charset.as_deref()) {
            Some(cs) => format!("CAST({column} AS BINARY) <=> CAST(CONVERT({value} USING {cs}) AS BINARY)"),
            None => format!("{column} <=> {value}"),
        }
    }

    /// The columns an update sets and the ones it checks: updates of one shape can share a
    /// statement.
    fn update_shape(&self, values: &Row, expect: &Row) -> Shape {
        (values.keys().cloned().collect(), expect.keys().cloned().collect())
    }

    /// One UPDATE of many records of one shape (see [`MyTable::update_shape`]), joined to a
    /// derived table of their keys, new values and expected values: a record changes only while
    /// it still holds what the engine read, as with [`MyTable::update_sql`]. `None` when a
    /// value has no literal.
    fn update_join_sql(&self, shape: &Shape, updates: &[(&Key, &Row, &Row)]) -> Option<String> {
        let (cols, checked) = shape;
        let mut selects = Vec::with_capacity(updates.len());
        for (n, (key, values, expect)) in updates.iter().enumerate() {
            let mut fields = Vec::with_capacity(self.key.len() + cols.len() + checked.len());
            let named = |v: String, alias: String| if n == 0 { format!("{v} AS {alias}") } else { v };
            for (i, v) in self.key_literals(key).ok()?.into_iter().enumerate() {
                fields.push(named(v, format!("k{i}")));
            }
            for (i, c) in cols.iter().enumerate() {
                fields.push(named(self.lit(c, values.get(c)?).ok()?, format!("c{i}")));
            }
            for (i, c) in checked.iter().enumerate() {
                let v = expect.get(c).cloned().unwrap_or(Value::Null);
                fields.push(named(self.lit(c, &v).ok()?, format!("x{i}")));
            }
            selects.push(format!("SELECT {}", fields.join(", ")));
        }
        let on: Vec<String> = self.key.iter().enumerate().map(|(i, k)| format!("t.{} = u.k{i}", ident(k))).collect();
        let mut sets: Vec<String> = cols.iter().enumerate().map(|(i, c)| format!("t.{} = u.c{i}", ident(c))).collect();
        sets.extend(self.pinned.iter().filter(|c| !cols.contains(c)).map(|c| format!("t.{0} = t.{0}", ident(c))));
        let mut sql = format!(
            "UPDATE {} AS t JOIN ({}) AS u ON {} SET {}",
            self.qualified(),
            selects.join(" UNION ALL "),
            on.join(" AND "),
            sets.join(", ")
        );
        if !checked.is_empty() {
            let wh: Vec<String> = checked
                .iter()
                .enumerate()
                .map(|(i, c)| self.unchanged(c, &format!("t.{}", ident(c)), &format!("u.x{i}")))
                .collect();
            sql.push_str(&format!(" WHERE {}", wh.join(" AND ")));
        }
        Some(sql)
    }

    /// The UPDATE of one record, guarded by the values the engine read (`expect`).
    fn update_sql(&self, key: &Key, values: &Row, expect: &Row) -> Result<String, ConnectorError> {
        let mut sets: Vec<String> = values
            .iter()
            .map(|(c, v)| format!("{} = {}", ident(c), self.lit(c, v).unwrap_or_else(|_| "NULL".into())))
            .collect();
        sets.extend(self.pinned.iter().filter(|c| !values.contains_key(*c)).map(|c| format!("{0} = {0}", ident(c))));
        let mut wh = vec![self.key_match(key)?];
        for (c, v) in expect {
            wh.push(self.unchanged(c, &ident(c), &self.lit(c, v).unwrap_or_else(|_| "NULL".into())));
        }
        Ok(format!("UPDATE {} SET {} WHERE {}", self.qualified(), sets.join(", "), wh.join(" AND ")))
    }

    /// Runs many updates in one round trip (statements separated by `;`); returns how many rows
    /// each matched, or `None` when the server refused one (the caller goes row by row).
    async fn update_batch(conn: &mut Conn, sqls: &[String]) -> Result<Option<Vec<u64>>, mysql_async::Error> {
        let mut counts = Vec::with_capacity(sqls.len());
        let run = async {
            let mut result = conn.query_iter(sqls.join(";\n")).await?;
            counts.push(result.affected_rows());
            while !result.is_empty() {
                result.next().await?;
                counts.push(result.affected_rows());
            }
            Ok::<_, mysql_async::Error>(())
        };
        match run.await {
            Ok(()) if counts.len() == sqls.len() => Ok(Some(counts)),
            Ok(()) => Ok(None),
            Err(e) if row_refusal(&e).is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write_one(conn: &mut Conn, t: &MyTable, w: &Write) -> Result<Result<Key, RowError>, mysql_async::Error> {
        match w {
            Write::Insert { intent, values } => {
                let values = t.insert_values(values);
                let cols: Vec<Name> = values.keys().cloned().collect();
                let lits: Vec<String> =
                    values.iter().map(|(c, v)| t.lit(c, v).unwrap_or_else(|_| "NULL".into())).collect();
                conn.query_drop(t.insert_sql(&cols, &[lits])).await?;
                let key = match t.key_of(&values) {
                    Some(k) => k,
                    None => match (t.auto_key(), conn.last_insert_id()) {
                        (Some(_), Some(id)) if id > 0 => Key::from_values(&[Value::Int(id as i64)]),
                        _ => {
                            return Ok(Err(RowError::new(
                                None,
                                None,
                                format!(
                                    "{} gave the new record no key: map a field to the key column or make it AUTO_INCREMENT",
                                    t.label()
                                ),
                            )))
                        }
                    },
                };
                conn.exec_drop(
                    "INSERT INTO _tandem_intents (id, tbl, pk) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE tbl = VALUES(tbl), pk = VALUES(pk)",
                    (intent, &t.table, key.as_str()),
                )
                .await?;
                Ok(Ok(key))
            }
            Write::Update { key, values, expect } => {
                let kmatch = t.key_match(key).map_err(|e| mysql_async::Error::Other(e.message.into()))?;
                let sql = t.update_sql(key, values, expect).map_err(|e| mysql_async::Error::Other(e.message.into()))?;
                conn.query_drop(sql).await?;
                if conn.affected_rows() == 0 && !expect.is_empty() {
                    let found: Option<i64> =
                        conn.query_first(format!("SELECT 1 FROM {} WHERE {kmatch}", t.qualified())).await?;
                    if found.is_some() {
                        return Ok(Err(RowError::stale()));
                    }
                }
                Ok(Ok(key.clone()))
            }
            Write::Delete { key } => {
                let kmatch = t.key_match(key).map_err(|e| mysql_async::Error::Other(e.message.into()))?;
                conn.query_drop(format!("DELETE FROM {} WHERE {kmatch}", t.qualified())).await?;
                Ok(Ok(key.clone()))
            }
        }
    }

    /// Inserts new rows in one statement; `None` when the batch must go row by row.
    async fn insert_batch(conn: &mut Conn, t: &MyTable, rows: &[&Row]) -> Result<Option<Vec<Key>>, mysql_async::Error> {
        let cols: Vec<String> = match rows.first() {
            Some(r) => r.keys().map(|c| c.to_string()).collect(),
            None => return Ok(Some(Vec::new())),
        };
        let keys: Option<Vec<Key>> = rows.iter().map(|r| t.key_of(r)).collect();
        if keys.is_none() && (t.auto_key().is_none() || t.id_step.is_none()) {
            return Ok(None);
        }
        let mut tuples = Vec::with_capacity(rows.len());
        for r in rows {
            let lits: Result<Vec<String>, String> = r.iter().map(|(c, v)| t.lit(c, v)).collect();
            let Ok(lits) = lits else { return Ok(None) };
            tuples.push(lits);
        }
        match conn.query_drop(t.insert_sql(&cols, &tuples)).await {
            Ok(()) => {}
            Err(e) if row_refusal(&e).is_some() => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(Some(match keys {
            Some(k) => k,
            None => {
                // One multi-row insert gets consecutive ids, spaced by the step; LAST_INSERT_ID()
                // is the first.
                let first = conn.last_insert_id().unwrap_or(0) as i64;
                let step = t.id_step.unwrap_or(1);
                (0..rows.len() as i64).map(|i| Key::from_values(&[Value::Int(first + i * step)])).collect()
            }
        }))
    }

    /// [`Connector::bulk_insert`] of rows whose keys are known: `LOAD DATA LOCAL INFILE` (far
    /// cheaper for the server than INSERT statements) runs on the I/O thread while the caller
    /// makes its state durable; the transaction commits only after that. With `LOCAL` the
    /// server turns a taken key or a value it has to adjust into a skipped row or a warning
    /// instead of an error: any of those refuses the whole page (nothing is written), so its
    /// rows go one by one and each gets its own outcome.
    fn bulk_load(
        &mut self,
        batch: &str,
        rows: &[Row],
        keys: Vec<Key>,
        before_commit: &mut dyn FnMut(&[Key]) -> bool,
    ) -> Result<Result<(), RowError>, ConnectorError> {
        use futures_util::StreamExt;
        let (sql, data) = match self.load_data(rows) {
            Ok(x) => x,
            Err(e) => return Ok(Err(RowError::new(None, None, e))),
        };
        let label = self.label();
        let expected = rows.len() as u64;
        self.conn()?;
        let mut conn = self.conn.take().expect("connected above");
        let (name, table, batch) = (self.name.clone(), self.table.clone(), batch.to_string());
        let task = self.rt.spawn(async move {
            let loaded = async {
                Self::begin_own(&mut conn, &name).await?;
                let mut data = bytes::Bytes::from(data);
                let mut parts = Vec::new();
                while !data.is_empty() {
                    parts.push(Ok(data.split_to(data.len().min(1 << 20))));
                }
                conn.set_infile_handler(async move { Ok(futures_util::stream::iter(parts).boxed()) });
                let refused = match conn.query_drop(sql).await {
                    Ok(()) if conn.affected_rows() == expected && conn.get_warnings() == 0 => None,
                    Ok(()) => Some(Load::Refused(format!(
                        "{} loaded {} of {expected} rows with {} warnings (a key taken, or a value it had to adjust)",
                        table,
                        conn.affected_rows(),
                        conn.get_warnings()
                    ))),
                    // LOCAL INFILE is off on the server (or the client side of it).
                    Err(mysql_async::Error::Server(s)) if matches!(s.code, 1148 | 3948 | 4166) => {
                        Some(Load::Disabled(s.message))
                    }
                    Err(e) if row_refusal(&e).is_some() => Some(Load::Refused(e.to_string())),
                    Err(e) => return Err(e),
                };
                if refused.is_none() {
                    conn.exec_drop(BATCH_MARKER, (batch, &table)).await?;
                }
                Ok(refused)
            }
            .await;
            (conn, loaded)
        });
        let go_on = before_commit(&keys);
        let (mut conn, loaded) = self.rt.block_on(task).unwrap_or_else(|e| panic!("the LOAD DATA task failed: {e}"));
        let conn = match loaded {
            Ok(None) => conn,
            Ok(Some(refused)) => {
                let _ = self.rt.block_on(conn.query_drop("ROLLBACK"));
                self.conn = Some(conn);
                let reason = match refused {
                    Load::Refused(why) => why,
                    Load::Disabled(why) => {
                        tracing::warn!(table = %self.table, "LOAD DATA LOCAL INFILE refused ({why}); bulk loads use INSERT");
                        self.load_local = false;
                        why
                    }
                };
                return Ok(Err(RowError::new(None, None, reason)));
            }
            // The connection is in an unknown state: it is dropped (the transaction with it).
            Err(e) => return Err(my_err(format_args!("loading into {label}"), e)),
        };
        self.end_page(conn, go_on, &label)
    }

    /// Ends a bulk page's transaction: committed when the caller made its state durable
    /// (`go_on`), else rolled back; the connection is kept either way.
    fn end_page(&mut self, mut conn: Conn, go_on: bool, label: &str) -> Result<Result<(), RowError>, ConnectorError> {
        if !go_on {
            let _ = self.rt.block_on(conn.query_drop("ROLLBACK"));
            self.conn = Some(conn);
            return Err(ConnectorError::new(ErrorKind::Unavailable, format!("copy into {label} abandoned")));
        }
        self.rt.block_on(conn.query_drop("COMMIT")).map_err(|e| my_err(format_args!("committing to {label}"), e))?;
        self.conn = Some(conn);
        Ok(Ok(()))
    }

    /// Begins a transaction that the capture knows as Tandem's own (its first row is the
    /// marker), in one round trip.
    async fn begin_own(conn: &mut Conn, name: &str) -> Result<(), mysql_async::Error> {
        let name = literal(&Value::Text(name.to_string())).expect("a sync's name is text");
        conn.query_drop(format!(
            "START TRANSACTION; INSERT INTO {} (id, n) VALUES ({name}, 1) ON DUPLICATE KEY UPDATE n = n + 1",
            ident(WRITES_TABLE)
        ))
        .await
    }
}

impl Drop for MyTable {
    fn drop(&mut self) {
        self.stop_capture();
        if let Some(c) = self.conn.take() {
            let _ = self.rt.block_on(c.disconnect());
        }
    }
}

impl Connector for MyTable {
    fn as_send(&mut self) -> Option<&mut (dyn Connector + Send)> {
        Some(self)
    }

    fn capture_state(&mut self, cursor: Option<u64>) -> Result<CaptureState, ConnectorError> {
        if !self.installed()? {
            return Ok(match cursor {
                Some(_) => CaptureState::Lost(format!(
                    "Tandem's marker row `{}` in {} is gone (the table was dropped or the database restored)",
                    self.name, WRITES_TABLE
                )),
                None => CaptureState::Missing,
            });
        }
        let Some(cursor) = cursor else { return Ok(CaptureState::Ready) };
        let (base, head) = self.master()?;
        let (file, offset) = split(cursor);
        let files = self.binlog_files()?;
        let wanted = format!("{base}.{file:06}");
        let here = files.iter().find(|(n, _)| *n == wanted);
        Ok(match here {
            None if cursor > head => CaptureState::Lost(format!(
                "Tandem's position {} is past the server's binlog end {} (the binlog was reset, or this is another server)",
                binlog::label(&base, cursor),
                binlog::label(&base, head)
            )),
            None => CaptureState::Lost(format!(
                "binlog file {wanted} holding Tandem's position {} was purged (see binlog_expire_logs_seconds / expire_logs_days)",
                binlog::label(&base, cursor)
            )),
            Some((_, size)) if u64::from(offset) > *size => CaptureState::Lost(format!(
                "Tandem's position {} is past the end of {wanted} ({size} bytes): the binlog was rewritten",
                binlog::label(&base, cursor)
            )),
            Some(_) => CaptureState::Ready,
        })
    }

    fn install(&mut self) -> Result<String, ConnectorError> {
        self.stop_capture();
        let name = self.name.clone();
        self.with("installing capture on", move |c| {
            Box::pin(async move {
                c.query_drop(format!(
                    "CREATE TABLE IF NOT EXISTS {} (id VARCHAR(255) PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB",
                    ident(WRITES_TABLE)
                ))
                .await?;
                c.query_drop(
                    "CREATE TABLE IF NOT EXISTS _tandem_intents (id VARCHAR(255) PRIMARY KEY, tbl VARCHAR(255) NOT NULL, pk TEXT NOT NULL) ENGINE=InnoDB",
                )
                .await?;
                c.exec_drop(format!("INSERT IGNORE INTO {} (id, n) VALUES (?, 0)", ident(WRITES_TABLE)), (name,)).await
            })
        })?;
        let (base, head) = self.master()?;
        Ok(format!(
            "installed change capture on {}: binlog from {}, marker row `{}` in {}; remove with `tandem uninstall`",
            self.label(),
            binlog::label(&base, head),
            self.name,
            WRITES_TABLE
        ))
    }

    fn identity(&mut self) -> Result<Option<String>, ConnectorError> {
        let row: Option<(String, String)> = self.with("identifying", |c| {
            Box::pin(
                c.query_first("SELECT CONCAT(@@server_id, '/', @@hostname, ':', @@port, '/', @@datadir), DATABASE()"),
            )
        })?;
        let uuid: Option<String> =
            self.with("identifying", |c| Box::pin(c.query_first("SELECT @@server_uuid"))).ok().flatten();
        Ok(row.map(|(server, db)| match uuid {
            Some(u) => format!("{u}/{db}"),
            None => format!("{server}/{db}"),
        }))
    }

    fn head(&mut self) -> Result<u64, ConnectorError> {
        Ok(self.master()?.1)
    }

    fn changes(&mut self, after: u64, limit: usize, wait: bool) -> Result<ChangePage, ConnectorError> {
        let (base, until) = self.master()?;
        if self.capture.is_none() {
            let target = self.target();
            let id = server_id(&format!("{}/{}", self.url.label(), self.name));
            let capture = self.rt.block_on(Capture::start(self.url.opts.clone(), id, base.clone(), after, target))?;
            self.capture = Some(capture);
        }
        let capture = self.capture.as_mut().expect("started above");
        let page =
            self.rt.block_on(capture.changes(after, limit, until, if wait { STREAM_WAIT } else { Duration::ZERO }));
        match page {
            Ok(mut p) => {
                if p.next > after && self.labelled.is_none_or(|t| t.elapsed() >= LABEL_EVERY) {
                    self.labelled = Some(Instant::now());
                    p.label = Some(self.position_label(&base, p.next));
                }
                Ok(p)
            }
            Err(e) => {
                self.stop_capture();
                Err(e)
            }
        }
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

    fn read(&mut self, keys: &[Key]) -> Result<Vec<Option<Row>>, ConnectorError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut found: HashMap<Key, Row> = HashMap::new();
        for chunk in keys.chunks(1000) {
            let sql = format!("SELECT {} FROM {} WHERE {}", self.select_list(), self.qualified(), self.keys_in(chunk)?);
            found.extend(self.query_rows("reading", sql)?);
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn scan(&mut self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Row)>, ConnectorError> {
        let cols: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
        let cond = match after {
            Some(k) => format!("WHERE ({}) > ({})", cols.join(", "), self.key_literals(k)?.join(", ")),
            None => String::new(),
        };
        let sql = format!(
            "SELECT {} FROM {} {cond} ORDER BY {} LIMIT {limit}",
            self.select_list(),
            self.qualified(),
            cols.join(", ")
        );
        // The pages of a load are read in one consistent-read snapshot, taken at the first page
        // (or at the first page after a restart), on a connection of its own; the binlog
        // position it corresponds to is at or after the capture position set before the load,
        // so changes made meanwhile are captured and merged (nothing is missed, and a record read
        // twice is merged, not doubled).
        let label = self.label();
        let fail = |e| my_err(format_args!("scanning {label} in a snapshot"), e);
        if after.is_none() || self.snapshot.is_none() {
            self.snapshot = None;
            let mut c = self.rt.block_on(Conn::new(self.url.opts.clone())).map_err(fail)?;
            let position: Result<Vec<(String, String)>, _> = self.rt.block_on(async {
                c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ").await?;
                c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
                c.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await
            });
            let position = position.map_err(fail)?;
            tracing::debug!(table = %self.table, ?position, "initial load reads a consistent snapshot");
            self.snapshot = Some(c);
        }
        let conn = self.snapshot.as_mut().expect("opened above");
        let rows: Result<Vec<mysql_async::Row>, _> = self.rt.block_on(conn.query(sql));
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                self.snapshot = None;
                return Err(fail(e));
            }
        };
        let page: Vec<(Key, Row)> = rows.iter().map(|r| self.row_from(r)).collect();
        if page.len() < limit {
            // The load of this side is done: let the snapshot go.
            if let Some(mut c) = self.snapshot.take() {
                let _ = self.rt.block_on(c.query_drop("COMMIT"));
            }
        }
        Ok(page)
    }

    fn find(&mut self, column: &str, value: &Value, case_insensitive: bool) -> Result<Vec<(Key, Row)>, ConnectorError> {
        let lit = self.lit(column, value).map_err(|e| ConnectorError::new(ErrorKind::Internal, e))?;
        let cond = if case_insensitive && matches!(value, Value::Text(_)) {
            format!("LOWER({}) = LOWER({lit})", ident(column))
        } else {
            format!("{} = {lit}", ident(column))
        };
        let order: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {cond} ORDER BY {}",
            self.select_list(),
            self.qualified(),
            order.join(", ")
        );
        self.query_rows("matching on", sql)
    }

    fn apply(&mut self, writes: &[Write]) -> Result<Vec<WriteResult>, ConnectorError> {
        let mut done: Vec<Option<WriteResult>> = vec![None; writes.len()];
        for (i, w) in writes.iter().enumerate() {
            if let Write::Insert { values, .. } | Write::Update { values, .. } = w {
                if let Err(e) = self.check_fit(values) {
                    done[i] = Some(Err(e));
                }
            }
        }
        let label = self.label();
        self.conn()?;
        let mut conn = self.conn.take().expect("connected above");
        let this = &*self;
        let out = self.rt.block_on(async {
            Self::begin_own(&mut conn, &this.name).await?;
            // Fast paths: new records in one statement, deletes in one statement; a batch the
            // server refuses goes row by row below, where each refusal is pinned to its record.
            let inserts: Vec<usize> = (0..writes.len())
                .filter(|i| done[*i].is_none() && matches!(writes[*i], Write::Insert { .. }))
                .collect();
            if inserts.len() > 1 {
                let rows: Vec<Row> = inserts
                    .iter()
                    .map(|i| match &writes[*i] {
                        Write::Insert { values, .. } => this.insert_values(values),
                        _ => unreachable!("filtered to inserts"),
                    })
                    .collect();
                let same_shape = rows.windows(2).all(|w| w[0].keys().eq(w[1].keys()));
                if same_shape {
                    conn.query_drop("SAVEPOINT tandem_batch").await?;
                    let refs: Vec<&Row> = rows.iter().collect();
                    match Self::insert_batch(&mut conn, this, &refs).await? {
                        Some(keys) => {
                            let mut intents = Vec::with_capacity(keys.len());
                            for (i, k) in inserts.iter().zip(&keys) {
                                if let Write::Insert { intent, .. } = &writes[*i] {
                                    intents.push(format!(
                                        "({}, {}, {})",
                                        literal(&Value::Text(intent.clone())).unwrap_or_default(),
                                        literal(&Value::Text(this.table.clone())).unwrap_or_default(),
                                        literal(&Value::Text(k.as_str().to_string())).unwrap_or_default()
                                    ));
                                }
                                done[*i] = Some(Ok(k.clone()));
                            }
                            conn.query_drop(format!(
                                "INSERT INTO _tandem_intents (id, tbl, pk) VALUES {} ON DUPLICATE KEY UPDATE tbl = VALUES(tbl), pk = VALUES(pk)",
                                intents.join(", ")
                            ))
                            .await?;
                        }
                        None => conn.query_drop("ROLLBACK TO SAVEPOINT tandem_batch").await?,
                    }
                }
            }
            let deletes: Vec<usize> =
                (0..writes.len()).filter(|i| done[*i].is_none() && matches!(writes[*i], Write::Delete { .. })).collect();
            if deletes.len() > 1 {
                let keys: Vec<Key> = deletes
                    .iter()
                    .filter_map(|i| match &writes[*i] {
                        Write::Delete { key } => Some(key.clone()),
                        _ => None,
                    })
                    .collect();
                if let Ok(cond) = this.keys_in(&keys) {
                    conn.query_drop(format!("DELETE FROM {} WHERE {cond}", this.qualified())).await?;
                    for (i, k) in deletes.iter().zip(keys) {
                        done[*i] = Some(Ok(k));
                    }
                }
            }
            // Updates of one shape: one statement for up to 500 records, kept when it changed
            // one row per record; otherwise (a record changed meanwhile or is gone, a value the
            // server refuses) it is undone and its updates go the ways below.
            let mut shaped: Vec<(Shape, usize)> = (0..writes.len())
                .filter(|i| done[*i].is_none())
                .filter_map(|i| match &writes[i] {
                    Write::Update { values, expect, .. } => Some((this.update_shape(values, expect), i)),
                    _ => None,
                })
                .collect();
            shaped.sort();
            for same in shaped.chunk_by(|a, b| a.0 == b.0) {
                for chunk in same.chunks(500).filter(|c| c.len() > 1) {
                    let updates: Vec<(&Key, &Row, &Row)> = chunk
                        .iter()
                        .filter_map(|(_, i)| match &writes[*i] {
                            Write::Update { key, values, expect } => Some((key, values, expect)),
                            _ => None,
                        })
                        .collect();
                    let Some(sql) = this.update_join_sql(&chunk[0].0, &updates) else { continue };
                    // One round trip: the savepoint and the statement.
                    let all = match conn.query_drop(format!("SAVEPOINT tandem_batch; {sql}")).await {
                        Ok(()) => conn.affected_rows() == chunk.len() as u64,
                        Err(e) if row_refusal(&e).is_some() => false,
                        Err(e) => return Err(e),
                    };
                    if !all {
                        conn.query_drop("ROLLBACK TO SAVEPOINT tandem_batch").await?;
                        continue;
                    }
                    for ((_, i), (key, _, _)) in chunk.iter().zip(&updates) {
                        done[*i] = Some(Ok((*key).clone()));
                    }
                }
            }
            // Updates: many statements a round trip; one that matched no row (stale, or gone)
            // is looked at again one by one below.
            let updates: Vec<usize> =
                (0..writes.len()).filter(|i| done[*i].is_none() && matches!(writes[*i], Write::Update { .. })).collect();
            for chunk in updates.chunks(500).filter(|c| c.len() > 1) {
                let sqls: Option<Vec<String>> = chunk
                    .iter()
                    .map(|i| match &writes[*i] {
                        Write::Update { key, values, expect } => this.update_sql(key, values, expect).ok(),
                        _ => None,
                    })
                    .collect();
                let Some(sqls) = sqls else { continue };
                conn.query_drop("SAVEPOINT tandem_batch").await?;
                match Self::update_batch(&mut conn, &sqls).await? {
                    Some(counts) => {
                        for (i, n) in chunk.iter().zip(counts) {
                            if let Write::Update { key, expect, .. } = &writes[*i] {
                                if n > 0 || expect.is_empty() {
                                    done[*i] = Some(Ok(key.clone()));
                                }
                            }
                        }
                    }
                    None => conn.query_drop("ROLLBACK TO SAVEPOINT tandem_batch").await?,
                }
            }
            let mut out = Vec::with_capacity(writes.len());
            for (w, d) in writes.iter().zip(done) {
                if let Some(r) = d {
                    out.push(r);
                    continue;
                }
                // A failed statement is undone by itself; the transaction goes on.
                match Self::write_one(&mut conn, this, w).await {
                    Ok(r) => out.push(r),
                    Err(e) => match row_refusal(&e) {
                        Some(s) => out.push(Err(this.refused(s, match w {
                            Write::Insert { values, .. } | Write::Update { values, .. } => Some(values),
                            Write::Delete { .. } => None,
                        }))),
                        None => {
                            let _ = conn.query_drop("ROLLBACK").await;
                            return Err(e);
                        }
                    },
                }
            }
            conn.query_drop("COMMIT").await?;
            Ok::<_, mysql_async::Error>(out)
        });
        match out {
            Ok(out) => {
                self.conn = Some(conn);
                Ok(out)
            }
            Err(e) => Err(my_err(format_args!("applying to {label}"), e)),
        }
    }

    fn created(&mut self, intent: &str) -> Result<Option<Key>, ConnectorError> {
        if !self.has_table(INTENTS_TABLE)? {
            return Ok(None);
        }
        let (intent, table) = (intent.to_string(), self.table.clone());
        let pk: Option<String> = self.with("reading intents of", move |c| {
            Box::pin(c.exec_first("SELECT pk FROM _tandem_intents WHERE id = ? AND tbl = ?", (intent, table)))
        })?;
        Ok(pk.and_then(|p| Key::parse(&p)))
    }

    fn forget_intents(&mut self, ids: &[String]) -> Result<(), ConnectorError> {
        if ids.is_empty() {
            return Ok(());
        }
        for chunk in ids.chunks(1000) {
            let list: Vec<String> =
                chunk.iter().map(|i| literal(&Value::Text(i.clone())).unwrap_or_default()).collect();
            let sql = format!("DELETE FROM _tandem_intents WHERE id IN ({})", list.join(", "));
            self.with("forgetting intents on", move |c| Box::pin(c.query_drop(sql)))?;
        }
        Ok(())
    }

    fn intent_ids(&mut self) -> Result<Vec<String>, ConnectorError> {
        if !self.has_table(INTENTS_TABLE)? {
            return Ok(Vec::new());
        }
        let table = self.table.clone();
        self.with("reading intents of", move |c| {
            Box::pin(c.exec("SELECT id FROM _tandem_intents WHERE tbl = ?", (table,)))
        })
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
        let (db, table) = (self.url.db(), self.table.clone());
        self.with("estimating rows of", move |c| {
            Box::pin(c.exec_first(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (db, table),
            ))
        })
    }

    fn key_of(&self, values: &Row) -> Option<Key> {
        let vals: Option<Vec<Value>> =
            self.key.iter().map(|k| key_value(self.column(k)?.kind, values.get(k.as_str())?)).collect();
        Some(Key::from_values(&vals?))
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
        let rows: Vec<Row> = rows.into_iter().map(|r| self.insert_values_owned(r)).collect();
        if !rows.windows(2).all(|w| w[0].keys().eq(w[1].keys())) {
            return Ok(Err(RowError::new(None, None, "the rows of this batch set different columns")));
        }
        if self.load_local {
            if let Some(keys) = rows.iter().map(|r| self.key_of(r)).collect::<Option<Vec<Key>>>() {
                return self.bulk_load(batch, &rows, keys, before_commit);
            }
        }
        let label = self.label();
        self.conn()?;
        let mut conn = self.conn.take().expect("connected above");
        let this = &*self;
        let result = self.rt.block_on(async {
            Self::begin_own(&mut conn, &this.name).await?;
            let mut keys = Vec::with_capacity(rows.len());
            // Statements of about a megabyte each (max_allowed_packet is 16 MB by default).
            let mut start = 0;
            while start < rows.len() {
                let mut end = start;
                let mut size = 0;
                while end < rows.len() && (end == start || size < 1 << 20) {
                    size += rows[end]
                        .values()
                        .map(|v| match v {
                            Value::Text(s) => 2 * s.len() + 12,
                            Value::Bytes(b) => 2 * b.len() + 4,
                            _ => 24,
                        })
                        .sum::<usize>();
                    end += 1;
                }
                let refs: Vec<&Row> = rows[start..end].iter().collect();
                match Self::insert_batch(&mut conn, this, &refs).await {
                    Ok(Some(k)) => keys.extend(k),
                    Ok(None) => {
                        conn.query_drop("ROLLBACK").await?;
                        return Ok(Err(RowError::new(
                            None,
                            None,
                            format!("{} refused a row of the batch", this.label()),
                        )));
                    }
                    Err(e) => {
                        let _ = conn.query_drop("ROLLBACK").await;
                        return Err(e);
                    }
                }
                start = end;
            }
            conn.exec_drop(BATCH_MARKER, (batch, &this.table)).await?;
            Ok(Ok((conn, keys)))
        });
        let (conn, keys) = match result {
            Ok(Ok(x)) => x,
            Ok(Err(refused)) => return Ok(Err(refused)),
            Err(e) => return Err(my_err(format_args!("copying into {label}"), e)),
        };
        let go_on = before_commit(&keys);
        self.end_page(conn, go_on, &label)
    }

    fn uninstall(&mut self) -> Result<String, ConnectorError> {
        self.stop_capture();
        if self.has_table(WRITES_TABLE)? {
            let name = self.name.clone();
            self.with("removing capture from", move |c| {
                Box::pin(c.exec_drop(format!("DELETE FROM {} WHERE id = ?", ident(WRITES_TABLE)), (name,)))
            })?;
        }
        if self.has_table(INTENTS_TABLE)? {
            let table = self.table.clone();
            self.with("removing capture from", move |c| {
                Box::pin(c.exec_drop("DELETE FROM _tandem_intents WHERE tbl = ?", (table,)))
            })?;
        }
        Ok(format!("removed Tandem's marker row `{}` and intents from {}", self.name, self.label()))
    }
}

#[cfg(test)]
mod tests {
    use super::binlog::file_number;
    use super::*;

    /// A database of its own on the machine's MariaDB (scripts/mariadb-setup), dropped however
    /// the test ends.
    struct TestDb {
        rt: tokio::runtime::Runtime,
        admin: Conn,
        name: String,
    }

    impl TestDb {
        fn new(tag: &str) -> TestDb {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let server = MyUrl::parse("mysql://root@127.0.0.1:3306/mysql").unwrap();
            let admin = rt.block_on(Conn::new(server.opts.clone())).unwrap();
            let mut db = TestDb { rt, admin, name: format!("tandem_t_{tag}_{}", std::process::id()) };
            db.run(&format!("DROP DATABASE IF EXISTS {0}; CREATE DATABASE {0}", db.name));
            db
        }

        /// Runs statements, `{db}` standing for the test's database.
        fn run(&mut self, sql: &str) {
            let sql = sql.replace("{db}", &self.name);
            self.rt.block_on(self.admin.query_drop(sql)).unwrap();
        }

        /// The rows of a query, each as its columns' text joined by `|` (NULL as `NULL`).
        fn rows(&mut self, sql: &str) -> Vec<String> {
            let sql = sql.replace("{db}", &self.name);
            let rows: Vec<mysql_async::Row> = self.rt.block_on(self.admin.query(sql)).unwrap();
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| match r.as_ref(i) {
                            Some(mysql_async::Value::NULL) | None => "NULL".to_string(),
                            Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                            Some(v) => v.as_sql(true),
                        })
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect()
        }

        fn url(&self) -> MyUrl {
            MyUrl::parse(&format!("mysql://root@127.0.0.1:3306/{}", self.name)).unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let sql = format!("DROP DATABASE IF EXISTS {}", self.name);
            let _ = self.rt.block_on(self.admin.query_drop(sql));
        }
    }

    #[test]
    fn an_initial_load_reads_one_consistent_snapshot() {
        let mut db = TestDb::new("snapshot");
        db.run("CREATE TABLE {db}.t (id INT PRIMARY KEY, v TEXT)");
        db.run("INSERT INTO {db}.t SELECT seq, 'original' FROM seq_1_to_10");
        let mut t = MyTable::open(&db.url(), "t", &["id".to_string()], "s", "left").unwrap();
        let ids = |page: &[(Key, Row)]| page.iter().map(|(k, _)| k.as_str().to_string()).collect::<Vec<_>>();
        let first = t.scan(None, 5).unwrap();
        assert_eq!(ids(&first), ["[1]", "[2]", "[3]", "[4]", "[5]"]);
        // Written after the load began: not in the load's pages (capture brings them).
        db.run("UPDATE {db}.t SET v = 'changed' WHERE id = 7");
        db.run("INSERT INTO {db}.t VALUES (11, 'new')");
        let second = t.scan(first.last().map(|(k, _)| k), 5).unwrap();
        assert_eq!(second[1].1.get("v"), Some(&Value::Text("original".into())), "read outside the snapshot");
        let third = t.scan(second.last().map(|(k, _)| k), 5).unwrap();
        assert!(third.is_empty(), "a row inserted after the snapshot was read: {third:?}");
        // The load is done; a new one sees the present.
        let again = t.scan(None, 20).unwrap();
        assert_eq!(again.len(), 11);
    }

    /// A bulk page goes in by LOAD DATA with every value as it was (the format's special
    /// characters, NULL against '', blobs); a page with a key that is taken writes nothing and
    /// is refused, where LOAD DATA LOCAL alone would skip that row and load the rest.
    #[test]
    fn a_bulk_page_loads_exact_values_and_a_taken_key_refuses_the_whole_page() {
        let mut db = TestDb::new("bulk");
        db.run("CREATE TABLE {db}.t (id INT PRIMARY KEY, v TEXT, b BLOB, d DATETIME(6))");
        db.run("INSERT INTO {db}.t VALUES (2, 'was here', NULL, NULL)");
        let mut t = MyTable::open(&db.url(), "t", &["id".to_string()], "s", "right").unwrap();
        t.install().unwrap();
        let row = |id: i64, v: Value, b: Value| -> Row {
            [("id".into(), Value::Int(id)), ("v".into(), v), ("b".into(), b), ("d".into(), Value::Null)]
                .into_iter()
                .collect()
        };
        let text = |s: &str| Value::Text(s.into());
        let mut asked = Vec::new();
        let page =
            vec![row(1, text("one"), Value::Null), row(2, text("two"), Value::Null), row(3, text("x"), Value::Null)];
        let out = t
            .bulk_insert("s:1:bulk:left:1", page, &mut |keys: &[Key]| {
                asked.extend(keys.iter().map(|k| k.as_str().to_string()));
                true
            })
            .unwrap();
        assert!(out.is_err(), "a page with a taken key was accepted");
        assert_eq!(asked, ["[1]", "[2]", "[3]"]);
        assert_eq!(db.rows("SELECT id, v FROM {db}.t ORDER BY id"), ["2|was here"]);
        assert!(t.created("s:1:bulk:left:1").unwrap().is_none(), "a refused page left its marker");

        let tricky = "tab\there\nnew line \\N back\\slash \r\0 🦀 'q' \"d\"";
        let mut page = vec![
            row(4, text(tricky), Value::Bytes(vec![0, 9, 10, 92, 255])),
            row(5, text(""), Value::Bytes(Vec::new())),
            row(6, Value::Null, Value::Null),
            row(7, text("\\N"), text("text in a blob")),
        ];
        page[0].insert("d".into(), text("2026-11-26 13:14:15.5"));
        let out = t.bulk_insert("s:1:bulk:left:2", page, &mut |_: &[Key]| true).unwrap();
        assert!(out.is_ok(), "{out:?}");
        assert!(t.created("s:1:bulk:left:2").unwrap().is_some());
        assert_eq!(
            db.rows("SELECT id, v IS NULL, v = '', HEX(b), b IS NULL, d FROM {db}.t WHERE id > 3 ORDER BY id"),
            [
                "4|0|0|00090A5CFF|0|2026-11-26 13:14:15.500000",
                "5|0|1||0|NULL",
                "6|1|NULL|NULL|1|NULL",
                "7|0|0|7465787420696E206120626C6F62|0|NULL"
            ]
        );
        let read = t.read(&[Key::from_values(&[Value::Int(4)]), Key::from_values(&[Value::Int(7)])]).unwrap();
        assert_eq!(read[0].as_ref().and_then(|r| r.get("v")), Some(&text(tricky)));
        assert_eq!(read[1].as_ref().and_then(|r| r.get("v")), Some(&text("\\N")));
    }

    /// An update is guarded by the values the engine read, compared byte for byte: a user's
    /// edit that only changes case, accents or trailing spaces (equal under the column's
    /// case-insensitive collation) still makes it stale, alone and in a joined statement. JSON,
    /// ENUM and unsigned columns go through a joined statement exactly.
    #[test]
    fn an_update_guard_sees_an_edit_the_collation_calls_equal() {
        let mut db = TestDb::new("guard");
        db.run(
            "CREATE TABLE {db}.t (id INT PRIMARY KEY, v VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci,
             l VARCHAR(20) CHARACTER SET latin1, j JSON, e ENUM('red','green'), u BIGINT UNSIGNED)",
        );
        db.run("INSERT INTO {db}.t VALUES (1, 'ABC', 'café', NULL, 'red', 1), (2, 'abc', 'cafe ', NULL, 'red', 2), (3, 'é', 'x', NULL, 'red', 3), (4, 'd', 'y', NULL, 'red', 4)");
        let mut t = MyTable::open(&db.url(), "t", &["id".to_string()], "s", "right").unwrap();
        t.install().unwrap();
        let text = |s: &str| Value::Text(s.into());
        let update = |id: i64, values: Vec<(&str, Value)>, expect: Vec<(&str, Value)>| Write::Update {
            key: Key::from_values(&[Value::Int(id)]),
            values: values.into_iter().map(|(c, v)| (c.into(), v)).collect(),
            expect: expect.into_iter().map(|(c, v)| (c.into(), v)).collect(),
        };
        let stale = |r: &WriteResult| r.as_ref().is_err_and(|e| e.stale);
        // Alone: the engine read 'abc', a user wrote 'ABC' since.
        let out = t.apply(&[update(1, vec![("v", text("new"))], vec![("v", text("abc"))])]).unwrap();
        assert!(stale(&out[0]), "{out:?}");
        // Joined: one of each pair changed since it was read, by case, accent or trailing space.
        let out = t
            .apply(&[
                update(2, vec![("v", text("n2")), ("l", text("n2"))], vec![("v", text("abc")), ("l", text("cafe"))]),
                update(3, vec![("v", text("n3")), ("l", text("n3"))], vec![("v", text("e")), ("l", text("x"))]),
                update(4, vec![("v", text("n4")), ("l", text("n4"))], vec![("v", text("d")), ("l", text("y"))]),
            ])
            .unwrap();
        assert!(stale(&out[0]) && stale(&out[1]) && out[2].is_ok(), "{out:?}");
        assert_eq!(
            db.rows("SELECT id, v, l FROM {db}.t ORDER BY id"),
            ["1|ABC|café", "2|abc|cafe ", "3|é|x", "4|n4|n4"]
        );
        // JSON, ENUM and unsigned values, set and then checked, by one joined statement.
        let big = Value::Int(i64::MAX);
        let json = text(r#"{"a": [1, "é"]}"#);
        let row = |v: Vec<(&str, Value)>| -> Row { v.into_iter().map(|(c, v)| (c.into(), v)).collect() };
        let (k1, k2) = (Key::from_values(&[Value::Int(1)]), Key::from_values(&[Value::Int(2)]));
        let set1 = row(vec![("j", json.clone()), ("e", text("green")), ("u", big.clone())]);
        let was1 = row(vec![("j", Value::Null), ("e", text("red")), ("u", Value::Int(1))]);
        let set2 = row(vec![("j", text("[]")), ("e", text("green")), ("u", Value::Int(0))]);
        let was2 = row(vec![("j", Value::Null), ("e", text("red")), ("u", Value::Int(2))]);
        let sql =
            t.update_join_sql(&t.update_shape(&set1, &was1), &[(&k1, &set1, &was1), (&k2, &set2, &was2)]).unwrap();
        db.run(&format!("USE {{db}}; {sql}"));
        assert_eq!(db.rows("SELECT ROW_COUNT()"), ["2"], "{sql}");
        assert_eq!(
            db.rows("SELECT id, j, e, u FROM {db}.t WHERE id <= 2 ORDER BY id"),
            [r#"1|{"a": [1, "é"]}|green|9223372036854775807"#, "2|[]|green|0"]
        );
        // The same statement again: nothing holds what it expects any more.
        db.run(&format!("USE {{db}}; {sql}"));
        assert_eq!(db.rows("SELECT ROW_COUNT()"), ["0"]);
        let out = t
            .apply(&[
                update(
                    1,
                    vec![("j", text("{}")), ("e", text("red")), ("u", Value::Int(5))],
                    vec![("j", json), ("e", text("green")), ("u", big)],
                ),
                update(
                    2,
                    vec![("j", text("{}")), ("e", text("red")), ("u", Value::Int(6))],
                    vec![("j", text("[]")), ("e", text("green")), ("u", Value::Int(0))],
                ),
            ])
            .unwrap();
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(db.rows("SELECT id, j, e, u FROM {db}.t WHERE id <= 2 ORDER BY id"), ["1|{}|red|5", "2|{}|red|6"]);
    }

    /// Updates of one shape go in one joined statement with their exact values; one whose
    /// record changed since it was read makes the statement undo itself, and then only that
    /// one is reported stale while the others still apply.
    #[test]
    fn updates_of_one_shape_apply_together_and_a_stale_one_is_singled_out() {
        let mut db = TestDb::new("upd");
        db.run("CREATE TABLE {db}.t (id INT PRIMARY KEY, v TEXT, n DECIMAL(10,2), d DATETIME(6), b BLOB)");
        db.run("INSERT INTO {db}.t SELECT seq, CONCAT('v', seq), seq, NULL, NULL FROM seq_1_to_4");
        let mut t = MyTable::open(&db.url(), "t", &["id".to_string()], "s", "right").unwrap();
        t.install().unwrap();
        let text = |s: &str| Value::Text(s.into());
        let update = |id: i64, v: Value, n: &str, d: Value, b: Value, was: &str| Write::Update {
            key: Key::from_values(&[Value::Int(id)]),
            values: [("v".into(), v), ("n".into(), text(n)), ("d".into(), d), ("b".into(), b)].into_iter().collect(),
            expect: [("v".into(), text(was))].into_iter().collect(),
        };
        let ok = |r: &WriteResult| r.is_ok();
        let out = t
            .apply(&[
                update(1, text("one"), "1.50", Value::Null, Value::Null, "v1"),
                update(2, text("two"), "2.50", Value::Null, Value::Null, "changed meanwhile"),
                update(3, text("three"), "3.50", Value::Null, Value::Null, "v3"),
            ])
            .unwrap();
        assert!(ok(&out[0]) && ok(&out[2]), "{out:?}");
        assert!(out[1].as_ref().is_err_and(|e| e.stale), "{out:?}");
        assert_eq!(
            db.rows("SELECT id, v, n FROM {db}.t ORDER BY id"),
            ["1|one|1.50", "2|v2|2.00", "3|three|3.50", "4|v4|4.00"]
        );

        let tricky = "tab\t 'q' \"d\" back\\slash 🦀";
        // The server's counters show the joined statement kept, not undone for the slow way.
        let status = |db: &mut TestDb| -> Vec<String> {
            db.rows("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_update_multi', 'Com_rollback_to_savepoint')")
        };
        let before = status(&mut db);
        let out = t
            .apply(&[
                update(1, text(tricky), "-0.01", text("2026-11-26 13:14:15.5"), Value::Bytes(vec![0, 255]), "one"),
                update(3, Value::Null, "0", Value::Null, Value::Bytes(Vec::new()), "three"),
                update(4, text(""), "99999999.99", text("2000-02-29 23:59:59"), Value::Null, "v4"),
            ])
            .unwrap();
        assert!(out.iter().all(ok), "{out:?}");
        let after = status(&mut db);
        let count = |rows: &[String], name: &str| -> u64 {
            rows.iter().find_map(|r| r.strip_prefix(&format!("{name}|"))).unwrap().parse().unwrap()
        };
        assert!(count(&after, "Com_update_multi") > count(&before, "Com_update_multi"), "{before:?} {after:?}");
        assert_eq!(count(&after, "Com_rollback_to_savepoint"), count(&before, "Com_rollback_to_savepoint"));
        assert_eq!(
            db.rows("SELECT id, v IS NULL, v = '', n, d, HEX(b) FROM {db}.t ORDER BY id"),
            [
                "1|0|0|-0.01|2026-11-26 13:14:15.500000|00FF",
                "2|0|0|2.00|NULL|NULL",
                "3|1|NULL|0.00|NULL|",
                "4|0|1|99999999.99|2000-02-29 23:59:59.000000|NULL"
            ]
        );
        let read = t.read(&[Key::from_values(&[Value::Int(1)])]).unwrap();
        assert_eq!(read[0].as_ref().and_then(|r| r.get("v")), Some(&text(tricky)));
    }

    #[test]
    fn positions_order_across_files() {
        assert!(pos(2, 4) > pos(1, 900_000_000));
        assert_eq!(split(pos(7, 1234)), (7, 1234));
        assert_eq!(file_number("mariadb-bin.000042"), Some(42));
    }

    #[test]
    fn urls_name_a_database_and_never_echo_the_password() {
        let e = MyUrl::parse("mysql://root:hunter2@127.0.0.1:3306").err().unwrap();
        assert!(!e.contains("hunter2"), "{e}");
        let u = MyUrl::parse("mariadb://root:hunter2@127.0.0.1:3306/crm?sslmode=disable").unwrap();
        assert_eq!(u.label(), "127.0.0.1:3306/crm");
        assert!(!format!("{u:?}").contains("hunter2"));
    }

    #[test]
    fn replica_ids_are_stable_and_high() {
        assert_eq!(server_id("a"), server_id("a"));
        assert_ne!(server_id("a:left"), server_id("a:right"));
        assert!(server_id("x") >= 0x4000_0000);
    }
}
