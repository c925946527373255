//! What the engine tests share: a one-field sync between a `pg` table `a` (key `id`, field
//! `note`) and an `erp` table `b` (key `no`, field `memo`).

use tandem_core::mapping::{FieldMap, Flow, Side, Transform};
use tandem_core::rules::{ConflictRule, DeleteRule, EntitySpec, OnPositionLost, SyncSpec};
use tandem_core::value::Row;

/// The sync: latest change wins, deletes propagate both ways.
pub fn notes_spec() -> SyncSpec {
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
