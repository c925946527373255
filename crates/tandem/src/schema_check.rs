//! The second phase of config validation: compare the config with the systems' schemas.
//! Reads only; never creates a file or writes to one.

use crate::config::{Config, Problem, System};
use rusqlite::{Connection, OpenFlags};
use tandem_connectors::sqlite::table_columns;
use tandem_core::mapping::{Side, Transform};
use tandem_core::rules::DeleteRule;
use tandem_core::value::Value;

fn line_of(text: &str, needle: &str) -> Option<usize> {
    let quoted = format!("\"{needle}\"");
    text.find(&quoted).map(|i| text[..i].matches('\n').count() + 1)
}

#[derive(PartialEq)]
enum Kind {
    Text,
    Number,
    Any,
}

fn kind(decl: &str) -> Kind {
    let d = decl.to_ascii_uppercase();
    if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Kind::Text
    } else if ["INT", "REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL"].iter().any(|t| d.contains(t)) && !d.contains("[]") {
        Kind::Number
    } else {
        Kind::Any
    }
}

fn value_fits(decl: &str, v: &Value) -> bool {
    match (kind(decl), v) {
        (Kind::Number, Value::Text(t)) => t.trim().parse::<f64>().is_ok(),
        _ => true,
    }
}

/// Reads a table's columns from its system; `Err((what, fix))` when the system cannot be read.
fn load_columns(cfg: &Config, system: &str, table: &str) -> Result<Vec<Column>, Vec<(String, String)>> {
    match &cfg.systems[system] {
        System::Sqlite { path } => {
            if !path.exists() {
                return Err(vec![(
                    format!("system `{system}`: SQLite file {} does not exist", path.display()),
                    "correct `path` (relative paths start at the config file's folder)".into(),
                )]);
            }
            // Read-write without create: a read-only connection fails on a WAL file whose last
            // writer was killed (the WAL index must be rebuilt first), and the busy timeout
            // waits out a writer. Nothing here writes a row.
            let conn =
                Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                    .and_then(|c| c.busy_timeout(std::time::Duration::from_secs(10)).map(|_| c))
                    .map_err(|e| {
                        vec![(
                            format!("system `{system}`: cannot open {}: {e}", path.display()),
                            "check the file and its permissions".into(),
                        )]
                    })?;
            let cols = table_columns(&conn, table).map_err(|e| {
                vec![(
                    format!("system `{system}`: cannot read {}: {e}", path.display()),
                    "check that the file is a SQLite database".into(),
                )]
            })?;
            let pks = cols.iter().filter(|c| c.pk > 0).count();
            Ok(cols
                .into_iter()
                .map(|c| Column {
                    // SQLite fills a lone INTEGER PRIMARY KEY itself (it is the rowid).
                    generated: c.has_default || (c.pk > 0 && pks == 1 && c.decl_type.eq_ignore_ascii_case("INTEGER")),
                    name: c.name.to_string(),
                    decl_type: c.decl_type,
                    not_null: c.not_null,
                    pk: c.pk,
                })
                .collect())
        }
        System::Postgres { url } => {
            let missing = tandem_connectors::postgres::missing_requirements(url, table).map_err(|e| {
                vec![(
                    format!("system `{system}`: {e}"),
                    "check the url, that the server runs, and that the user may connect".into(),
                )]
            })?;
            if !missing.is_empty() {
                return Err(missing
                    .into_iter()
                    .map(|(what, fix)| (format!("system `{system}`: {what}"), fix))
                    .collect());
            }
            let cols = tandem_connectors::postgres::table_columns(url, table).map_err(|e| {
                vec![(
                    format!("system `{system}`: {e}"),
                    "check the url, that the server runs, and that the user may connect (see the README's PostgreSQL section)"
                        .into(),
                )]
            })?;
            Ok(cols
                .into_iter()
                .map(|c| Column {
                    name: c.name.to_string(),
                    decl_type: c.type_name,
                    not_null: c.not_null,
                    generated: c.has_default,
                    pk: c.pk,
                })
                .collect())
        }
        System::Mysql { url } => {
            let unreachable = |e: tandem_connectors::ConnectorError| {
                vec![(
                    format!("system `{system}`: {e}"),
                    "check the url, that the server runs, and that the user may connect (see the README's MariaDB section)"
                        .into(),
                )]
            };
            let missing = tandem_connectors::mysql::missing_requirements(url).map_err(unreachable)?;
            if !missing.is_empty() {
                return Err(missing
                    .into_iter()
                    .map(|(what, fix)| (format!("system `{system}`: {what}"), fix))
                    .collect());
            }
            let cols = tandem_connectors::mysql::table_columns(url, table).map_err(unreachable)?;
            Ok(cols
                .into_iter()
                .map(|c| Column {
                    name: c.name.to_string(),
                    decl_type: c.column_type.to_ascii_uppercase(),
                    not_null: c.not_null,
                    generated: c.has_default,
                    pk: c.pk,
                })
                .collect())
        }
    }
}

/// A column as the checks need it, whatever the system.
struct Column {
    name: String,
    decl_type: String,
    not_null: bool,
    /// The system fills it when a record is created (default, identity, rowid).
    generated: bool,
    pk: i64,
}

/// Checks every sync against the systems' schemas; fills in key columns left to the schema.
pub fn check(cfg: &mut Config, text: &str, problems: &mut Vec<Problem>) {
    fn push(problems: &mut Vec<Problem>, line: Option<usize>, what: String, fix: String) {
        problems.push(Problem { line, what, fix });
    }
    for si in 0..cfg.syncs.len() {
        let mut cols: [Vec<Column>; 2] = [Vec::new(), Vec::new()];
        let mut ok = [false, false];
        for side in [Side::Left, Side::Right] {
            let ent = cfg.syncs[si].side(side).clone();
            if !cfg.systems.contains_key(&ent.system) {
                continue;
            }
            let line = line_of(text, &ent.table);
            match load_columns(cfg, &ent.system, &ent.table) {
                Ok(c) if c.is_empty() => push(
                    problems,
                    line,
                    format!("sync `{}`: table `{}` does not exist in {}", cfg.syncs[si].name, ent.table, ent.system),
                    "correct the table name".into(),
                ),
                Ok(c) => {
                    cols[side.index()] = c;
                    ok[side.index()] = true;
                }
                Err(found) => {
                    for (what, fix) in found {
                        push(problems, line, what, fix);
                    }
                }
            }
        }
        for side in [Side::Left, Side::Right] {
            if !ok[side.index()] {
                continue;
            }
            let c = &cols[side.index()];
            let spec = &mut cfg.syncs[si];
            let ent = &mut spec.sides[side.index()];
            if ent.key.is_empty() {
                let mut pk: Vec<&Column> = c.iter().filter(|c| c.pk > 0).collect();
                pk.sort_by_key(|c| c.pk);
                if pk.is_empty() {
                    push(
                        problems,
                        line_of(text, &ent.table),
                        format!("sync `{}`: table `{}` has no primary key", spec.name, ent.table),
                        "add `key = [\"column\"]` naming columns that identify a record".into(),
                    );
                }
                ent.key = pk.into_iter().map(|c| c.name.clone()).collect();
            }
        }
        let spec = cfg.syncs[si].clone();
        let has = |side: Side, col: &str| cols[side.index()].iter().find(|c| c.name == col);
        let need = |problems: &mut Vec<Problem>, side: Side, col: &str, what: &str| {
            if ok[side.index()] && has(side, col).is_none() {
                let ent = spec.side(side);
                let names: Vec<&str> = cols[side.index()].iter().map(|c| c.name.as_str()).collect();
                problems.push(Problem {
                    line: line_of(text, col),
                    what: format!(
                        "sync `{}`: {what} `{col}` does not exist in {}.{}",
                        spec.name, ent.system, ent.table
                    ),
                    fix: format!("use one of: {}", names.join(", ")),
                });
                false
            } else {
                ok[side.index()]
            }
        };
        for side in [Side::Left, Side::Right] {
            for k in &spec.side(side).key {
                need(problems, side, k, "key column");
            }
        }
        for f in &spec.fields {
            let mut present = true;
            for side in [Side::Left, Side::Right] {
                for c in f.columns(side) {
                    present &= need(problems, side, c, "column");
                }
            }
            if !present {
                continue;
            }
            let decl =
                |side: Side, i: usize| has(side, &f.columns(side)[i]).map(|c| c.decl_type.clone()).unwrap_or_default();
            match &f.transform {
                Transform::Rename => {
                    let (l, r) = (decl(Side::Left, 0), decl(Side::Right, 0));
                    let (kl, kr) = (kind(&l), kind(&r));
                    if kl != kr && kl != Kind::Any && kr != Kind::Any {
                        problems.push(Problem {
                            line: line_of(text, &f.right[0]),
                            what: format!(
                                "sync `{}`: field `{}` maps {}.{} ({l}) to {}.{} ({r}): text and numbers do not convert into each other",
                                spec.name, f.name, spec.side(Side::Left).table, f.left[0], spec.side(Side::Right).table, f.right[0]
                            ),
                            fix: "map columns of compatible types, or use a `map` transform between the values".into(),
                        });
                    }
                }
                Transform::Scale(_) => {
                    if kind(&decl(Side::Right, 0)) == Kind::Text {
                        problems.push(Problem {
                            line: line_of(text, &f.right[0]),
                            what: format!(
                                "sync `{}`: scale field `{}` writes whole numbers to text column `{}`",
                                spec.name, f.name, f.right[0]
                            ),
                            fix: "the right column of a scale is an integer column (cents); swap left and right if needed"
                                .into(),
                        });
                    }
                }
                Transform::Join(_) => {
                    let single = if f.left.len() == 1 { Side::Left } else { Side::Right };
                    if kind(&decl(single, 0)) == Kind::Number {
                        problems.push(Problem {
                            line: line_of(text, &f.columns(single)[0]),
                            what: format!(
                                "sync `{}`: join field `{}` writes its joined text to numeric column `{}`",
                                spec.name,
                                f.name,
                                f.columns(single)[0]
                            ),
                            fix: "the one-column side of a join is a text column".into(),
                        });
                    }
                }
                Transform::SplitName => {
                    for side in [Side::Left, Side::Right] {
                        for (i, c) in f.columns(side).iter().enumerate() {
                            if kind(&decl(side, i)) == Kind::Number {
                                problems.push(Problem {
                                    line: line_of(text, c),
                                    what: format!(
                                        "sync `{}`: split_name field `{}` uses numeric column `{c}`",
                                        spec.name, f.name
                                    ),
                                    fix: "split_name works on text columns".into(),
                                });
                            }
                        }
                    }
                }
                Transform::ValueMap(pairs) => {
                    for (side, pick) in [(Side::Left, 0usize), (Side::Right, 1)] {
                        let d = decl(side, 0);
                        for p in pairs {
                            let v = if pick == 0 { &p.0 } else { &p.1 };
                            if !value_fits(&d, v) {
                                problems.push(Problem {
                                    line: line_of(text, &f.left[0]),
                                    what: format!(
                                        "sync `{}`: map value {v} of field `{}` does not fit {} column `{}`",
                                        spec.name,
                                        f.name,
                                        d,
                                        f.columns(side)[0]
                                    ),
                                    fix: "use values of the column's type in the map".into(),
                                });
                            }
                        }
                    }
                }
            }
        }
        if let Some(m) = &spec.match_on {
            need(problems, Side::Left, &m.left, "match_on column");
            need(problems, Side::Right, &m.right, "match_on column");
        }
        for side in [Side::Left, Side::Right] {
            if let Some(filter) = &spec.filters[side.index()] {
                for c in filter.columns() {
                    need(problems, side, c, "filter column");
                }
            }
            for c in spec.defaults[side.index()].keys() {
                need(problems, side, c, "default column");
            }
            if let DeleteRule::Soft { column, .. } = &spec.deletes[side.index()] {
                need(problems, side.other(), column, "soft-delete column");
            }
        }
        // Records may be created on a side: every NOT NULL column without a default must be
        // written by the mapping or by `defaults`.
        for target in [Side::Left, Side::Right] {
            if !ok[target.index()] {
                continue;
            }
            let source = target.other();
            let ent = spec.side(target);
            for c in &cols[target.index()] {
                let is_key = spec.side(target).key.contains(&c.name);
                if c.generated || !(c.not_null || is_key) {
                    continue;
                }
                let written = spec
                    .fields
                    .iter()
                    .any(|f| f.flow.allows_from(source) && f.columns(target).iter().any(|x| *x == c.name))
                    || spec.defaults[target.index()].contains_key(c.name.as_str());
                if !written {
                    problems.push(Problem {
                        line: line_of(text, &ent.table),
                        what: format!(
                            "sync `{}`: {}.{}.{} is {} without a default, and no field from {} writes it, so records cannot be created there",
                            spec.name,
                            ent.system,
                            ent.table,
                            c.name,
                            if is_key { "a key column" } else { "NOT NULL" },
                            spec.system(source)
                        ),
                        fix: format!("map a field to `{}`, or add it under [sync.defaults.{}]", c.name, ent.system),
                    });
                }
            }
        }
    }
}
