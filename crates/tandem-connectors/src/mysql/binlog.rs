//! Binlog capture: a row-based binary log stream from the server, decoded into the keys each
//! committed transaction touched in Tandem's table.
//!
//! A position is `file number << 32 | offset` (binlog files are at most 1 GiB), always at a
//! transaction boundary: a crash in the middle of a large transaction reads it again whole, so
//! nothing is skipped or delivered twice past the cursor. Transactions that wrote a row of
//! `_tandem_writes` are Tandem's own and are dropped. MariaDB sends its own event types (GTID,
//! annotations, checkpoints) to a client like this one as `BEGIN` or dummy query events.

use super::codec::{int, Kind};
use crate::commits::{Commits, DRAIN};
use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};
use std::time::{Duration, Instant};
use tandem_core::connector::{ChangePage, ConnectorError, ErrorKind};
use tandem_core::value::{Key, Value};

/// The table whose rows mark a transaction as Tandem's own.
pub(crate) const WRITES_TABLE: &str = "_tandem_writes";

/// A binlog position as one number.
pub(crate) fn pos(file: u32, offset: u32) -> u64 {
    (u64::from(file) << 32) | u64::from(offset)
}

/// The file number and offset of a position.
pub(crate) fn split(p: u64) -> (u32, u32) {
    ((p >> 32) as u32, p as u32)
}

/// The number of a binlog file name (`mariadb-bin.000042` → 42).
pub(crate) fn file_number(name: &str) -> Option<u32> {
    name.rsplit_once('.')?.1.parse().ok()
}

/// `file:offset`, for messages.
pub(crate) fn label(base: &str, p: u64) -> String {
    let (f, o) = split(p);
    format!("{base}.{f:06}:{o}")
}

struct Txn {
    keys: Vec<Key>,
    own: bool,
    at_ms: i64,
}

/// What capture needs to know about the table.
#[derive(Clone)]
pub(crate) struct Target {
    pub db: String,
    pub table: String,
    /// Index and kind of each key column, in key order.
    pub key: Vec<(usize, Kind)>,
}

/// A running binlog stream.
pub(crate) struct Capture {
    stream: BinlogStream,
    target: Target,
    file: u32,
    open: Option<Txn>,
    commits: Commits,
}

fn err(kind: ErrorKind, what: String) -> ConnectorError {
    ConnectorError::new(kind, what)
}

fn stream_err(e: mysql_async::Error) -> ConnectorError {
    err(ErrorKind::Unavailable, format!("binlog stream: {e}"))
}

impl Capture {
    /// Starts streaming at `from` (a transaction boundary) as replica `server_id`.
    pub(crate) async fn start(
        opts: Opts,
        server_id: u32,
        base: String,
        from: u64,
        target: Target,
    ) -> Result<Capture, ConnectorError> {
        let (file, offset) = split(from);
        let name = format!("{base}.{file:06}");
        let conn = Conn::new(opts)
            .await
            .map_err(|e| err(ErrorKind::Unavailable, format!("connecting for the binlog: {e}")))?;
        let request =
            BinlogStreamRequest::new(server_id).with_filename(name.as_bytes()).with_pos(u64::from(offset.max(4)));
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| err(ErrorKind::Unavailable, format!("starting the binlog stream at {name}:{offset}: {e}")))?;
        Ok(Capture { stream, target, file, open: None, commits: Commits::new(from) })
    }

    fn key_of(&self, row: &mysql_async::binlog::row::BinlogRow) -> Result<Key, ConnectorError> {
        let mut values = Vec::with_capacity(self.target.key.len());
        for (i, kind) in &self.target.key {
            let v = match row.as_ref(*i) {
                None => {
                    return Err(err(
                        ErrorKind::Schema,
                        "a binlog row image lacks a key column (set binlog_row_image = FULL)".into(),
                    ))
                }
                Some(BinlogValue::Value(v)) => match v {
                    mysql_async::Value::NULL => Value::Null,
                    mysql_async::Value::Int(x) => int(*kind, *x),
                    mysql_async::Value::UInt(x) => {
                        i64::try_from(*x).map(Value::Int).unwrap_or_else(|_| Value::Text(x.to_string()))
                    }
                    mysql_async::Value::Bytes(b) => {
                        let t = String::from_utf8_lossy(b).into_owned();
                        match kind {
                            Kind::Int { .. } => t.parse().map(Value::Int).unwrap_or(Value::Text(t)),
                            _ => Value::Text(t),
                        }
                    }
                    other => Value::Text(other.as_sql(true).trim_matches('\'').to_string()),
                },
                Some(_) => {
                    return Err(err(
                        ErrorKind::Schema,
                        "a key column of a type Tandem cannot read from the binlog".into(),
                    ))
                }
            };
            values.push(v);
        }
        Ok(Key::from_values(&values))
    }

    /// Ends the open transaction at `end`; its commit time is the commit event's.
    fn close_txn(&mut self, end: u64, at_ms: i64) {
        if let Some(txn) = self.open.take() {
            let keys = if txn.own { Vec::new() } else { txn.keys };
            self.commits.commit(end, keys, at_ms.max(txn.at_ms));
        }
    }

    fn handle(&mut self, ev: mysql_async::binlog::events::Event) -> Result<(), ConnectorError> {
        let header = ev.header();
        let end = pos(self.file, header.log_pos());
        let at_ms = i64::from(header.timestamp()) * 1000;
        let data = ev.read_data().map_err(|e| err(ErrorKind::Internal, format!("undecodable binlog event: {e}")))?;
        tracing::trace!(event = ?header.event_type_raw(), end = header.log_pos(), open = self.open.is_some(), "binlog event");
        match data {
            Some(EventData::RotateEvent(r)) => {
                if let Some(n) = file_number(&r.name()) {
                    self.file = n;
                    if self.open.is_none() {
                        self.commits.pass(pos(n, r.position() as u32));
                    }
                }
            }
            Some(EventData::QueryEvent(q)) => {
                let sql = q.query();
                let sql = sql.trim();
                let word = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                match word.as_str() {
                    "BEGIN" | "XA" if self.open.is_none() => {
                        self.open = Some(Txn { keys: Vec::new(), own: false, at_ms });
                    }
                    "COMMIT" => self.close_txn(end, at_ms),
                    "ROLLBACK" if !sql.to_ascii_uppercase().contains(" TO ") => {
                        // A transaction that touched a non-transactional table logs its end so.
                        self.close_txn(end, at_ms)
                    }
                    // Savepoints, MariaDB's stand-ins for its own events ("# Dummy event …") and
                    // anything else inside a transaction belong to it.
                    _ if self.open.is_some() || sql.starts_with('#') => {}
                    // A statement of its own (DDL): its end is a boundary (below).
                    _ => {}
                }
            }
            Some(EventData::GtidEvent(_)) if self.open.is_none() => {
                self.open = Some(Txn { keys: Vec::new(), own: false, at_ms });
            }
            Some(EventData::XidEvent(_)) => self.close_txn(end, at_ms),
            Some(EventData::RowsEvent(rows)) => self.rows(&rows, at_ms)?,
            _ => {}
        }
        // Any event outside a transaction ends at a boundary (the server's artificial events
        // at the start of a stream have no position).
        if self.open.is_none() && header.log_pos() != 0 {
            self.commits.pass(end);
        }
        Ok(())
    }

    fn rows(&mut self, rows: &RowsEventData<'_>, at_ms: i64) -> Result<(), ConnectorError> {
        // Rows always come inside a transaction; open one should a server not say BEGIN.
        let txn = self.open.get_or_insert(Txn { keys: Vec::new(), own: false, at_ms });
        let own = txn.own;
        let Some(tme) = self.stream.get_tme(rows.table_id()) else {
            return Err(err(ErrorKind::Internal, format!("rows for unknown table id {}", rows.table_id())));
        };
        if tme.table_name() == WRITES_TABLE {
            if let Some(t) = self.open.as_mut() {
                t.own = true;
            }
            return Ok(());
        }
        if own {
            return Ok(());
        }
        if tme.database_name() != self.target.db || tme.table_name() != self.target.table {
            return Ok(());
        }
        let mut keys = Vec::new();
        for r in rows.rows(tme) {
            let (before, after) = r.map_err(|e| err(ErrorKind::Internal, format!("undecodable binlog rows: {e}")))?;
            let mut first = None;
            if let Some(a) = &after {
                let k = self.key_of(a)?;
                first = Some(k.clone());
                keys.push(k);
            }
            if let Some(b) = &before {
                let k = self.key_of(b)?;
                if Some(&k) != first.as_ref() {
                    keys.push(k);
                }
            }
        }
        if let Some(t) = self.open.as_mut() {
            t.keys.extend(keys);
        }
        Ok(())
    }

    /// Receives events until the stream has reached `until` (the server's binlog position when
    /// the call began) or `limit` keys are pending, for at most `wait` (zero: only the events
    /// already received); then returns the complete transactions after `after`.
    pub(crate) async fn changes(
        &mut self,
        after: u64,
        limit: usize,
        until: u64,
        wait: Duration,
    ) -> Result<ChangePage, ConnectorError> {
        let deadline = Instant::now() + wait;
        while self.commits.pending_keys(after) < limit && !self.commits.reached(after, until, self.open.is_some()) {
            let now = Instant::now();
            if now > deadline + DRAIN {
                break;
            }
            // Unconstrained: with no time left, the events already here are still taken.
            let left = deadline.saturating_duration_since(now);
            match tokio::task::unconstrained(tokio::time::timeout(left, self.stream.next())).await {
                Ok(Some(Ok(ev))) => self.handle(ev)?,
                Ok(Some(Err(e))) => return Err(stream_err(e)),
                Ok(None) => return Err(err(ErrorKind::Unavailable, "the binlog stream ended".into())),
                Err(_) => break,
            }
        }
        let open = self.open.is_some();
        let reached = self.commits.reached(after, until, open);
        tracing::trace!(until, seen = self.commits.seen(), reached, "binlog page");
        Ok(self.commits.page(after, limit, reached, open))
    }

    /// Forgets transactions up to `upto` (durable in Tandem's state).
    pub(crate) fn ack(&mut self, upto: u64) {
        self.commits.ack(upto);
    }

    /// Stops the stream.
    pub(crate) async fn stop(self) {
        let _ = self.stream.close().await;
    }
}
