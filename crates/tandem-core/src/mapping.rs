//! Field mapping lenses: how one canonical field is read from and written to each side.
//!
//! Every transform is two-way: `get` reads the canonical value from a side's columns, `put`
//! turns a canonical value into that side's columns. The canonical value of a field is defined
//! per transform (the full name for `SplitName`, the left-hand value for `ValueMap`), so both
//! directions go through the same code and a transform without an inverse cannot be written.

use crate::value::{Row, Value};
use std::fmt;

/// One side of a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The system named first in the sync (`left`).
    Left,
    /// The system named second in the sync (`right`).
    Right,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }

    /// The stable name used in the state store.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }

    /// Parses [`Side::as_str`].
    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "left" => Some(Side::Left),
            "right" => Some(Side::Right),
            _ => None,
        }
    }

    /// Index 0 for left, 1 for right, for per-side arrays.
    pub fn index(self) -> usize {
        match self {
            Side::Left => 0,
            Side::Right => 1,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way a field's changes may travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Changes on either side travel to the other.
    Both,
    /// Only this side's value counts: it is written to the other side, and edits made on the
    /// other side are put back to it (the other side's copy is read-only).
    From(Side),
}

impl Flow {
    /// True when a change made on `side` may be written to the other side.
    pub fn allows_from(self, side: Side) -> bool {
        match self {
            Flow::Both => true,
            Flow::From(s) => s == side,
        }
    }
}

/// How a canonical field is shaped on each side.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// Same value under (possibly) different column names: one column each side.
    Rename,
    /// A full name in one column on one side, first and last name columns on the other.
    /// The canonical value is the full name.
    SplitName,
    /// A value table, left value ⇄ right value, one-to-one. The canonical value is the left
    /// value. A value outside the table cannot be mapped and goes to dead letters.
    ValueMap(Vec<(Value, Value)>),
}

/// One mapped field of a sync.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldMap {
    /// The field's name in the audit trail, conflicts and status (the left column by default).
    pub name: String,
    /// Left columns this field reads and writes.
    pub left: Vec<String>,
    /// Right columns this field reads and writes.
    pub right: Vec<String>,
    /// The lens between the two shapes.
    pub transform: Transform,
    /// Which way changes travel.
    pub flow: Flow,
}

/// Why a value could not be mapped.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("field `{field}`: {value_type} value {reason}")]
pub struct MapError {
    /// The mapped field.
    pub field: String,
    /// The type of the offending value.
    pub value_type: &'static str,
    /// What is wrong, phrased to follow the value type.
    pub reason: String,
}

impl FieldMap {
    /// Columns on `side`.
    pub fn columns(&self, side: Side) -> &[String] {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }

    /// Reads the canonical value of this field from a row of `side`.
    pub fn get(&self, side: Side, row: &Row) -> Result<Value, MapError> {
        let cols = self.columns(side);
        let col = |i: usize| row.get(&cols[i]).cloned().unwrap_or(Value::Null);
        match &self.transform {
            Transform::Rename => Ok(col(0)),
            Transform::SplitName if cols.len() == 1 => Ok(col(0)),
            Transform::SplitName => Ok(join_name(&col(0), &col(1))),
            Transform::ValueMap(table) => {
                let v = col(0);
                if side == Side::Left || v.is_null() {
                    return Ok(v);
                }
                table.iter().find(|(_, r)| r.same(&v)).map(|(l, _)| l.clone()).ok_or_else(|| self.unmapped(&v, side))
            }
        }
    }

    /// Turns a canonical value into column values for `side`. `current` is the side's row as it
    /// is now, when there is one: a lens may keep what it already says (a split of "Mary Ann
    /// Smith" keeps first name "Mary Ann" when that is what the row has).
    pub fn put(&self, side: Side, value: &Value, current: Option<&Row>) -> Result<Vec<(String, Value)>, MapError> {
        let cols = self.columns(side);
        match &self.transform {
            Transform::Rename => Ok(vec![(cols[0].clone(), value.clone())]),
            Transform::SplitName if cols.len() == 1 => Ok(vec![(cols[0].clone(), value.clone())]),
            Transform::SplitName => {
                let hint = current.and_then(|r| r.get(&cols[0]));
                let (first, last) = split_name(value, hint).map_err(|reason| MapError {
                    field: self.name.clone(),
                    value_type: value.type_name(),
                    reason,
                })?;
                Ok(vec![(cols[0].clone(), first), (cols[1].clone(), last)])
            }
            Transform::ValueMap(table) => {
                if side == Side::Left || value.is_null() {
                    return Ok(vec![(cols[0].clone(), value.clone())]);
                }
                table
                    .iter()
                    .find(|(l, _)| l.same(value))
                    .map(|(_, r)| vec![(cols[0].clone(), r.clone())])
                    .ok_or_else(|| self.unmapped(value, Side::Left))
            }
        }
    }

    fn unmapped(&self, v: &Value, side: Side) -> MapError {
        MapError {
            field: self.name.clone(),
            value_type: v.type_name(),
            reason: format!("{v} is not in the value map's {side} column; add it to the map"),
        }
    }

    /// True when some value of this field cannot survive a round trip through the lens
    /// (reported by `tandem check` so the user knows).
    pub fn lossy_note(&self) -> Option<&'static str> {
        match self.transform {
            Transform::SplitName => Some(
                "split_name: extra spaces are not kept, and a first name with a space is kept only while the other side's full name still starts with it",
            ),
            _ => None,
        }
    }
}

/// Joins first and last name: the non-empty parts separated by one space; NULL when both are
/// NULL.
pub fn join_name(first: &Value, last: &Value) -> Value {
    if first.is_null() && last.is_null() {
        return Value::Null;
    }
    let parts: Vec<String> = [first, last]
        .iter()
        .filter_map(|v| match v {
            Value::Null => None,
            Value::Text(s) => Some(s.trim().to_string()),
            other => Some(other.to_string()),
        })
        .filter(|s| !s.is_empty())
        .collect();
    Value::Text(parts.join(" "))
}

/// Splits a full name into first and last name. With a hint (the first name the target row has
/// now) that the name still starts with, the split keeps it; otherwise it splits at the first
/// space. A name without a space is a first name with a NULL last name.
pub fn split_name(full: &Value, hint: Option<&Value>) -> Result<(Value, Value), String> {
    let text = match full {
        Value::Null => return Ok((Value::Null, Value::Null)),
        Value::Text(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
        other => return Err(format!("{other} is not text, so it cannot be split into first and last name")),
    };
    if let Some(Value::Text(first)) = hint {
        let first = first.trim();
        if !first.is_empty() {
            if text == first {
                return Ok((Value::Text(text), Value::Null));
            }
            if let Some(rest) = text.strip_prefix(first).and_then(|r| r.strip_prefix(' ')) {
                return Ok((Value::Text(first.to_string()), Value::Text(rest.to_string())));
            }
        }
    }
    match text.split_once(' ') {
        Some((first, last)) => Ok((Value::Text(first.into()), Value::Text(last.into()))),
        None => Ok((Value::Text(text), Value::Null)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn split_field() -> FieldMap {
        FieldMap {
            name: "full_name".into(),
            left: vec!["full_name".into()],
            right: vec!["first_name".into(), "last_name".into()],
            transform: Transform::SplitName,
            flow: Flow::Both,
        }
    }

    fn terms_field() -> FieldMap {
        FieldMap {
            name: "payment_terms".into(),
            left: vec!["payment_terms".into()],
            right: vec!["payment_terms".into()],
            transform: Transform::ValueMap(vec![
                (text("Net 30 days"), text("NET30")),
                (text("Due on receipt"), text("DUE")),
            ]),
            flow: Flow::From(Side::Right),
        }
    }

    fn row(pairs: &[(&str, Value)]) -> Row {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn split_and_join_names() {
        let f = split_field();
        let put = f.put(Side::Right, &text("Ada Lovelace"), None).unwrap();
        assert_eq!(put, vec![("first_name".into(), text("Ada")), ("last_name".into(), text("Lovelace"))]);
        let r = row(&[("first_name", text("Ada")), ("last_name", text("Lovelace"))]);
        assert_eq!(f.get(Side::Right, &r).unwrap(), text("Ada Lovelace"));
        let r = row(&[("first_name", text("Cher")), ("last_name", Value::Null)]);
        assert_eq!(f.get(Side::Right, &r).unwrap(), text("Cher"));
        assert_eq!(f.put(Side::Right, &Value::Null, None).unwrap()[1].1, Value::Null);
    }

    #[test]
    fn split_keeps_a_two_word_first_name_it_already_has() {
        let f = split_field();
        let current = row(&[("first_name", text("Mary Ann")), ("last_name", text("Smith"))]);
        let put = f.put(Side::Right, &text("Mary Ann Jones"), Some(&current)).unwrap();
        assert_eq!(put[0].1, text("Mary Ann"));
        assert_eq!(put[1].1, text("Jones"));
    }

    #[test]
    fn value_map_both_ways_and_unmapped_values_fail() {
        let f = terms_field();
        let r = row(&[("payment_terms", text("NET30"))]);
        assert_eq!(f.get(Side::Right, &r).unwrap(), text("Net 30 days"));
        assert_eq!(f.put(Side::Right, &text("Due on receipt"), None).unwrap()[0].1, text("DUE"));
        let bad = row(&[("payment_terms", text("NET90"))]);
        let err = f.get(Side::Right, &bad).unwrap_err();
        assert!(err.to_string().contains("NET90"), "{err}");
        assert!(!Flow::From(Side::Right).allows_from(Side::Left));
    }

    fn name_part() -> impl Strategy<Value = String> {
        "[A-Za-zéü'-]{1,8}"
    }

    proptest! {
        #[test]
        fn split_name_round_trips_from_canonical(first in name_part(), rest in proptest::collection::vec(name_part(), 0..3)) {
            let f = split_field();
            let full = std::iter::once(first).chain(rest).collect::<Vec<_>>().join(" ");
            let cols = f.put(Side::Right, &text(&full), None).unwrap();
            let r: Row = cols.into_iter().collect();
            prop_assert_eq!(f.get(Side::Right, &r).unwrap(), text(&full));
        }

        #[test]
        fn split_name_round_trips_from_columns(first in name_part(), last in name_part()) {
            let f = split_field();
            let r = row(&[("first_name", text(&first)), ("last_name", text(&last))]);
            let full = f.get(Side::Right, &r).unwrap();
            let back: Row = f.put(Side::Right, &full, Some(&r)).unwrap().into_iter().collect();
            prop_assert_eq!(back, r);
        }

        #[test]
        fn value_map_round_trips(i in 0usize..2) {
            let f = terms_field();
            let Transform::ValueMap(table) = &f.transform else { unreachable!() };
            let (l, r) = &table[i];
            let cols: Row = f.put(Side::Right, l, None).unwrap().into_iter().collect();
            prop_assert_eq!(cols.get("payment_terms"), Some(r));
            prop_assert_eq!(&f.get(Side::Right, &cols).unwrap(), l);
        }

        #[test]
        fn rename_round_trips(v in proptest::option::of(".{0,12}")) {
            let f = FieldMap { name: "e".into(), left: vec!["a".into()], right: vec!["b".into()], transform: Transform::Rename, flow: Flow::Both };
            let value = v.map(Value::Text).unwrap_or(Value::Null);
            let cols: Row = f.put(Side::Right, &value, None).unwrap().into_iter().collect();
            prop_assert_eq!(f.get(Side::Right, &cols).unwrap(), value);
        }
    }
}
