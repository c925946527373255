//! What the engine tests share: a one-field sync between a `pg` table `a` (key `id`, field
//! `note`) and an `erp` table `b` (key `no`, field `memo`).

use tandem_core::mapping::{FieldMap, Flow, Transform};
use tandem_core::rules::{ConflictRule, EntitySpec, SyncSpec};

/// The sync: latest change wins, deletes propagate both ways.
pub fn notes_spec() -> SyncSpec {
    SyncSpec::new(
        "notes",
        [
            EntitySpec { system: "pg".into(), table: "a".into(), key: vec!["id".into()] },
            EntitySpec { system: "erp".into(), table: "b".into(), key: vec!["no".into()] },
        ],
        vec![FieldMap {
            name: "note".into(),
            left: vec!["note".into()],
            right: vec!["memo".into()],
            transform: Transform::Rename,
            flow: Flow::Both,
        }],
        ConflictRule::Latest,
    )
}
