//! Field mapping lenses: how one canonical field is read from and written to each side.
//!
//! Every transform is two-way: `get` reads the canonical value from a side's columns, `put`
//! turns a canonical value into that side's columns. The canonical value of a field is defined
//! per transform (the full name for `SplitName`, the left-hand value for `ValueMap`), so both
//! directions go through the same code and a transform without an inverse cannot be written.

use crate::value::{Name, Row, Value};
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
    /// An exact decimal on the left, that decimal times `10^digits` as an integer on the right
    /// (12.50 ⇄ 1250 cents with 2 digits). The canonical value is the left decimal written with
    /// `digits` decimals. A left value with more decimals cannot be written right without
    /// rounding: it goes to dead letters.
    Scale(u32),
    /// Several columns on one side joined into one text column on the other by a template
    /// (`{street}, {postal_code} {city}`): literal text between placeholders that name the
    /// columns of the many-column side. The canonical value is the joined text; reading it back
    /// into columns cuts each part at the first occurrence of the text that follows it.
    Join(Vec<TemplatePart>),
}

/// A piece of a [`Transform::Join`] template.
#[derive(Clone, Debug, PartialEq)]
pub enum TemplatePart {
    /// Literal text.
    Text(String),
    /// A column's value.
    Column(String),
}

/// Parses a join template; `Err` says what is wrong with it.
pub fn parse_template(t: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_string()));
        }
        let close = rest[open..].find('}').ok_or("a `{` without its `}`")? + open;
        let name = rest[open + 1..close].trim();
        if name.is_empty() {
            return Err("an empty `{}`".into());
        }
        if matches!(parts.last(), Some(TemplatePart::Column(_))) {
            return Err(format!(
                "nothing separates `{{{name}}}` from the column before it, so the text cannot be cut apart again"
            ));
        }
        parts.push(TemplatePart::Column(name.to_string()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_string()));
    }
    if !parts.iter().any(|p| matches!(p, TemplatePart::Column(_))) {
        return Err("no `{column}` in it".into());
    }
    Ok(parts)
}

/// The columns a template names, in order.
pub fn template_columns(parts: &[TemplatePart]) -> Vec<String> {
    parts
        .iter()
        .filter_map(|p| match p {
            TemplatePart::Column(c) => Some(c.clone()),
            TemplatePart::Text(_) => None,
        })
        .collect()
}

/// An exact decimal as (negative, digits without the point, digits after the point).
fn parse_decimal(v: &Value) -> Option<(bool, String, usize)> {
    let text = match v {
        Value::Int(i) => i.to_string(),
        Value::Text(t) => t.trim().to_string(),
        Value::Float(f) if f.is_finite() => format!("{f}"),
        _ => return None,
    };
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text.strip_prefix('+').unwrap_or(&text)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((neg, format!("{int}{frac}"), frac.len()))
}

/// `digits` of a decimal's fraction, exactly: its text with that many decimals, or `None` when it
/// has more non-zero decimals.
fn decimal_text(neg: bool, digits_str: &str, frac: usize, digits: u32) -> Option<String> {
    let digits = digits as usize;
    let mut all = digits_str.to_string();
    if frac > digits {
        let cut = all.len() - (frac - digits);
        if all[cut..].chars().any(|c| c != '0') {
            return None;
        }
        all.truncate(cut);
    } else {
        all.push_str(&"0".repeat(digits - frac));
    }
    let all = all.trim_start_matches('0');
    let all = format!("{:0>width$}", all, width = digits + 1);
    let (i, f) = all.split_at(all.len() - digits);
    let zero = all.chars().all(|c| c == '0');
    let sign = if neg && !zero { "-" } else { "" };
    Some(if digits == 0 { format!("{sign}{i}") } else { format!("{sign}{i}.{f}") })
}

/// One mapped field of a sync.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldMap {
    /// The field's name in the audit trail, conflicts and status (the left column by default).
    pub name: Name,
    /// Left columns this field reads and writes.
    pub left: Vec<Name>,
    /// Right columns this field reads and writes.
    pub right: Vec<Name>,
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
    pub fn columns(&self, side: Side) -> &[Name] {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }

    /// [`FieldMap::get`] that may move the value out of `row` (a renamed column's value).
    pub fn take(&self, side: Side, row: &mut Row) -> Result<Value, MapError> {
        let cols = self.columns(side);
        match &self.transform {
            Transform::Rename => Ok(row.remove(&cols[0]).unwrap_or(Value::Null)),
            Transform::SplitName if cols.len() == 1 => Ok(row.remove(&cols[0]).unwrap_or(Value::Null)),
            _ => self.get(side, row),
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
            Transform::Scale(digits) => {
                let v = col(0);
                if v.is_null() {
                    return Ok(v);
                }
                let bad = || self.fail(&v, "is not an exact number".into());
                let (neg, ds, frac) = parse_decimal(&v).ok_or_else(bad)?;
                let (ds, frac) = if side == Side::Right {
                    if frac > 0 && ds[ds.len() - frac..].chars().any(|c| c != '0') {
                        return Err(self.fail(&v, "is not a whole number".into()));
                    }
                    (ds[..ds.len() - frac].to_string(), *digits as usize)
                } else {
                    (ds, frac)
                };
                decimal_text(neg, &ds, frac, *digits)
                    .map(Value::Text)
                    .ok_or_else(|| self.fail(&v, format!("has more than {digits} decimals")))
            }
            Transform::Join(_) if cols.len() == 1 => Ok(col(0)),
            Transform::Join(parts) => {
                let values: Vec<Value> = (0..cols.len()).map(col).collect();
                if values.iter().all(Value::is_null) {
                    return Ok(Value::Null);
                }
                let mut out = String::new();
                let mut i = 0;
                for p in parts {
                    match p {
                        TemplatePart::Text(t) => out.push_str(t),
                        TemplatePart::Column(_) => {
                            match &values[i] {
                                Value::Null => {}
                                Value::Text(t) => out.push_str(t),
                                other => out.push_str(&other.to_string()),
                            }
                            i += 1;
                        }
                    }
                }
                Ok(Value::Text(out))
            }
        }
    }

    fn fail(&self, v: &Value, reason: String) -> MapError {
        // The value itself stays out: reasons reach logs, dead letters and the admin API.
        MapError { field: self.name.to_string(), value_type: v.type_name(), reason }
    }

    /// Cuts a joined text into the template's column values (`None` for an empty part).
    fn cut(&self, parts: &[TemplatePart], value: &Value) -> Result<Vec<Value>, MapError> {
        let n = template_columns(parts).len();
        let text = match value {
            Value::Null => return Ok(vec![Value::Null; n]),
            Value::Text(t) => t.as_str(),
            other => return Err(self.fail(other, "is not text, so it cannot be cut into columns".into())),
        };
        let missing = |lit: &str| self.fail(value, format!("does not have the form of the template (no {lit:?})"));
        let mut rest = text;
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while i < parts.len() {
            match &parts[i] {
                TemplatePart::Text(t) => rest = rest.strip_prefix(t.as_str()).ok_or_else(|| missing(t))?,
                TemplatePart::Column(_) => {
                    let piece = match parts.get(i + 1) {
                        Some(TemplatePart::Text(next)) if i + 2 == parts.len() => {
                            rest.strip_suffix(next.as_str()).ok_or_else(|| missing(next))?
                        }
                        Some(TemplatePart::Text(next)) => {
                            &rest[..rest.find(next.as_str()).ok_or_else(|| missing(next))?]
                        }
                        _ => rest,
                    };
                    rest = &rest[piece.len()..];
                    out.push(if piece.is_empty() { Value::Null } else { Value::Text(piece.to_string()) });
                }
            }
            i += 1;
        }
        Ok(out)
    }

    /// [`FieldMap::put`] of a new record's value into its row `out` (no current row to
    /// consult): a renamed field moves the value in as it is.
    pub fn put_into(&self, side: Side, value: Value, out: &mut Row) -> Result<(), MapError> {
        match &self.transform {
            Transform::Rename => {
                out.insert(self.columns(side)[0].clone(), value);
                Ok(())
            }
            _ => {
                out.extend(self.put(side, &value, None)?);
                Ok(())
            }
        }
    }

    /// Turns a canonical value into column values for `side`. `current` is the side's row as it
    /// is now, when there is one: a lens may keep what it already says (a split of "Mary Ann
    /// Smith" keeps first name "Mary Ann" when that is what the row has).
    pub fn put(&self, side: Side, value: &Value, current: Option<&Row>) -> Result<Vec<(Name, Value)>, MapError> {
        let cols = self.columns(side);
        match &self.transform {
            Transform::Rename => Ok(vec![(cols[0].clone(), value.clone())]),
            Transform::SplitName if cols.len() == 1 => Ok(vec![(cols[0].clone(), value.clone())]),
            Transform::SplitName => {
                let hint = current.and_then(|r| r.get(&cols[0]));
                let (first, last) = split_name(value, hint).map_err(|reason| MapError {
                    field: self.name.to_string(),
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
            Transform::Scale(digits) => {
                if value.is_null() {
                    return Ok(vec![(cols[0].clone(), Value::Null)]);
                }
                let (neg, ds, frac) =
                    parse_decimal(value).ok_or_else(|| self.fail(value, "is not an exact number".into()))?;
                let text = decimal_text(neg, &ds, frac, *digits)
                    .ok_or_else(|| self.fail(value, format!("has more than {digits} decimals")))?;
                if side == Side::Left {
                    return Ok(vec![(cols[0].clone(), Value::Text(text))]);
                }
                let units = text.replace('.', "");
                let units =
                    units.parse::<i64>().map_err(|_| self.fail(value, "is too large for an integer column".into()))?;
                Ok(vec![(cols[0].clone(), Value::Int(units))])
            }
            Transform::Join(_) if cols.len() == 1 => Ok(vec![(cols[0].clone(), value.clone())]),
            Transform::Join(parts) => {
                // A row whose columns already join to this text keeps them (the cut may differ).
                if let Some(cur) = current {
                    let here = self.get(side, cur)?;
                    if here.same(value) || (here.is_null() && value.is_null()) {
                        return Ok(cols
                            .iter()
                            .map(|c| (c.clone(), cur.get(c).cloned().unwrap_or(Value::Null)))
                            .collect());
                    }
                }
                let values = self.cut(parts, value)?;
                Ok(cols.iter().cloned().zip(values).collect())
            }
        }
    }

    fn unmapped(&self, v: &Value, side: Side) -> MapError {
        MapError {
            field: self.name.to_string(),
            value_type: v.type_name(),
            reason: format!("is not in the value map's {side} column; add it to the map"),
        }
    }

    /// True when some value of this field cannot survive a round trip through the lens
    /// (reported by `tandem check` so the user knows).
    pub fn lossy_note(&self) -> Option<&'static str> {
        match self.transform {
            Transform::SplitName => Some(
                "split_name: extra spaces are not kept, and a first name with a space is kept only while the other side's full name still starts with it",
            ),
            Transform::Join(_) => Some(
                "join: a column value that contains the text following it in the template is cut there when the joined text is read back; an empty part reads back as NULL",
            ),
            Transform::Scale(_) => Some("scale: decimals beyond the scale cannot be written to the integer side (dead letter)"),
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
        _ => return Err("is not text, so it cannot be split into first and last name".into()),
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
        pairs.iter().map(|(k, v)| (Name::from(*k), v.clone())).collect()
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
        // The reason names the field and the problem, never the value (it reaches logs).
        let msg = err.to_string();
        assert!(msg.contains("payment_terms") && msg.contains("value map") && !msg.contains("NET90"), "{msg}");
        assert!(!Flow::From(Side::Right).allows_from(Side::Left));
    }

    fn cents_field() -> FieldMap {
        FieldMap {
            name: "credit".into(),
            left: vec!["credit_limit".into()],
            right: vec!["credit_limit_cents".into()],
            transform: Transform::Scale(2),
            flow: Flow::Both,
        }
    }

    fn address_field() -> FieldMap {
        FieldMap {
            name: "address".into(),
            left: vec!["street".into(), "postal_code".into(), "city".into()],
            right: vec!["address_line".into()],
            transform: Transform::Join(parse_template("{street}, {postal_code} {city}").unwrap()),
            flow: Flow::Both,
        }
    }

    #[test]
    fn scale_is_exact_both_ways_and_refuses_rounding() {
        let f = cents_field();
        let l = |v: Value| row(&[("credit_limit", v)]);
        let r = |v: Value| row(&[("credit_limit_cents", v)]);
        assert_eq!(f.get(Side::Left, &l(text("1234.5"))).unwrap(), text("1234.50"));
        assert_eq!(f.get(Side::Left, &l(Value::Int(7))).unwrap(), text("7.00"));
        assert_eq!(f.get(Side::Right, &r(Value::Int(123450))).unwrap(), text("1234.50"));
        assert_eq!(f.get(Side::Right, &r(Value::Int(-5))).unwrap(), text("-0.05"));
        assert_eq!(f.put(Side::Right, &text("1234.50"), None).unwrap()[0].1, Value::Int(123450));
        assert_eq!(f.put(Side::Right, &text("99999999999.99"), None).unwrap()[0].1, Value::Int(9999999999999));
        assert_eq!(f.put(Side::Left, &text("0.5"), None).unwrap()[0].1, text("0.50"));
        assert!(f.put(Side::Right, &text("1.005"), None).unwrap_err().to_string().contains("more than 2 decimals"));
        assert!(f.get(Side::Left, &l(text("abc"))).is_err());
        assert_eq!(f.get(Side::Left, &l(Value::Null)).unwrap(), Value::Null);
    }

    #[test]
    fn join_cuts_and_keeps_what_the_row_has() {
        let f = address_field();
        let crm = row(&[("street", text("12 Main St")), ("postal_code", text("10115")), ("city", text("Bad Homburg"))]);
        let joined = f.get(Side::Left, &crm).unwrap();
        assert_eq!(joined, text("12 Main St, 10115 Bad Homburg"));
        let cut: Row = f.put(Side::Left, &joined, None).unwrap().into_iter().collect();
        assert_eq!(cut, crm);
        assert_eq!(f.put(Side::Right, &joined, None).unwrap()[0].1, joined);
        let err = f.put(Side::Left, &text("no comma here"), None).unwrap_err();
        assert!(err.to_string().contains("form of the template"), "{err}");
        // A street with ", " in it cuts wrong without the row, right with it.
        let odd = row(&[("street", text("Main St, Apt 4")), ("postal_code", text("10115")), ("city", text("Berlin"))]);
        let j = f.get(Side::Left, &odd).unwrap();
        let kept: Row = f.put(Side::Left, &j, Some(&odd)).unwrap().into_iter().collect();
        assert_eq!(kept, odd);
        assert_eq!(f.get(Side::Left, &row(&[])).unwrap(), Value::Null);
        assert!(parse_template("{a}{b}").is_err());
        assert!(parse_template("plain").is_err());
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
        fn scale_round_trips(cents in -10_000_000_000i64..10_000_000_000) {
            let f = cents_field();
            let canon = f.get(Side::Right, &row(&[("credit_limit_cents", Value::Int(cents))])).unwrap();
            prop_assert_eq!(&f.put(Side::Right, &canon, None).unwrap()[0].1, &Value::Int(cents));
            let left: Row = f.put(Side::Left, &canon, None).unwrap().into_iter().collect();
            prop_assert_eq!(f.get(Side::Left, &left).unwrap(), canon);
        }

        #[test]
        fn join_round_trips(street in "[A-Za-z0-9 ]{1,12}", code in "[0-9A-Z]{3,6}", city in "[A-Za-z][A-Za-z -]{0,10}") {
            prop_assume!(!street.contains(", ") && !street.ends_with(',') && !city.ends_with(' '));
            let f = address_field();
            let crm = row(&[("street", text(&street)), ("postal_code", text(&code)), ("city", text(&city))]);
            let joined = f.get(Side::Left, &crm).unwrap();
            let back: Row = f.put(Side::Left, &joined, None).unwrap().into_iter().collect();
            prop_assert_eq!(back, crm);
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
