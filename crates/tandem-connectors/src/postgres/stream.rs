//! Logical replication capture: a `pgoutput` stream from Tandem's slot, decoded into the keys
//! each committed transaction touched.
//!
//! Whole transactions are delivered at their commit's end LSN, so a cursor is always a
//! transaction boundary: a crash in the middle of a large transaction re-reads it whole from
//! the slot, and nothing is skipped or delivered twice past the cursor. Transactions tagged with
//! one of Tandem's replication origins (its own writes) are dropped. The slot's confirmed
//! position moves only in [`Capture::ack`], after the engine made the changes durable; when
//! nothing is pending, a keepalive's WAL end is offered as the next position so WAL does not
//! pile up behind an idle slot.

use super::codec::from_text;
use crate::commits::{Commits, DRAIN};
use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tandem_core::connector::{ChangePage, ConnectorError, ErrorKind};
use tandem_core::value::{Key, Value};

/// Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How often the acknowledged position is reported to the server while it moves.
pub(crate) const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// How long stopping a stream waits for the last acknowledged position to be reported.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Replication origins whose transactions are Tandem's own writes start with this.
pub(crate) const ORIGIN_PREFIX: &str = "tandem_";

struct Relation {
    columns: Vec<(String, u32)>,
}

struct Txn {
    keys: Vec<Key>,
    own: bool,
    at_ms: i64,
}

/// A running replication stream.
pub(crate) struct Capture {
    client: ReplicationClient,
    parser: LogicalReplicationParser,
    relations: HashMap<u32, Relation>,
    key_columns: Vec<String>,
    open: Option<Txn>,
    commits: Commits,
}

fn err(kind: ErrorKind, what: String) -> ConnectorError {
    ConnectorError::new(kind, what)
}

impl Capture {
    /// Starts streaming from the slot at `from` (the server resumes at the slot's confirmed
    /// position when that is later).
    pub(crate) async fn start(cfg: ReplicationConfig, key_columns: Vec<String>) -> Result<Capture, ConnectorError> {
        let slot = cfg.slot.clone();
        let client = ReplicationClient::connect(cfg)
            .await
            .map_err(|e| err(ErrorKind::Unavailable, format!("starting replication from slot {slot}: {e}")))?;
        Ok(Capture {
            client,
            parser: LogicalReplicationParser::with_protocol_version(1),
            relations: HashMap::new(),
            key_columns,
            open: None,
            commits: Commits::new(0),
        })
    }

    fn key_of(&self, relation: u32, tuple: &TupleData) -> Result<Key, ConnectorError> {
        let rel = self
            .relations
            .get(&relation)
            .ok_or_else(|| err(ErrorKind::Internal, format!("change for unknown relation {relation}")))?;
        let mut values = Vec::with_capacity(self.key_columns.len());
        for k in &self.key_columns {
            let i = rel
                .columns
                .iter()
                .position(|(n, _)| n == k)
                .ok_or_else(|| err(ErrorKind::Schema, format!("key column {k} is not in the replicated table")))?;
            let col = tuple
                .get_column(i)
                .ok_or_else(|| err(ErrorKind::Internal, "short tuple in the replication stream".into()))?;
            let text = col.as_str();
            values.push(if col.is_null() { Value::Null } else { from_text(rel.columns[i].1, text.as_deref()) });
        }
        Ok(Key::from_values(&values))
    }

    fn handle(&mut self, ev: ReplicationEvent) -> Result<(), ConnectorError> {
        match ev {
            ReplicationEvent::Begin { commit_time_micros, .. } => {
                self.open =
                    Some(Txn { keys: Vec::new(), own: false, at_ms: (commit_time_micros + PG_EPOCH_MICROS) / 1000 });
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if let Some(txn) = self.open.take() {
                    let keys = if txn.own { Vec::new() } else { txn.keys };
                    self.commits.commit(end_lsn.as_u64(), keys, txn.at_ms);
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if self.open.is_none() {
                    self.commits.pass(wal_end.as_u64());
                }
            }
            ReplicationEvent::XLogData { data, .. } => {
                // A row change of one of Tandem's own transactions is dropped unread (the
                // origin message comes first in a transaction); relation messages still count.
                if self.open.as_ref().is_some_and(|t| t.own) && matches!(data.first(), Some(b'I' | b'U' | b'D')) {
                    return Ok(());
                }
                let msg = self
                    .parser
                    .parse_wal_message(&data)
                    .map_err(|e| err(ErrorKind::Internal, format!("undecodable pgoutput message: {e}")))?
                    .message;
                let mut touched = Vec::new();
                match msg {
                    LogicalReplicationMessage::Relation { relation_id, columns, .. } => {
                        let columns = columns.iter().map(|c| (c.name.to_string(), c.type_id)).collect();
                        self.relations.insert(relation_id, Relation { columns });
                    }
                    LogicalReplicationMessage::Origin { origin_name, .. } => {
                        if let Some(t) = self.open.as_mut() {
                            t.own |= origin_name.starts_with(ORIGIN_PREFIX);
                        }
                    }
                    LogicalReplicationMessage::Insert { relation_id, tuple } => {
                        touched.push(self.key_of(relation_id, &tuple)?)
                    }
                    LogicalReplicationMessage::Update { relation_id, old_tuple, new_tuple, .. } => {
                        touched.push(self.key_of(relation_id, &new_tuple)?);
                        if let Some(old) = old_tuple {
                            let k = self.key_of(relation_id, &old)?;
                            if Some(&k) != touched.first() {
                                touched.push(k);
                            }
                        }
                    }
                    LogicalReplicationMessage::Delete { relation_id, old_tuple, .. } => {
                        touched.push(self.key_of(relation_id, &old_tuple)?)
                    }
                    LogicalReplicationMessage::Truncate { .. } => {
                        return Err(err(
                            ErrorKind::Schema,
                            "the table was truncated: a TRUNCATE carries no keys, so Tandem cannot sync it; reload with on_position_lost = \"resnapshot\" after dropping the slot".into(),
                        ));
                    }
                    _ => {}
                }
                if let Some(t) = self.open.as_mut() {
                    t.keys.extend(touched);
                }
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    /// Receives events until the stream has reached `until` (the server's flushed WAL position
    /// when the call began) or `limit` keys are pending, for at most `wait` (zero: only the
    /// events already received); then returns the complete transactions after `after`.
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
            match tokio::task::unconstrained(tokio::time::timeout(left, self.client.recv())).await {
                Ok(Ok(Some(ev))) => self.handle(ev)?,
                Ok(Ok(None)) => return Err(err(ErrorKind::Unavailable, "the replication stream ended".into())),
                Ok(Err(e)) => return Err(err(ErrorKind::Unavailable, format!("replication stream: {e}"))),
                Err(_) => break,
            }
        }
        let open = self.open.is_some();
        Ok(self.commits.page(after, limit, self.commits.reached(after, until, open), open))
    }

    /// The engine has made everything up to `upto` durable: forget it and confirm it to the
    /// server (the slot's `confirmed_flush_lsn`).
    pub(crate) fn ack(&mut self, upto: u64) {
        self.commits.ack(upto);
        self.client.update_applied_lsn(Lsn::from_u64(upto));
    }

    /// Stops the stream, after the server has the last acknowledged position (for at most
    /// [`FLUSH_WAIT`]): otherwise the slot would keep WAL Tandem no longer needs, and the next
    /// start would decode and send it again.
    pub(crate) async fn stop(mut self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        while self.client.is_running() && self.client.feedback_pending_since().is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = self.client.shutdown().await;
    }
}
