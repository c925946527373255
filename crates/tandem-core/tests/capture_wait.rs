//! When the engine waits for the change streams: only when it has nothing else to do. During an
//! initial load, or with changes waiting in the inbox, a round takes what the streams have
//! delivered and goes on (waiting there would hold every page behind the stream's echo of
//! Tandem's own writes).

mod common;

use common::notes_spec as spec;
use std::cell::Cell;
use std::rc::Rc;
use tandem_core::engine::{Engine, Report};
use tandem_core::mapping::Side;
use tandem_core::sim::{Fuse, MemoryTable};
use tandem_core::store::{MemoryStore, StateStore};
use tandem_core::value::{Key, Value};

/// A shared clock, the two empty tables on it and an empty state store.
fn pair() -> (Rc<Cell<i64>>, MemoryTable, MemoryTable, MemoryStore) {
    let clock = Rc::new(Cell::new(1_000));
    let fuse = Fuse::default();
    let pg = MemoryTable::new("id", clock.clone(), fuse.clone());
    let erp = MemoryTable::new("no", clock.clone(), fuse);
    (clock, pg, erp, MemoryStore::default())
}

/// One round of the engine (starting it first with `start`), the clock 10 ms on; returns the
/// round's report and the `wait` each side's capture was first given (a side that fills the
/// rest of a batch calls again without waiting).
fn round(
    clock: &Rc<Cell<i64>>,
    store: &mut MemoryStore,
    pg: &mut MemoryTable,
    erp: &mut MemoryTable,
    start: bool,
) -> (Report, [Option<bool>; 2]) {
    clock.set(clock.get() + 10);
    let (a, b) = (pg.waits.len(), erp.waits.len());
    let spec = spec();
    let now_cell = clock.clone();
    let now = move || now_cell.get();
    let report = {
        let mut engine = Engine::new(&spec, store, pg, erp, &now, 10);
        if start {
            engine.start().unwrap();
        }
        engine.cycle().unwrap()
    };
    (report, [pg.waits[a..].first().copied(), erp.waits[b..].first().copied()])
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn streams_are_waited_for_only_when_there_is_nothing_else_to_do() {
    let (clock, mut pg, mut erp, mut store) = pair();
    for i in 0..25 {
        pg.user_insert([("note".into(), text(&format!("n{i}")))].into_iter().collect());
    }

    // The initial load: 25 records in pages of 10. No round of it waits.
    let mut loading = 0;
    let mut start = true;
    loop {
        let (report, waits) = round(&clock, &mut store, &mut pg, &mut erp, start);
        start = false;
        if report.loaded == [0, 0] {
            assert_eq!(waits, [Some(true), Some(true)], "idle after the load: the streams are waited for");
            break;
        }
        loading += 1;
        assert_eq!(waits, [Some(false), Some(false)], "a round of the initial load does not wait");
    }
    assert!(loading >= 3, "the load took {loading} rounds");
    assert_eq!(erp.rows.len(), 25);

    // 25 edits on each side, more than a batch: each round takes at most a batch (half from
    // each side), which is merged directly, so nothing queues in the inbox and every round waits.
    let keys: [Vec<Key>; 2] = [pg.rows.keys().cloned().collect(), erp.rows.keys().cloned().collect()];
    for k in &keys[0] {
        pg.user_update(k, [("note".into(), text("edited in pg"))].into_iter().collect());
    }
    for k in &keys[1] {
        erp.user_update(k, [("memo".into(), text("edited in erp"))].into_iter().collect());
    }
    for _ in 0..8 {
        let (report, waits) = round(&clock, &mut store, &mut pg, &mut erp, false);
        assert!(report.captured[0] + report.captured[1] <= 10, "a round took more than a batch: {report:?}");
        assert_eq!(store.inbox_len("notes", Side::Left).unwrap() + store.inbox_len("notes", Side::Right).unwrap(), 0);
        assert_eq!(waits, [Some(true), Some(true)]);
    }
    assert!(pg.rows.values().chain(erp.rows.values()).all(|r| {
        let v = r.get("note").or_else(|| r.get("memo"));
        v == Some(&text("edited in pg")) || v == Some(&text("edited in erp"))
    }));
    // Edits on one side only: that side fills the whole batch (half, then what the other left).
    for k in &keys[0] {
        pg.user_update(k, [("note".into(), text("pg alone"))].into_iter().collect());
    }
    let (report, _) = round(&clock, &mut store, &mut pg, &mut erp, false);
    assert_eq!(report.captured, [10, 0]);
    for _ in 0..3 {
        round(&clock, &mut store, &mut pg, &mut erp, false);
    }
    assert!(erp.rows.values().all(|r| r.get("memo") == Some(&text("pg alone"))));
    let mut notes: Vec<_> = pg.rows.values().map(|r| r.get("note").cloned()).collect();
    let mut memos: Vec<_> = erp.rows.values().map(|r| r.get("memo").cloned()).collect();
    notes.sort_by_key(|v| format!("{v:?}"));
    memos.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(notes, memos, "the sides did not converge");
}

#[test]
fn a_backlog_in_the_inbox_is_merged_without_waiting_for_the_streams() {
    let (clock, mut pg, mut erp, mut store) = pair();
    // Both sides hold records: the first load goes record by record through the inbox, two
    // pages a round against one batch merged, so a backlog builds up.
    for i in 0..25 {
        pg.user_insert([("note".into(), text(&format!("p{i}")))].into_iter().collect());
        erp.user_insert([("memo".into(), text(&format!("e{i}")))].into_iter().collect());
    }
    let mut saw_backlog = false;
    let mut start = true;
    for _ in 0..30 {
        let inbox_before =
            store.inbox_len("notes", Side::Left).unwrap() + store.inbox_len("notes", Side::Right).unwrap();
        let (report, waits) = round(&clock, &mut store, &mut pg, &mut erp, start);
        start = false;
        let expected = report.loaded == [0, 0] && inbox_before == 0;
        saw_backlog |= report.loaded == [0, 0] && inbox_before > 0;
        assert_eq!(waits, [Some(expected), Some(expected)], "loaded {:?}, inbox held {inbox_before}", report.loaded);
    }
    assert!(saw_backlog, "the load never left a backlog behind");
    assert_eq!((pg.rows.len(), erp.rows.len()), (50, 50));
}
