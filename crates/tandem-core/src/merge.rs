//! Three-way, field-level merge of a linked record against its base.

use crate::mapping::{Flow, Side};
use crate::rules::{ConflictRule, SyncSpec};
use crate::value::{Row, Value};

/// A rule decision about one field, for the audit trail (and, with `hold`, the conflict list).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Canonical field name.
    pub field: String,
    /// The base value, `None` when the record had no base (first link by `match_on`).
    pub base: Option<Value>,
    /// Left's canonical value.
    pub left: Value,
    /// Right's canonical value.
    pub right: Value,
    /// The side whose value was kept; `None` when held.
    pub winner: Option<Side>,
    /// The rule that decided (`latest`, `prefer:right`, `hold`, `one_way:right`).
    pub rule: String,
}

/// What a merge decided for one record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Merged {
    /// Canonical value each field must have on both sides (held fields are left out).
    pub values: Row,
    /// The new base.
    pub base: Row,
    /// Rule decisions taken (fields changed on both sides, or edits to a read-only copy).
    pub decisions: Vec<Decision>,
    /// Conflicts held for a person.
    pub held: Vec<Decision>,
}

/// Merges canonical `left` and `right` records against `base`.
///
/// A field changed on one side only takes that side's value; a field changed on both sides (to
/// different values) goes to its conflict rule. `times` are the commit times (ms) of each side's
/// latest change to the record, for `latest`.
pub fn merge(spec: &SyncSpec, left: &Row, right: &Row, base: Option<&Row>, times: [i64; 2]) -> Merged {
    const NULL: &Value = &Value::Null;
    let mut out = Merged::default();
    for field in &spec.fields {
        let name = &field.name;
        // Borrowed: a value is copied only into what the merge keeps.
        let l = left.get(name).unwrap_or(NULL);
        let r = right.get(name).unwrap_or(NULL);
        let b = base.map(|b| b.get(name).unwrap_or(NULL));
        let decision = |winner: Option<Side>, rule: String| Decision {
            field: name.to_string(),
            base: b.cloned(),
            left: l.clone(),
            right: r.clone(),
            winner,
            rule,
        };
        let pick = |side: Side| if side == Side::Left { l } else { r };
        let chosen = if let Flow::From(owner) = field.flow {
            let other = if owner == Side::Left { r } else { l };
            let owner_v = pick(owner);
            if !other.same(owner_v) && b.is_some_and(|b| !other.same(b)) {
                out.decisions.push(decision(Some(owner), format!("one_way:{owner}")));
            }
            owner_v
        } else if l.same(r) {
            l
        } else if b.is_none() && (l.is_null() || r.is_null()) {
            // First link of two existing records: an empty field takes the other side's value.
            if l.is_null() {
                r
            } else {
                l
            }
        } else if b.is_some_and(|b| l.same(b)) {
            r
        } else if b.is_some_and(|b| r.same(b)) {
            l
        } else {
            let rule = spec.rule_for(name);
            if *rule == ConflictRule::MergeLines {
                if let Some(merged) = merge_lines(b, l, r) {
                    out.decisions.push(decision(None, rule.name()));
                    out.base.insert(name.clone(), merged.clone());
                    out.values.insert(name.clone(), merged);
                    continue;
                }
            }
            let winner = match rule {
                ConflictRule::Prefer(side) => Some(*side),
                // Values that are not text do not merge by lines: a person decides.
                ConflictRule::Hold | ConflictRule::MergeLines => None,
                ConflictRule::Latest => Some(match times[0].cmp(&times[1]) {
                    std::cmp::Ordering::Greater => Side::Left,
                    std::cmp::Ordering::Less => Side::Right,
                    std::cmp::Ordering::Equal => spec.tie_break,
                }),
            };
            match winner {
                Some(side) => {
                    out.decisions.push(decision(Some(side), rule.name()));
                    pick(side)
                }
                None => {
                    out.held.push(decision(None, rule.name()));
                    out.base.insert(name.clone(), b.cloned().unwrap_or(Value::Null));
                    continue;
                }
            }
        };
        out.base.insert(name.clone(), chosen.clone());
        out.values.insert(name.clone(), chosen.clone());
    }
    out
}

/// The line merge of two texts against their base (see [`ConflictRule::MergeLines`]); `None`
/// when a value is not text.
pub fn merge_lines(base: Option<&Value>, left: &Value, right: &Value) -> Option<Value> {
    let lines = |v: &Value| -> Option<Vec<String>> {
        match v {
            Value::Null => Some(Vec::new()),
            Value::Text(t) => Some(t.lines().map(str::to_string).collect()),
            _ => None,
        }
    };
    let b = match base {
        Some(v) => lines(v)?,
        None => Vec::new(),
    };
    let (l, r) = (lines(left)?, lines(right)?);
    let mut out: Vec<String> = Vec::new();
    for line in &l {
        if (r.contains(line) || !b.contains(line)) && !out.contains(line) {
            out.push(line.clone());
        }
    }
    for line in &r {
        if !b.contains(line) && !out.contains(line) {
            out.push(line.clone());
        }
    }
    Some(if out.is_empty() && left.is_null() && right.is_null() { Value::Null } else { Value::Text(out.join("\n")) })
}

#[cfg(test)]
mod tests {
    use super::tests_support::spec;
    use super::*;

    fn row(x: &str, y: &str, t: &str) -> Row {
        [("x", x), ("y", y), ("terms", t)]
            .iter()
            .map(|(k, v)| (crate::value::Name::from(*k), Value::Text(v.to_string())))
            .collect()
    }

    #[test]
    fn one_sided_changes_to_different_fields_both_survive() {
        let s = spec(ConflictRule::Latest);
        let m = merge(&s, &row("x1", "y0", "t"), &row("x0", "y1", "t"), Some(&row("x0", "y0", "t")), [5, 1]);
        assert_eq!(m.values, row("x1", "y1", "t"));
        assert!(m.decisions.is_empty());
    }

    #[test]
    fn latest_picks_the_later_side_and_audits_it() {
        let s = spec(ConflictRule::Latest);
        let m = merge(&s, &row("xl", "y0", "t"), &row("xr", "y0", "t"), Some(&row("x0", "y0", "t")), [1, 9]);
        assert_eq!(m.values["x"], Value::Text("xr".into()));
        assert_eq!(m.decisions.len(), 1);
        assert_eq!(m.decisions[0].winner, Some(Side::Right));
        assert_eq!(m.decisions[0].rule, "latest");
        let tie = merge(&s, &row("xl", "y0", "t"), &row("xr", "y0", "t"), Some(&row("x0", "y0", "t")), [3, 3]);
        assert_eq!(tie.values["x"], Value::Text("xl".into()));
    }

    #[test]
    fn per_field_rule_overrides_the_sync_rule() {
        let s = spec(ConflictRule::Latest);
        let m = merge(&s, &row("x0", "yl", "t"), &row("x0", "yr", "t"), Some(&row("x0", "y0", "t")), [1, 9]);
        assert_eq!(m.values["y"], Value::Text("yl".into()));
        assert_eq!(m.decisions[0].rule, "prefer:left");
    }

    #[test]
    fn hold_writes_neither_side_and_keeps_the_base() {
        let s = spec(ConflictRule::Hold);
        let m = merge(&s, &row("xl", "y0", "t"), &row("xr", "y0", "t"), Some(&row("x0", "y0", "t")), [1, 9]);
        assert!(!m.values.contains_key("x"));
        assert_eq!(m.base["x"], Value::Text("x0".into()));
        assert_eq!(m.held.len(), 1);
    }

    #[test]
    fn one_way_field_reverts_edits_on_the_read_only_side() {
        let s = spec(ConflictRule::Latest);
        let m = merge(&s, &row("x0", "y0", "edited"), &row("x0", "y0", "t"), Some(&row("x0", "y0", "t")), [9, 1]);
        assert_eq!(m.values["terms"], Value::Text("t".into()));
        assert_eq!(m.decisions[0].rule, "one_way:right");
    }

    #[test]
    fn without_a_base_an_empty_field_takes_the_other_value() {
        let s = spec(ConflictRule::Hold);
        let mut l = row("x", "y", "t");
        l.insert("x".into(), Value::Null);
        let m = merge(&s, &l, &row("xr", "y", "t"), None, [0, 0]);
        assert_eq!(m.values["x"], Value::Text("xr".into()));
        assert!(m.held.is_empty() && m.decisions.is_empty());
    }

    #[test]
    fn without_a_base_differing_fields_go_to_the_rule() {
        let s = spec(ConflictRule::Prefer(Side::Right));
        let m = merge(&s, &row("xl", "same", "t"), &row("xr", "same", "t"), None, [0, 0]);
        assert_eq!(m.values["x"], Value::Text("xr".into()));
        assert_eq!(m.decisions.len(), 1);
    }

    #[test]
    fn lines_merge_additions_from_both_sides_and_drop_removed_ones() {
        let t = |s: &str| Value::Text(s.into());
        let base = t("a\nb\nc");
        let merged = merge_lines(Some(&base), &t("a\nb\nc\nfrom left"), &t("a\nc\nfrom right")).unwrap();
        assert_eq!(merged, t("a\nc\nfrom left\nfrom right"));
        assert_eq!(merge_lines(None, &t("x"), &t("y")).unwrap(), t("x\ny"));
        assert_eq!(merge_lines(Some(&t("x")), &Value::Null, &t("x\ny")).unwrap(), t("y"));
        assert_eq!(merge_lines(None, &Value::Int(1), &t("y")), None);
    }
}

#[cfg(test)]
mod sensitive_tests {
    use super::tests_support::spec;
    use crate::engine::{redact, scrub_sensitive, REDACTED};
    use crate::rules::ConflictRule;
    use crate::store::AuditRow;
    use crate::value::{Row, Value};

    #[test]
    fn sensitive_values_are_kept_out_of_audit_rows_and_refusals() {
        let mut spec = spec(ConflictRule::Latest);
        spec.sensitive = vec!["x".into()];
        let mut decision = AuditRow {
            kind: "decision".into(),
            field: Some("x".into()),
            base: Some(Value::Text("old secret".into())),
            left: Some(Value::Text("left secret".into())),
            right: Some(Value::Text("right secret".into())),
            ..AuditRow::default()
        };
        redact(&spec, &mut decision);
        assert_eq!(decision.left, Some(Value::Text(REDACTED.into())));
        assert_eq!(decision.base, Some(Value::Text(REDACTED.into())));
        let mut apply = AuditRow {
            kind: "apply".into(),
            detail: r#"{"x":["old secret","new secret"],"y":["a","b"]}"#.into(),
            ..AuditRow::default()
        };
        redact(&spec, &mut apply);
        assert!(!apply.detail.contains("secret") && apply.detail.contains(r#""y":["a","b"]"#), "{}", apply.detail);

        let row: Row = [("x".into(), Value::Text("hunter2-value".into()))].into_iter().collect();
        let reason = "Incorrect value: 'hunter2-value' for column x".to_string();
        let scrubbed = scrub_sensitive(&spec, reason, &[Some(&row), None]);
        assert!(!scrubbed.contains("hunter2") && scrubbed.contains("for column x"), "{scrubbed}");
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::mapping::{FieldMap, Flow, Side, Transform};
    use crate::rules::{ConflictRule, EntitySpec, SyncSpec};

    pub(crate) fn spec(rule: ConflictRule) -> SyncSpec {
        let f = |n: &str, flow| FieldMap {
            name: n.into(),
            left: vec![n.into()],
            right: vec![n.into()],
            transform: Transform::Rename,
            flow,
        };
        let e = |s: &str| EntitySpec { system: s.into(), table: "t".into(), key: vec!["id".into()] };
        let fields = vec![f("x", Flow::Both), f("y", Flow::Both), f("terms", Flow::From(Side::Right))];
        SyncSpec {
            field_rules: vec![("y".into(), ConflictRule::Prefer(Side::Left))],
            ..SyncSpec::new("s", [e("a"), e("b")], fields, rule)
        }
    }
}
