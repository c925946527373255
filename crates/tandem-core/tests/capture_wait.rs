//! When the engine waits for the change streams: only when it has nothing else to do. During an
//! initial load, or with changes waiting in the inbox, a round takes what the streams have
//! delivered and goes on (waiting there would hold every page behind the stream's echo of
//! Tandem's own writes).

use std::cell::Cell;
use std::rc::Rc;
use tandem_core::engine::{Engine, Report};
use tandem_core::mapping::{FieldMap, Flow, Side, Transform};
use tandem_core::rules::{ConflictRule, DeleteRule, EntitySpec, OnPositionLost, SyncSpec};
use tandem_core::sim::{Fuse, MemoryTable};
use tandem_core::store::{MemoryStore, StateStore};
use tandem_core::value::{Key, Row, Value};

fn spec() -> SyncSpec {
    SyncSpec {
        name: "notes".into(),
        sides: [
            EntitySpec { system: "pg".into(), table: "a".into(), key: vec!["id".into()] },
            EntitySpec { system: "erp".into(), table: "b".into(), key: vec!["no".into()] },
        ],
        fields: vec![FieldMap {
            name: "note".into(),
            left: vec!["note".into()],
            right: vec!["memo".into()],
            transform: Transform::Rename,
            flow: Flow::Both,
        }],
        rule: ConflictRule::Latest,
        field_rules: vec![],
        tie_break: Side::Left,
        match_on: None,
        deletes: [DeleteRule::Propagate, DeleteRule::Propagate],
        filters: [None, None],
        defaults: [Row::new(), Row::new()],
        on_position_lost: OnPositionLost::Fail,
        sensitive: Vec::new(),
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn streams_are_waited_for_only_when_there_is_nothing_else_to_do() {
    let spec = spec();
    let clock = Rc::new(Cell::new(1_000));
    let fuse = Fuse::default();
    let mut pg = MemoryTable::new("id", clock.clone(), fuse.clone());
    let mut erp = MemoryTable::new("no", clock.clone(), fuse);
    let mut store = MemoryStore::default();
    for i in 0..25 {
        pg.user_insert([("note".into(), text(&format!("n{i}")))].into_iter().collect());
    }
    let now_cell = clock.clone();
    let now = move || now_cell.get();
    // One round; returns its report and the `wait` each side's capture was given.
    let round = |store: &mut MemoryStore, pg: &mut MemoryTable, erp: &mut MemoryTable, start: bool| {
        clock.set(clock.get() + 10);
        let (a, b) = (pg.waits.len(), erp.waits.len());
        let report: Report = {
            let mut engine = Engine::new(&spec, store, pg, erp, &now, 10);
            if start {
                engine.start().unwrap();
            }
            engine.cycle().unwrap()
        };
        let waits = [pg.waits[a..].to_vec(), erp.waits[b..].to_vec()];
        (report, waits)
    };

    // The initial load: 25 records in pages of 10. No round of it waits.
    let mut loading = 0;
    let mut start = true;
    loop {
        let (report, waits) = round(&mut store, &mut pg, &mut erp, start);
        start = false;
        if report.loaded == [0, 0] {
            assert_eq!(waits, [vec![true], vec![true]], "idle after the load: the streams are waited for");
            break;
        }
        loading += 1;
        assert_eq!(waits, [vec![false], vec![false]], "a round of the initial load does not wait");
    }
    assert!(loading >= 3, "the load took {loading} rounds");
    assert_eq!(erp.rows.len(), 25);

    // A backlog: 25 edits on each side, more than a batch. While changes wait in the inbox,
    // rounds do not wait; once it is empty they do again.
    let keys: [Vec<Key>; 2] = [pg.rows.keys().cloned().collect(), erp.rows.keys().cloned().collect()];
    for k in &keys[0] {
        pg.user_update(k, [("note".into(), text("edited in pg"))].into_iter().collect());
    }
    for k in &keys[1] {
        erp.user_update(k, [("memo".into(), text("edited in erp"))].into_iter().collect());
    }
    let mut saw_backlog = false;
    for _ in 0..20 {
        let inbox_before =
            store.inbox_len("notes", Side::Left).unwrap() + store.inbox_len("notes", Side::Right).unwrap();
        let (_, waits) = round(&mut store, &mut pg, &mut erp, false);
        let expected = inbox_before == 0;
        saw_backlog |= !expected;
        assert_eq!(waits, [vec![expected], vec![expected]], "inbox held {inbox_before} changes");
    }
    assert!(saw_backlog, "the edits never queued up in the inbox");
    assert!(pg.rows.values().chain(erp.rows.values()).all(|r| {
        let v = r.get("note").or_else(|| r.get("memo"));
        v == Some(&text("edited in pg")) || v == Some(&text("edited in erp"))
    }));
}
