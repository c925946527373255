//! A crash between Tandem's write to one side and the state commit that records it: on replay,
//! the value Tandem wrote must not pass for a user's change, also where the system cannot say
//! when a record last changed (PostgreSQL): a user's later edit on the other side wins.

mod common;

use common::notes_spec as spec;
use std::cell::Cell;
use std::rc::Rc;
use tandem_core::engine::Engine;
use tandem_core::mapping::{FieldMap, Flow, Side, Transform};
use tandem_core::rules::ConflictRule;
use tandem_core::sim::{Fuse, FusedStore, MemoryTable};
use tandem_core::store::StateStore;
use tandem_core::value::{Key, Name, Row, Value};

fn note(t: &MemoryTable, col: &str) -> Value {
    t.rows.values().next().and_then(|r| r.get(col).cloned()).unwrap_or(Value::Null)
}

#[test]
fn a_write_cut_off_by_a_crash_does_not_beat_a_later_user_edit() {
    let spec = spec();
    let mut found = false;
    for n in 1..60 {
        let clock = Rc::new(Cell::new(1_000));
        let fuse = Fuse::default();
        let mut pg = MemoryTable::new("id", clock.clone(), fuse.clone());
        let mut erp = MemoryTable::new("no", clock.clone(), fuse.clone());
        pg.no_change_times = true; // like PostgreSQL: no per-record change time
        let mut store = FusedStore { inner: Default::default(), fuse: fuse.clone() };
        pg.user_insert([("note".into(), Value::Text("a".into()))].into_iter().collect());
        let step = |store: &mut FusedStore, pg: &mut MemoryTable, erp: &mut MemoryTable, start: bool| {
            clock.set(clock.get() + 10);
            let now_cell = clock.clone();
            let now = move || now_cell.get();
            let mut engine = Engine::new(&spec, store, pg, erp, &now, 10);
            if start {
                engine.start().and_then(|_| engine.cycle())
            } else {
                engine.cycle()
            }
        };
        for _ in 0..3 {
            step(&mut store, &mut pg, &mut erp, true).unwrap();
        }
        assert_eq!(note(&erp, "memo"), Value::Text("a".into()));
        // The ERP user edits; Tandem writes it to pg and is killed somewhere in the cycle.
        let key: Key = erp.rows.keys().next().unwrap().clone();
        erp.user_update(&key, [("memo".into(), Value::Text("b".into()))].into_iter().collect());
        fuse.arm(n);
        let crashed = step(&mut store, &mut pg, &mut erp, false).is_err();
        fuse.disarm();
        let base = store.inner.links("notes").unwrap()[0].base.get("note").cloned();
        if !(crashed && note(&pg, "note") == Value::Text("b".into()) && base == Some(Value::Text("a".into()))) {
            continue;
        }
        // Killed after pg took "b", before the state recorded it. The ERP user edits again.
        found = true;
        erp.user_update(&key, [("memo".into(), Value::Text("c".into()))].into_iter().collect());
        step(&mut store, &mut pg, &mut erp, true).unwrap();
        for _ in 0..5 {
            step(&mut store, &mut pg, &mut erp, false).unwrap();
        }
        assert_eq!(note(&erp, "memo"), Value::Text("c".into()), "crash at tick {n}: the later edit was lost");
        assert_eq!(note(&pg, "note"), Value::Text("c".into()), "crash at tick {n}");
    }
    assert!(found, "no tick cut the cycle between the write and the state commit");
}

/// A group whose write went through on one side and found the record changed on the other:
/// the side that took Tandem's value must not count as edited by a user at the next merge.
#[test]
fn a_half_applied_merge_keeps_what_it_wrote() {
    let mut spec = spec();
    spec.rule = ConflictRule::Prefer(Side::Left);
    spec.fields.push(FieldMap {
        name: "city".into(),
        left: vec!["city".into()],
        right: vec!["town".into()],
        transform: Transform::Rename,
        flow: Flow::Both,
    });
    let clock = Rc::new(Cell::new(1_000));
    let fuse = Fuse::default();
    let mut pg = MemoryTable::new("id", clock.clone(), fuse.clone());
    let mut erp = MemoryTable::new("no", clock.clone(), fuse.clone());
    let mut store = FusedStore { inner: Default::default(), fuse };
    let row = |pairs: &[(&str, &str)]| -> Row {
        pairs.iter().map(|(c, v)| (Name::from(*c), Value::Text(v.to_string()))).collect()
    };
    let pk = pg.user_insert(row(&[("note", "a"), ("city", "x")]));
    let step = |store: &mut FusedStore, pg: &mut MemoryTable, erp: &mut MemoryTable| {
        clock.set(clock.get() + 10);
        let now_cell = clock.clone();
        let now = move || now_cell.get();
        let mut engine = Engine::new(&spec, store, pg, erp, &now, 10);
        engine.start().and_then(|_| engine.cycle()).unwrap();
    };
    for _ in 0..3 {
        step(&mut store, &mut pg, &mut erp);
    }
    let ek: Key = erp.rows.keys().next().unwrap().clone();
    // Each side edits a different field; while Tandem writes, an ERP user changes the town,
    // so the ERP write finds the record changed and only the pg write goes through.
    pg.user_update(&pk, row(&[("city", "y")]));
    erp.user_update(&ek, row(&[("memo", "b")]));
    erp.interfere.push((ek.clone(), row(&[("town", "z")])));
    step(&mut store, &mut pg, &mut erp);
    assert_eq!(note(&pg, "note"), Value::Text("b".into()));
    // The ERP user edits the note again: that edit must win over the "b" Tandem wrote to pg.
    erp.user_update(&ek, row(&[("memo", "c")]));
    for _ in 0..4 {
        step(&mut store, &mut pg, &mut erp);
    }
    assert_eq!(note(&pg, "note"), Value::Text("c".into()), "the ERP's later edit was lost");
    assert_eq!(note(&erp, "memo"), Value::Text("c".into()));
}

/// An initial load in bulk where two fields read one column: each gets its value (the load
/// moves values out of the records it reads only where no other field needs them).
#[test]
fn a_bulk_load_gives_a_column_read_by_two_fields_to_both() {
    let mut spec = spec();
    spec.fields.push(FieldMap {
        name: "summary".into(),
        left: vec!["note".into()],
        right: vec!["summary".into()],
        transform: Transform::Rename,
        flow: Flow::From(Side::Left),
    });
    let clock = Rc::new(Cell::new(1_000));
    let fuse = Fuse::default();
    let mut pg = MemoryTable::new("id", clock.clone(), fuse.clone());
    let mut erp = MemoryTable::new("no", clock.clone(), fuse.clone());
    let mut store = FusedStore { inner: Default::default(), fuse };
    for i in 0..25 {
        pg.user_insert([("note".into(), Value::Text(format!("n{i}")))].into_iter().collect());
    }
    let now = || 2_000;
    for _ in 0..6 {
        let mut engine = Engine::new(&spec, &mut store, &mut pg, &mut erp, &now, 10);
        engine.start().and_then(|_| engine.cycle()).unwrap();
    }
    let audit = store.inner.audit(None).unwrap();
    assert!(audit.iter().any(|a| a.detail.contains("in one batch")), "the load did not go in bulk");
    assert_eq!(erp.rows.len(), 25);
    for row in erp.rows.values() {
        assert!(matches!(row.get("memo"), Some(Value::Text(t)) if t.starts_with('n')), "{row:?}");
        assert_eq!(row.get("memo"), row.get("summary"), "{row:?}");
    }
}
