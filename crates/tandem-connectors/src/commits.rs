//! The committed transactions a change stream has delivered and the engine has not yet made
//! durable, shared by the PostgreSQL (logical replication) and MariaDB (binlog) captures: pages
//! of whole transactions after a position, and the boundary the stream has reached.

use std::collections::VecDeque;
use std::time::Duration;
use tandem_core::connector::{ChangePage, Touched};
use tandem_core::value::Key;

/// How long a page of changes waits for the stream to reach the server's current position.
pub(crate) const STREAM_WAIT: Duration = Duration::from_secs(2);
/// How long past its wait a page goes on taking events that have already arrived (a stream
/// that never pauses must not hold the engine).
pub(crate) const DRAIN: Duration = Duration::from_millis(50);

struct Done {
    end: u64,
    keys: Vec<Key>,
    at_ms: i64,
}

/// Committed transactions in stream order, and how far the stream has been seen.
pub(crate) struct Commits {
    done: VecDeque<Done>,
    /// The end of the last transaction, or of anything else the stream said outside a
    /// transaction (a keepalive, a statement of its own): a position to resume from.
    seen: u64,
}

impl Commits {
    /// An empty log whose stream starts at `from`.
    pub(crate) fn new(from: u64) -> Commits {
        Commits { done: VecDeque::new(), seen: from }
    }

    /// A transaction committed at `end` touching `keys` (empty for Tandem's own).
    pub(crate) fn commit(&mut self, end: u64, keys: Vec<Key>, at_ms: i64) {
        self.done.push_back(Done { end, keys, at_ms });
        self.seen = self.seen.max(end);
    }

    /// The stream passed `end` outside any transaction.
    pub(crate) fn pass(&mut self, end: u64) {
        self.seen = self.seen.max(end);
    }

    /// How far the stream has been seen.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// Keys waiting after `after` (a transaction without keys counts one).
    pub(crate) fn pending_keys(&self, after: u64) -> usize {
        self.done.iter().filter(|d| d.end > after).map(|d| d.keys.len().max(1)).sum()
    }

    /// Whether the stream, with no transaction open, has reached `until`. Everything up to
    /// `after` is done already: with nothing written since, the stream has nothing to say (and
    /// an idle server may send nothing to say so).
    pub(crate) fn reached(&self, after: u64, until: u64, open: bool) -> bool {
        !open && self.seen.max(after) >= until
    }

    /// Whole transactions after `after`, up to `limit` keys (at least one transaction).
    pub(crate) fn page(&self, after: u64, limit: usize, reached: bool, open: bool) -> ChangePage {
        let mut page = ChangePage { touched: Vec::new(), next: after, behind: !reached, label: None };
        for d in self.done.iter().filter(|d| d.end > after) {
            if !page.touched.is_empty() && page.touched.len() + d.keys.len() > limit {
                page.behind = true;
                break;
            }
            page.touched.extend(d.keys.iter().map(|k| Touched { pos: d.end, key: k.clone(), at_ms: d.at_ms }));
            page.next = d.end;
        }
        if self.done.iter().all(|d| d.end <= page.next) && !open && self.seen > page.next {
            page.next = self.seen;
        }
        page
    }

    /// Forgets transactions up to `upto` (durable in Tandem's state).
    pub(crate) fn ack(&mut self, upto: u64) {
        while self.done.front().is_some_and(|d| d.end <= upto) {
            self.done.pop_front();
        }
    }
}
