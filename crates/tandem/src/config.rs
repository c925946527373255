//! Loading and validating `tandem.toml`, in two phases: pure checks that collect every problem
//! with its line, then checks against the systems themselves (tables, columns, types).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_core::mapping::{FieldMap, Flow, Side, Transform};
use tandem_core::rules::{ConflictRule, DeleteRule, EntitySpec, Filter, MatchOn, OnPositionLost, SyncSpec};
use tandem_core::value::{Name, Row, Value};
use toml::Spanned;

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub what: String,
    /// How to fix it.
    pub fix: String,
}

/// Every problem found in a config file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigErrors {
    /// The file.
    pub file: PathBuf,
    /// The problems, in file order where lines are known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{} has {n} problem{}:", self.file.display(), if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            match p.line {
                Some(l) => writeln!(f, "{}:{l}: {}", self.file.display(), p.what)?,
                None => writeln!(f, "{}: {}", self.file.display(), p.what)?,
            }
            writeln!(f, "    fix: {}", p.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A system as configured.
#[derive(Clone, Debug)]
pub enum System {
    /// A SQLite file.
    Sqlite {
        /// The file (resolved against the config file's folder).
        path: PathBuf,
    },
    /// A PostgreSQL database.
    Postgres {
        /// Connection settings, with the password from the environment (never printed).
        url: Box<tandem_connectors::postgres::PgUrl>,
    },
    /// A MariaDB or MySQL database.
    Mysql {
        /// Connection settings, with the password from the environment (never printed).
        url: Box<tandem_connectors::mysql::MyUrl>,
    },
}

/// A validated config.
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file.
    pub file: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// Records per batch.
    pub batch_size: usize,
    /// Pause between polls when idle.
    pub poll_interval: Duration,
    /// Systems by name.
    pub systems: BTreeMap<String, System>,
    /// The syncs.
    pub syncs: Vec<SyncSpec>,
    /// The admin HTTP server, when `[admin]` is configured.
    pub admin: Option<Admin>,
    /// How long audit rows are kept (forever when `None`).
    pub audit_retention: Option<Duration>,
}

/// The admin server's settings.
#[derive(Clone)]
pub struct Admin {
    /// Where it listens.
    pub listen: std::net::SocketAddr,
    /// The bearer token every endpoint but `/health` requires (from the environment).
    pub token: Option<Secret>,
    /// Why the token could not be read (a variable not set): only `tandem run` needs it.
    pub token_problem: Option<String>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token)
            .field("token_problem", &self.token_problem)
            .finish()
    }
}

/// A secret from the environment: never printed, compared in constant time.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(secret)")
    }
}

/// Whether a URL carries a password written out instead of an `${ENV_VAR}` reference.
fn literal_password(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else { return false };
    let Some((userinfo, _)) = rest.split_once('@') else { return false };
    match userinfo.split_once(':') {
        Some((_, pw)) => {
            let reference = pw.starts_with("${") && pw.ends_with('}') && pw.matches("${").count() == 1;
            !pw.is_empty() && !reference
        }
        None => false,
    }
}

#[derive(Deserialize)]
struct RawConfig {
    state: Option<Spanned<String>>,
    batch_size: Option<Spanned<i64>>,
    poll_interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    systems: BTreeMap<String, Spanned<RawSystem>>,
    #[serde(default)]
    sync: Vec<RawSync>,
    admin: Option<Spanned<RawAdmin>>,
    audit: Option<Spanned<RawAudit>>,
}

#[derive(Deserialize)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawAudit {
    retention_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
struct RawSystem {
    kind: Spanned<String>,
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    datetime_zone: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawSide {
    system: Spanned<String>,
    table: Spanned<String>,
    key: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
struct RawMatch {
    left: Spanned<String>,
    right: Spanned<String>,
    #[serde(default)]
    case_insensitive: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Columns {
    One(String),
    Many(Vec<String>),
}

impl Columns {
    fn list(&self) -> Vec<String> {
        match self {
            Columns::One(c) => vec![c.clone()],
            Columns::Many(v) => v.clone(),
        }
    }
}

#[derive(Deserialize)]
struct RawField {
    name: Option<String>,
    left: Spanned<Columns>,
    right: Spanned<Columns>,
    transform: Option<Spanned<toml::Value>>,
    only_from: Option<Spanned<String>>,
    conflict: Option<Spanned<toml::Value>>,
    #[serde(default)]
    sensitive: bool,
}

#[derive(Deserialize)]
struct RawSync {
    name: Spanned<String>,
    left: Spanned<RawSide>,
    right: Spanned<RawSide>,
    match_on: Option<Spanned<RawMatch>>,
    conflict: Option<Spanned<toml::Value>>,
    tie_break: Option<Spanned<String>>,
    on_position_lost: Option<Spanned<String>>,
    #[serde(default)]
    deletes: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    filter: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    defaults: BTreeMap<String, Spanned<BTreeMap<String, toml::Value>>>,
    #[serde(default)]
    fields: Vec<RawField>,
}

struct Ctx<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())].matches('\n').count() + 1
    }

    fn at(&mut self, span: std::ops::Range<usize>, what: impl Into<String>, fix: impl Into<String>) {
        let line = Some(self.line(span));
        self.problems.push(Problem { line, what: what.into(), fix: fix.into() });
    }
}

/// Expands `${VAR}` references from the environment.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').ok_or_else(|| format!("`${{` without a closing `}}` in {s:?}"))?;
        let var = &rest[i + 2..i + end];
        let val = std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))?;
        out.push_str(&val);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn toml_to_value(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::String(s) => Some(Value::Text(s.clone())),
        toml::Value::Integer(i) => Some(Value::Int(*i)),
        toml::Value::Float(f) => Some(Value::Float(*f)),
        toml::Value::Boolean(b) => Some(Value::Int(i64::from(*b))),
        toml::Value::Datetime(d) => Some(Value::Text(d.to_string())),
        _ => None,
    }
}

/// Finds the line of a key given its serde path (`sync.0.fields.1.transfrom`).
fn line_of_path(text: &str, path: &str) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut segs = path.split('.').peekable();
    let mut span = None;
    while let Some(seg) = segs.next() {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == seg)?;
        span = Some(k.span());
        let mut v = v.get_ref();
        if let (toml::de::DeValue::Array(arr), Some(idx)) = (v, segs.peek().and_then(|s| s.parse::<usize>().ok())) {
            segs.next();
            v = arr.get(idx)?.get_ref();
        }
        match v {
            toml::de::DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    span.map(|s| text[..s.start].matches('\n').count() + 1)
}

fn parse_rule(ctx: &mut Ctx<'_>, v: &Spanned<toml::Value>, systems: &[&str; 2], what: &str) -> Option<ConflictRule> {
    let bad = |ctx: &mut Ctx<'_>, msg: String| {
        ctx.at(v.span(), msg, format!("write `latest`, `hold`, `merge_lines` or `{{ prefer = \"{}\" }}`", systems[1]));
        None
    };
    match v.get_ref() {
        toml::Value::String(s) if s == "latest" => Some(ConflictRule::Latest),
        toml::Value::String(s) if s == "hold" => Some(ConflictRule::Hold),
        toml::Value::String(s) if s == "merge_lines" => Some(ConflictRule::MergeLines),
        toml::Value::Table(t) if t.len() == 1 && t.contains_key("prefer") => match t["prefer"].as_str() {
            Some(sys) if sys == systems[0] => Some(ConflictRule::Prefer(Side::Left)),
            Some(sys) if sys == systems[1] => Some(ConflictRule::Prefer(Side::Right)),
            Some(sys) => bad(
                ctx,
                format!(
                    "{what}: `prefer` names system `{sys}`, which is not in this sync ({} and {})",
                    systems[0], systems[1]
                ),
            ),
            None => bad(ctx, format!("{what}: `prefer` must name a system")),
        },
        other => bad(ctx, format!("{what}: unknown conflict rule {other}")),
    }
}

fn side_of(name: &str, systems: &[&str; 2]) -> Option<Side> {
    if name == systems[0] {
        Some(Side::Left)
    } else if name == systems[1] {
        Some(Side::Right)
    } else {
        None
    }
}

/// Reads and validates a config file: syntax, unknown keys, names, rules, and then the
/// systems' schemas. Every problem is reported at once.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    let fail = |problems: Vec<Problem>| ConfigErrors { file: file.to_path_buf(), problems };
    let text = std::fs::read_to_string(file).map_err(|e| {
        fail(vec![Problem {
            line: None,
            what: format!("cannot read the config file: {e}"),
            fix: "check the path given with -c (the default is ./tandem.toml); `tandem demo` writes an example".into(),
        }])
    })?;
    // Both phases run even when the first finds problems, so one `tandem check` lists them all.
    let (mut cfg, mut problems) = parse_partial(file, &text)?;
    crate::schema_check::check(&mut cfg, &text, &mut problems);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        problems.sort_by_key(|p| p.line.unwrap_or(0));
        problems.dedup();
        Err(fail(problems))
    }
}

/// The pure phase alone: parses and checks the text without touching any system.
#[cfg(test)]
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let (cfg, mut problems) = parse_partial(file, text)?;
    if problems.is_empty() {
        Ok(cfg)
    } else {
        problems.sort_by_key(|p| p.line.unwrap_or(0));
        Err(ConfigErrors { file: file.to_path_buf(), problems })
    }
}

/// Parses as much as can be parsed: the config (with the parts in error left out or at their
/// defaults) and the problems found. Fails outright only when the TOML cannot be read at all.
fn parse_partial(file: &Path, text: &str) -> Result<(Config, Vec<Problem>), ConfigErrors> {
    let fail = |problems: Vec<Problem>| ConfigErrors { file: file.to_path_buf(), problems };
    let mut unknown = Vec::new();
    let de = toml::Deserializer::parse(text).map_err(|e| syntax_problem(text, &e)).map_err(|p| fail(vec![p]))?;
    let raw: RawConfig = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
        .map_err(|e| syntax_problem(text, &e))
        .map_err(|p| fail(vec![p]))?;
    let mut ctx = Ctx { text, problems: Vec::new() };
    for path in unknown {
        let path: String =
            path.split('.').filter(|seg| !seg.starts_with("$__serde_spanned")).collect::<Vec<_>>().join(".");
        let key = path.rsplit('.').next().unwrap_or(&path).to_string();
        ctx.problems.push(Problem {
            line: line_of_path(text, &path),
            what: format!("unknown key `{key}` (at `{path}`)"),
            fix: "remove it or correct its spelling; the README lists every key".into(),
        });
    }
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |ctx: &mut Ctx<'_>, s: &Spanned<String>| -> PathBuf {
        match expand_env(s.get_ref()) {
            Ok(p) => dir.join(p),
            Err(e) => {
                ctx.at(s.span(), e, "set the variable, or write the path without `${...}`");
                PathBuf::new()
            }
        }
    };
    let state = match &raw.state {
        Some(s) => resolve(&mut ctx, s),
        None => dir.join("tandem-state.db"),
    };
    let batch_size = match &raw.batch_size {
        Some(b) if *b.get_ref() < 1 || *b.get_ref() > 100_000 => {
            ctx.at(
                b.span(),
                format!("batch_size {} is out of range", b.get_ref()),
                "use a number from 1 to 100000 (default 500)",
            );
            500
        }
        Some(b) => *b.get_ref() as usize,
        None => 500,
    };
    let poll_interval = match &raw.poll_interval_ms {
        Some(p) if *p.get_ref() < 10 || *p.get_ref() > 3_600_000 => {
            ctx.at(
                p.span(),
                format!("poll_interval_ms {} is out of range", p.get_ref()),
                "use 10 to 3600000 ms (default 200)",
            );
            Duration::from_millis(200)
        }
        Some(p) => Duration::from_millis(*p.get_ref() as u64),
        None => Duration::from_millis(200),
    };

    let mut systems = BTreeMap::new();
    for (name, sys) in &raw.systems {
        let span = sys.span();
        let sys = sys.get_ref();
        match sys.kind.get_ref().as_str() {
            "sqlite" if sys.datetime_zone.is_some() => ctx.at(
                sys.datetime_zone.as_ref().map(|z| z.span()).unwrap_or(span),
                format!("system `{name}`: datetime_zone is for MariaDB/MySQL systems (their DATETIME has no zone)"),
                "remove it",
            ),
            "sqlite" => match &sys.path {
                Some(p) => {
                    let path = resolve(&mut ctx, p);
                    systems.insert(name.clone(), System::Sqlite { path });
                }
                None => ctx.at(
                    span,
                    format!("system `{name}` has no `path`"),
                    "add `path = \"file.db\"` (relative to the config file)",
                ),
            },
            kind @ ("postgres" | "mysql" | "mariadb") => {
                let (scheme, var, port) = if kind == "postgres" {
                    ("postgres", "PGPASSWORD", 5432)
                } else {
                    ("mysql", "MYSQL_PASSWORD", 3306)
                };
                let example = format!("{scheme}://user:${{{var}}}@host:{port}/database");
                match &sys.url {
                    Some(u) if literal_password(u.get_ref()) => ctx.at(
                        u.span(),
                        format!(
                            "system `{name}`: the url has its password written out; secrets never go in config files"
                        ),
                        format!("write the password as an environment reference: {example}"),
                    ),
                    Some(u) => match expand_env(u.get_ref()) {
                        Ok(expanded) => {
                            let zone = match (&sys.datetime_zone, kind) {
                                (Some(z), "mysql" | "mariadb") => {
                                    match tandem_connectors::mysql::Zone::parse(z.get_ref()) {
                                        Ok(zone) => Some(zone),
                                        Err(e) => {
                                            ctx.at(
                                            z.span(),
                                            format!("system `{name}`: datetime_zone {e}"),
                                            "write the zone its DATETIME values mean, e.g. datetime_zone = \"Europe/Berlin\" or \"+01:00\"",
                                        );
                                            None
                                        }
                                    }
                                }
                                (Some(z), _) => {
                                    ctx.at(
                                        z.span(),
                                        format!("system `{name}`: datetime_zone is for MariaDB/MySQL systems (their DATETIME has no zone)"),
                                        "remove it; PostgreSQL's timestamptz carries its zone",
                                    );
                                    None
                                }
                                (None, _) => None,
                            };
                            let parsed = if kind == "postgres" {
                                tandem_connectors::postgres::PgUrl::parse(&expanded)
                                    .map(|url| System::Postgres { url: Box::new(url) })
                            } else {
                                tandem_connectors::mysql::MyUrl::parse(&expanded).map(|url| {
                                    let url = match zone {
                                        Some(z) => url.with_datetime_zone(z),
                                        None => url,
                                    };
                                    System::Mysql { url: Box::new(url) }
                                })
                            };
                            match parsed {
                                Ok(system) => {
                                    systems.insert(name.clone(), system);
                                }
                                Err(e) => {
                                    ctx.at(u.span(), format!("system `{name}`: url is {e}"), format!("write {example}"))
                                }
                            }
                        }
                        Err(e) => {
                            ctx.at(u.span(), format!("system `{name}`: {e}"), "set the variable before running tandem")
                        }
                    },
                    None => ctx.at(span, format!("system `{name}` has no `url`"), format!("add url = \"{example}\"")),
                }
            }
            other => ctx.at(
                sys.kind.span(),
                format!("system `{name}` has kind `{other}`, which this version does not support"),
                "use kind = \"sqlite\", \"postgres\" or \"mysql\" (MariaDB or MySQL)",
            ),
        }
    }
    if raw.systems.is_empty() {
        ctx.problems.push(Problem {
            line: None,
            what: "no systems are configured".into(),
            fix: "add [systems.NAME] tables with kind and path".into(),
        });
    }
    if raw.sync.is_empty() {
        ctx.problems.push(Problem {
            line: None,
            what: "no syncs are configured".into(),
            fix: "add a [[sync]] table pairing a table of one system with one of another".into(),
        });
    }

    let mut syncs = Vec::new();
    let mut seen_names: Vec<String> = Vec::new();
    let mut seen_tables: Vec<(String, String)> = Vec::new();
    for rs in &raw.sync {
        let name = rs.name.get_ref().clone();
        if seen_names.contains(&name) {
            ctx.at(rs.name.span(), format!("two syncs are named `{name}`"), "give each sync its own name");
        }
        seen_names.push(name.clone());
        let mut sides = Vec::new();
        for (label, side) in [("left", &rs.left), ("right", &rs.right)] {
            let s = side.get_ref();
            let sys = s.system.get_ref();
            if !raw.systems.contains_key(sys) {
                let known: Vec<&str> = raw.systems.keys().map(String::as_str).collect();
                ctx.at(
                    s.system.span(),
                    format!("sync `{name}`: {label} names system `{sys}`, which is not configured"),
                    format!("use one of: {}", known.join(", ")),
                );
            }
            let pair = (sys.clone(), s.table.get_ref().clone());
            if seen_tables.contains(&pair) {
                ctx.at(
                    s.table.span(),
                    format!("table `{}` of `{sys}` is in more than one sync", pair.1),
                    "sync each table in one sync only (this version keeps one change log per table)",
                );
            }
            seen_tables.push(pair);
            sides.push(EntitySpec {
                system: sys.clone(),
                table: s.table.get_ref().clone(),
                key: s.key.as_ref().map(|k| k.get_ref().clone()).unwrap_or_default(),
            });
        }
        let names = [sides[0].system.clone(), sides[1].system.clone()];
        let sysnames = [names[0].as_str(), names[1].as_str()];
        if names[0] == names[1] {
            ctx.at(
                rs.right.span(),
                format!("sync `{name}` uses system `{}` on both sides, so its rules (keyed by system) could not tell the sides apart", names[0]),
                "add a second [systems.NAME] entry for the right side (it may point to the same database)",
            );
        }
        let rule = match &rs.conflict {
            Some(v) => parse_rule(&mut ctx, v, &sysnames, &format!("sync `{name}`")).unwrap_or(ConflictRule::Latest),
            None => ConflictRule::Latest,
        };
        let tie_break = match &rs.tie_break {
            Some(t) => side_of(t.get_ref(), &sysnames).unwrap_or_else(|| {
                ctx.at(
                    t.span(),
                    format!("sync `{name}`: tie_break names `{}`, which is not in this sync", t.get_ref()),
                    format!("use `{}` or `{}`", names[0], names[1]),
                );
                Side::Left
            }),
            None => Side::Left,
        };
        let on_position_lost = match rs.on_position_lost.as_ref().map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "fail")) => OnPositionLost::Fail,
            Some((_, "resnapshot")) => OnPositionLost::Resnapshot,
            Some((s, other)) => {
                ctx.at(
                    s.span(),
                    format!("sync `{name}`: unknown on_position_lost `{other}`"),
                    "write \"fail\" (stop with an error) or \"resnapshot\" (re-read and reconcile)",
                );
                OnPositionLost::Fail
            }
        };
        let mut deletes = [DeleteRule::Propagate, DeleteRule::Propagate];
        for (sys, v) in &rs.deletes {
            let Some(side) = side_of(sys, &sysnames) else {
                ctx.at(
                    v.span(),
                    format!("sync `{name}`: deletes names `{sys}`, which is not in this sync"),
                    format!("key the delete rules by `{}` or `{}`", names[0], names[1]),
                );
                continue;
            };
            let fix = "write `propagate`, `ignore` or `{ soft = { column = \"deleted_at\", value = 1 } }`";
            match v.get_ref() {
                toml::Value::String(s) if s == "propagate" => deletes[side.index()] = DeleteRule::Propagate,
                toml::Value::String(s) if s == "ignore" => deletes[side.index()] = DeleteRule::Ignore,
                toml::Value::Table(t) if t.len() == 1 && t.get("soft").and_then(|s| s.as_table()).is_some() => {
                    let soft = t["soft"].as_table().expect("checked");
                    match (soft.get("column").and_then(|c| c.as_str()), soft.get("value").and_then(toml_to_value)) {
                        (Some(c), Some(val)) if soft.len() == 2 => {
                            deletes[side.index()] = DeleteRule::Soft { column: c.to_string(), value: val }
                        }
                        _ => ctx.at(
                            v.span(),
                            format!("sync `{name}`: a soft delete needs exactly `column` and `value`"),
                            fix,
                        ),
                    }
                }
                other => ctx.at(v.span(), format!("sync `{name}`: unknown delete rule {other} for `{sys}`"), fix),
            }
        }
        let mut filters: [Option<Filter>; 2] = [None, None];
        for (sys, f) in &rs.filter {
            let Some(side) = side_of(sys, &sysnames) else {
                ctx.at(
                    f.span(),
                    format!("sync `{name}`: filter names `{sys}`, which is not in this sync"),
                    format!("key filters by `{}` or `{}`", names[0], names[1]),
                );
                continue;
            };
            match Filter::parse(f.get_ref()) {
                Ok(filter) => filters[side.index()] = Some(filter),
                Err(e) => ctx.at(
                    f.span(),
                    format!("sync `{name}`: filter for `{sys}`: {e}"),
                    "see the README's filter syntax",
                ),
            }
        }
        let mut defaults = [Row::new(), Row::new()];
        for (sys, vals) in &rs.defaults {
            let Some(side) = side_of(sys, &sysnames) else {
                ctx.at(
                    vals.span(),
                    format!("sync `{name}`: defaults names `{sys}`, which is not in this sync"),
                    format!("key defaults by `{}` or `{}`", names[0], names[1]),
                );
                continue;
            };
            for (col, v) in vals.get_ref() {
                match toml_to_value(v) {
                    Some(val) => {
                        defaults[side.index()].insert(col.as_str().into(), val);
                    }
                    None => ctx.at(
                        vals.span(),
                        format!("sync `{name}`: default for `{col}` is not a plain value"),
                        "use a string, number or boolean",
                    ),
                }
            }
        }
        let match_on = rs.match_on.as_ref().map(|m| {
            let m = m.get_ref();
            MatchOn {
                left: m.left.get_ref().clone(),
                right: m.right.get_ref().clone(),
                case_insensitive: m.case_insensitive,
            }
        });

        let mut fields = Vec::new();
        let mut sensitive = Vec::new();
        let mut field_rules = Vec::new();
        for rf in &rs.fields {
            let left = rf.left.get_ref().list();
            let right = rf.right.get_ref().list();
            let fname = rf.name.clone().unwrap_or_else(|| left.join("+"));
            let transform = match rf.transform.as_ref().map(|t| (t, t.get_ref())) {
                None => Transform::Rename,
                Some((_, toml::Value::String(s))) if s == "rename" => Transform::Rename,
                Some((_, toml::Value::String(s))) if s == "split_name" => Transform::SplitName,
                Some((t, toml::Value::Table(tab)))
                    if tab.len() == 1 && tab.get("map").and_then(|m| m.as_table()).is_some() =>
                {
                    let mut pairs = Vec::new();
                    for (l, r) in tab["map"].as_table().expect("checked") {
                        match toml_to_value(r) {
                            Some(rv) => pairs.push((Value::Text(l.clone()), rv)),
                            None => ctx.at(
                                t.span(),
                                format!("field `{fname}`: map value for `{l}` is not a plain value"),
                                "use strings or numbers",
                            ),
                        }
                    }
                    let mut seen: Vec<&Value> = Vec::new();
                    for (_, r) in &pairs {
                        if seen.iter().any(|s| s.same(r)) {
                            ctx.at(
                                t.span(),
                                format!("field `{fname}`: the map sends two values to {r}, so it has no inverse"),
                                "make the map one-to-one",
                            );
                        }
                        seen.push(r);
                    }
                    Transform::ValueMap(pairs)
                }
                Some((t, toml::Value::Table(tab))) if tab.len() == 1 && tab.contains_key("scale") => {
                    let digits = tab["scale"].as_integer().map(|n| n.to_string()).and_then(|n| {
                        (n.starts_with('1') && n[1..].chars().all(|c| c == '0') && n.len() <= 10)
                            .then(|| n.len() as u32 - 1)
                    });
                    match digits {
                        Some(d) => Transform::Scale(d),
                        _ => {
                            ctx.at(
                                t.span(),
                                format!("field `{fname}`: scale must be 1, 10, 100, … (the right value is the left one times it)"),
                                "write `{ scale = 100 }` for a decimal ⇄ cents",
                            );
                            Transform::Rename
                        }
                    }
                }
                Some((t, toml::Value::Table(tab)))
                    if tab.len() == 1 && tab.get("join").and_then(|j| j.as_str()).is_some() =>
                {
                    match tandem_core::mapping::parse_template(tab["join"].as_str().expect("checked")) {
                        Ok(parts) => Transform::Join(parts),
                        Err(e) => {
                            ctx.at(
                                t.span(),
                                format!("field `{fname}`: join template: {e}"),
                                "write `{ join = \"{street}, {postal_code} {city}\" }` naming the columns of the many-column side",
                            );
                            Transform::Rename
                        }
                    }
                }
                Some((t, other)) => {
                    ctx.at(
                        t.span(),
                        format!("field `{fname}`: unknown transform {other}"),
                        "use `rename`, `split_name`, `{ map = { \"left value\" = \"right value\" } }`, `{ scale = 100 }` or `{ join = \"{a}, {b}\" }`",
                    );
                    Transform::Rename
                }
            };
            if let Transform::Join(parts) = &transform {
                let named = tandem_core::mapping::template_columns(parts);
                let many = if left.len() > 1 { &left } else { &right };
                if *many != named {
                    ctx.at(
                        rf.left.span(),
                        format!("field `{fname}`: the join template names {named:?}, the columns are {many:?}"),
                        "name the many-column side's columns in the template, in the same order",
                    );
                }
            }
            let shape_ok = match transform {
                Transform::Rename | Transform::ValueMap(_) | Transform::Scale(_) => left.len() == 1 && right.len() == 1,
                Transform::Join(_) => (left.len() == 1) != (right.len() == 1),
                Transform::SplitName => (left.len() == 1 && right.len() == 2) || (left.len() == 2 && right.len() == 1),
            };
            if !shape_ok {
                let fix = match transform {
                    Transform::SplitName => "split_name maps one full-name column to two columns (first, last)",
                    _ => "name one column on each side, or use `transform = \"split_name\"` for first + last name",
                };
                ctx.at(
                    rf.left.span(),
                    format!(
                        "field `{fname}`: {} column(s) on the left and {} on the right do not fit this transform",
                        left.len(),
                        right.len()
                    ),
                    fix,
                );
                continue;
            }
            let flow = match &rf.only_from {
                None => Flow::Both,
                Some(s) => match side_of(s.get_ref(), &sysnames) {
                    Some(side) => Flow::From(side),
                    None => {
                        ctx.at(
                            s.span(),
                            format!("field `{fname}`: only_from names `{}`, which is not in this sync", s.get_ref()),
                            format!("use `{}` or `{}`", names[0], names[1]),
                        );
                        Flow::Both
                    }
                },
            };
            if let Some(c) = &rf.conflict {
                if let Some(r) = parse_rule(&mut ctx, c, &sysnames, &format!("field `{fname}`")) {
                    field_rules.push((fname.clone(), r));
                }
            }
            if fields.iter().any(|f: &FieldMap| f.name == fname) {
                ctx.at(
                    rf.left.span(),
                    format!("sync `{name}`: field `{fname}` is mapped twice"),
                    "map each column once, or give the fields distinct `name`s",
                );
            }
            if rf.sensitive {
                sensitive.push(fname.clone());
            }
            fields.push(FieldMap {
                name: fname.into(),
                left: left.into_iter().map(Name::from).collect(),
                right: right.into_iter().map(Name::from).collect(),
                transform,
                flow,
            });
        }
        if fields.is_empty() {
            ctx.at(
                rs.name.span(),
                format!("sync `{name}` maps no fields"),
                "add [[sync.fields]] tables with `left` and `right` columns",
            );
        }
        syncs.push(SyncSpec {
            name,
            sides: [sides[0].clone(), sides[1].clone()],
            fields,
            rule,
            field_rules,
            tie_break,
            match_on,
            deletes,
            filters,
            defaults,
            on_position_lost,
            sensitive,
        });
    }
    let admin = raw.admin.as_ref().and_then(|a| parse_admin(&mut ctx, a));
    let audit_retention = match raw.audit.as_ref().and_then(|a| a.get_ref().retention_days.as_ref()) {
        Some(d) if *d.get_ref() < 1 => {
            ctx.at(
                d.span(),
                format!("audit retention_days {} is out of range", d.get_ref()),
                "use a number of days from 1 up, or leave it out to keep the audit trail forever",
            );
            None
        }
        Some(d) => Some(Duration::from_secs(*d.get_ref() as u64 * 86_400)),
        None => None,
    };
    let cfg =
        Config { file: file.to_path_buf(), state, batch_size, poll_interval, systems, syncs, admin, audit_retention };
    Ok((cfg, ctx.problems))
}

/// The `[admin]` table: a listen address (127.0.0.1:7420 by default) and a token that must be
/// an `${ENV}` reference; a non-loopback address without a token is refused.
fn parse_admin(ctx: &mut Ctx<'_>, a: &Spanned<RawAdmin>) -> Option<Admin> {
    let raw = a.get_ref();
    let listen = match &raw.listen {
        Some(l) => match l.get_ref().parse::<std::net::SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                ctx.at(
                    l.span(),
                    format!("admin listen `{}` is not an address with a port", l.get_ref()),
                    "write it as IP:PORT, e.g. listen = \"127.0.0.1:7420\"",
                );
                return None;
            }
        },
        None => std::net::SocketAddr::from(([127, 0, 0, 1], 7420)),
    };
    let mut token_problem = None;
    let token = match &raw.token {
        Some(t) => {
            let text = t.get_ref();
            let reference = text.starts_with("${") && text.ends_with('}') && text.matches("${").count() == 1;
            if !reference {
                ctx.at(
                    t.span(),
                    "the admin token is written out; secrets never go in config files",
                    "write it as an environment reference: token = \"${TANDEM_ADMIN_TOKEN}\"",
                );
                return None;
            }
            match expand_env(text) {
                Ok(v) if v.len() >= 16 => Some(Secret(v)),
                Ok(_) => {
                    ctx.at(
                        t.span(),
                        format!("the admin token in {text} is shorter than 16 characters"),
                        "use a long random token, e.g. `openssl rand -hex 24`",
                    );
                    return None;
                }
                Err(e) => {
                    let line = ctx.line(t.span());
                    token_problem = Some(format!("line {line}: admin token: {e}; set it before `tandem run`"));
                    None
                }
            }
        }
        None => None,
    };
    if raw.token.is_none() && !listen.ip().is_loopback() {
        ctx.at(
            a.span(),
            format!("the admin server would listen on {listen}, off this machine, without a token"),
            "add token = \"${TANDEM_ADMIN_TOKEN}\", or listen on 127.0.0.1",
        );
        return None;
    }
    Some(Admin { listen, token, token_problem })
}

fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    Problem {
        line,
        what: e.message().trim().to_string(),
        fix: "correct the TOML at that line (see the README's example)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_problem_with_lines() {
        let text = r#"
[systems.crm]
kind = "sqlite"
path = "crm.db"
colour = "blue"

[[sync]]
name = "people"
left = { system = "crm", table = "contacts", key = ["id"] }
right = { system = "erp", table = "customers", key = ["no"] }
conflict = { prefer = "sap" }

[[sync.fields]]
left = "full_name"
right = ["first", "last"]
transfrom = "split_name"
"#;
        let err = parse(Path::new("t.toml"), text).unwrap_err();
        let msgs: Vec<String> = err.problems.iter().map(|p| format!("{:?}: {}", p.line, p.what)).collect();
        assert!(msgs.iter().any(|m| m.starts_with("Some(5)") && m.contains("colour")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.starts_with("Some(10)") && m.contains("`erp`")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.starts_with("Some(11)") && m.contains("sap")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.starts_with("Some(16)") && m.contains("transfrom")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("do not fit this transform")), "{msgs:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse(Path::new("t.toml"), "[systems.crm]\nkind = \n").unwrap_err();
        assert_eq!(err.problems[0].line, Some(2));
    }

    #[test]
    fn literal_passwords_are_refused() {
        assert!(literal_password("postgres://u:hunter2@h/db"));
        assert!(!literal_password("postgres://u:${PGPASSWORD}@h/db"));
        assert!(!literal_password("postgres://u@h/db"));
        assert!(literal_password("postgres://u:${A}x@h/db"));
    }

    #[test]
    fn env_references_expand() {
        std::env::set_var("TANDEM_TEST_DIR", "/data");
        assert_eq!(expand_env("${TANDEM_TEST_DIR}/crm.db").unwrap(), "/data/crm.db");
        assert!(expand_env("${TANDEM_SURELY_UNSET_VAR}").is_err());
    }
}
