//! Sync rules: conflict rules, delete rules, row filters, and the sync spec that holds them.

use crate::mapping::{FieldMap, Side};
use crate::value::{Row, Value};

/// What decides a field changed on both sides since the base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConflictRule {
    /// The later change wins (commit time on its system; ties go to the sync's `tie_break`).
    Latest,
    /// This side always wins.
    Prefer(Side),
    /// Neither side is written; the conflict is listed for a person to resolve.
    Hold,
    /// Text merged line by line: a line stays when both sides kept it, or when the side that
    /// has it added it; a line either side removed goes. Lines in the left's order, then the
    /// lines only the right added.
    MergeLines,
}

impl ConflictRule {
    /// The rule's name in the audit trail.
    pub fn name(&self) -> String {
        match self {
            ConflictRule::Latest => "latest".into(),
            ConflictRule::Prefer(s) => format!("prefer:{s}"),
            ConflictRule::Hold => "hold".into(),
            ConflictRule::MergeLines => "merge_lines".into(),
        }
    }
}

/// What a delete on one side does to the other side.
#[derive(Clone, Debug, PartialEq)]
pub enum DeleteRule {
    /// Delete the linked record on the other side too.
    Propagate,
    /// Set `column` to `value` on the other side's record and stop syncing the record.
    Soft {
        /// The column that marks the record deleted (`deleted_at`, `is_active`).
        column: String,
        /// The value written to it.
        value: Value,
    },
    /// Leave the other side's record as it is and stop syncing the record.
    Ignore,
}

impl DeleteRule {
    /// The rule's name in the audit trail.
    pub fn name(&self) -> &'static str {
        match self {
            DeleteRule::Propagate => "delete:propagate",
            DeleteRule::Soft { .. } => "delete:soft",
            DeleteRule::Ignore => "delete:ignore",
        }
    }
}

/// A comparison in a row filter.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// `column = value`
    Eq(Value),
    /// `column != value`
    Ne(Value),
    /// `column IS NULL`
    IsNull,
    /// `column IS NOT NULL`
    NotNull,
}

/// A row filter: every clause must hold (`a = 1 and b is not null`).
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    /// The clauses, all of which must hold.
    pub clauses: Vec<(String, Test)>,
    /// The text the user wrote, for messages.
    pub source: String,
}

impl Filter {
    /// Parses `col = 'text' and col != 3 and col is null and col is not null`.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut clauses = Vec::new();
        for part in split_and(text) {
            let part = part.trim();
            let lower = part.to_ascii_lowercase();
            let (col, test) = if let Some(col) = lower.strip_suffix(" is not null") {
                (part[..col.len()].trim(), Test::NotNull)
            } else if let Some(col) = lower.strip_suffix(" is null") {
                (part[..col.len()].trim(), Test::IsNull)
            } else if let Some((c, v)) = part.split_once("!=") {
                (c.trim(), Test::Ne(parse_literal(v.trim())?))
            } else if let Some((c, v)) = part.split_once('=') {
                (c.trim(), Test::Eq(parse_literal(v.trim())?))
            } else {
                return Err(format!(
                    "`{part}` is not a filter clause; write `column = value`, `column != value`, `column is null` or `column is not null`, joined by `and`"
                ));
            };
            if col.is_empty() || !col.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(format!("`{col}` in `{part}` is not a column name"));
            }
            clauses.push((col.to_string(), test));
        }
        if clauses.is_empty() {
            return Err("the filter is empty; remove it or write `column = value`".into());
        }
        Ok(Filter { clauses, source: text.to_string() })
    }

    /// True when `row` passes.
    pub fn matches(&self, row: &Row) -> bool {
        self.clauses.iter().all(|(col, test)| {
            let v = row.get(col.as_str()).unwrap_or(&Value::Null);
            match test {
                Test::Eq(x) => !v.is_null() && v.same(x),
                Test::Ne(x) => v.is_null() || !v.same(x),
                Test::IsNull => v.is_null(),
                Test::NotNull => !v.is_null(),
            }
        })
    }

    /// Columns the filter reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.clauses.iter().map(|(c, _)| c.as_str())
    }
}

fn split_and(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let words: Vec<&str> = text.split(' ').collect();
    for w in words {
        in_quote ^= w.matches('\'').count() % 2 == 1;
        if !in_quote && w.eq_ignore_ascii_case("and") {
            parts.push(std::mem::take(&mut cur));
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(w);
        }
    }
    parts.push(cur);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn parse_literal(text: &str) -> Result<Value, String> {
    if let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        return Ok(Value::Text(inner.replace("''", "'")));
    }
    if text.eq_ignore_ascii_case("null") {
        return Err("compare with NULL using `is null` / `is not null`".into());
    }
    if text.eq_ignore_ascii_case("true") {
        return Ok(Value::Int(1));
    }
    if text.eq_ignore_ascii_case("false") {
        return Ok(Value::Int(0));
    }
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Value::Int(i));
    }
    if let Ok(f) = text.parse::<f64>() {
        return Ok(Value::Float(f));
    }
    Err(format!("`{text}` is not a value; quote text as 'text'"))
}

/// What to do when a capture position is gone (slot dropped, log purged, other server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnPositionLost {
    /// Stop with an error naming the position and the remedy.
    Fail,
    /// Install capture again, re-read the whole entity and reconcile it against the links.
    Resnapshot,
}

/// One side's entity in a sync.
#[derive(Clone, Debug, PartialEq)]
pub struct EntitySpec {
    /// The system's name in the config.
    pub system: String,
    /// The table (entity) name.
    pub table: String,
    /// Primary key columns.
    pub key: Vec<String>,
}

/// How existing records are linked instead of duplicated.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchOn {
    /// Left column compared.
    pub left: String,
    /// Right column compared.
    pub right: String,
    /// Compare text case-insensitively (emails).
    pub case_insensitive: bool,
}

/// Everything the engine needs to know about one sync.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncSpec {
    /// The sync's name.
    pub name: String,
    /// Left and right entity, indexed by [`Side::index`].
    pub sides: [EntitySpec; 2],
    /// Mapped fields.
    pub fields: Vec<FieldMap>,
    /// The default conflict rule.
    pub rule: ConflictRule,
    /// Per-field conflict rules, by field name.
    pub field_rules: Vec<(String, ConflictRule)>,
    /// Which side wins a `latest` tie.
    pub tie_break: Side,
    /// Linking of existing records.
    pub match_on: Option<MatchOn>,
    /// What a delete on a side does to the other, indexed by the side the delete happened on.
    pub deletes: [DeleteRule; 2],
    /// Which records of a side are copied to the other, indexed by the source side.
    pub filters: [Option<Filter>; 2],
    /// Column values written when a record is created on a side, indexed by the target side.
    pub defaults: [Row; 2],
    /// What to do when a capture position is gone.
    pub on_position_lost: OnPositionLost,
    /// Fields whose values are kept out of the audit trail and the admin API.
    pub sensitive: Vec<String>,
}

impl SyncSpec {
    /// A sync with one rule for every field and nothing else set: no per-field rules, ties to
    /// the left, no matching of existing records, deletes propagated both ways, no filters or
    /// create defaults, a lost capture position an error, no sensitive fields.
    pub fn new(name: &str, sides: [EntitySpec; 2], fields: Vec<FieldMap>, rule: ConflictRule) -> SyncSpec {
        SyncSpec {
            name: name.into(),
            sides,
            fields,
            rule,
            field_rules: Vec::new(),
            tie_break: Side::Left,
            match_on: None,
            deletes: [DeleteRule::Propagate, DeleteRule::Propagate],
            filters: [None, None],
            defaults: [Row::new(), Row::new()],
            on_position_lost: OnPositionLost::Fail,
            sensitive: Vec::new(),
        }
    }

    /// The entity on `side`.
    pub fn side(&self, side: Side) -> &EntitySpec {
        &self.sides[side.index()]
    }

    /// The rule for a field.
    pub fn rule_for(&self, field: &str) -> &ConflictRule {
        self.field_rules.iter().find(|(f, _)| f == field).map(|(_, r)| r).unwrap_or(&self.rule)
    }

    /// The system name of a side.
    pub fn system(&self, side: Side) -> &str {
        &self.sides[side.index()].system
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let f = Filter::parse("country = 'DE' and email is not null and tier != 3").unwrap();
        let mut row = Row::new();
        row.insert("country".into(), Value::Text("DE".into()));
        row.insert("email".into(), Value::Text("a@b".into()));
        row.insert("tier".into(), Value::Int(2));
        assert!(f.matches(&row));
        row.insert("tier".into(), Value::Int(3));
        assert!(!f.matches(&row));
        row.insert("tier".into(), Value::Null);
        row.insert("email".into(), Value::Null);
        assert!(!f.matches(&row));
        let f = Filter::parse("name = 'Smith and Sons'").unwrap();
        assert_eq!(f.clauses.len(), 1);
        assert!(Filter::parse("a ~ 3").is_err());
        assert!(Filter::parse("a = null").is_err());
    }
}
