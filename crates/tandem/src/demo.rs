//! `tandem demo`: two SQLite databases shaped differently, a config, and a narrated sync.

use crate::commands::sync_until;
use crate::config;
use crate::error::CliError;
use crate::format;
use crate::runner::Runner;
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use tandem_core::store::StateStore;

/// The demo's config, written beside the databases.
pub const DEMO_CONFIG: &str = r#"# Tandem demo: a CRM's contacts (crm.db) in two-way sync with an ERP's customers (erp.db).
# Run it with `tandem run -c tandem.toml` (Ctrl-C stops), or `tandem run --once`.

# Tandem's own state: links between records, the last agreed values, cursors, audit trail.
state = "tandem-state.db"
batch_size = 500          # records per batch
poll_interval_ms = 200    # how often to look for changes when idle

[systems.crm]
kind = "sqlite"
path = "crm.db"           # relative to this file; "${DATA_DIR}/crm.db" reads an env variable

[systems.erp]
kind = "sqlite"
path = "erp.db"

[[sync]]
name = "people"
left = { system = "crm", table = "contacts", key = ["id"] }
right = { system = "erp", table = "customers", key = ["customer_no"] }   # the ERP generates customer_no
# On the first sync, link records with the same email instead of creating duplicates.
match_on = { left = "email_address", right = "user_email", case_insensitive = true }
# A field changed on both sides since the last sync: the later change wins...
conflict = "latest"
tie_break = "crm"         # ...and on an exact tie, the CRM's

# What a delete in one system does to the other: "propagate", "ignore",
# or { soft = { column = "deleted_at", value = "yes" } }.
[sync.deletes]
crm = "propagate"
erp = "propagate"

# Values for columns that only one side has, when Tandem creates a record there.
[sync.defaults.erp]
payment_terms = "NET30"

# Fields. `left` is a column of crm.contacts, `right` one (or two) of erp.customers.
[[sync.fields]]
name = "name"
left = "full_name"
right = ["first_name", "last_name"]
transform = "split_name"      # "Ada Lovelace" <-> first "Ada", last "Lovelace"

[[sync.fields]]
left = "email_address"
right = "user_email"          # a rename

[[sync.fields]]
left = "phone"
right = "phone_number"

[[sync.fields]]
left = "payment_terms"
right = "payment_terms"
transform = { map = { "Net 30 days" = "NET30", "Net 60 days" = "NET60", "Due on receipt" = "DUE" } }
only_from = "erp"             # the ERP owns payment terms; edits in the CRM are put back

[[sync.fields]]
left = "notes"
right = "notes"
conflict = "hold"             # both sides edited the notes? keep both, ask a person (`tandem conflicts`)
"#;

const CRM_SCHEMA: &str = "
CREATE TABLE contacts (
    id INTEGER PRIMARY KEY,
    full_name TEXT,
    email_address TEXT,
    phone TEXT,
    payment_terms TEXT,
    notes TEXT,
    updated_at TEXT DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO contacts (full_name, email_address, phone, notes) VALUES
    ('Ada Lovelace', 'ada@analytical.example', '+44 20 7946 0001', 'Met at the engine demo'),
    ('Grace Hopper', 'grace@navy.example', '+1 202 555 0142', NULL),
    ('Alan Turing', 'alan@bletchley.example', '+44 1908 640404', 'Interested in the enterprise plan');
";

const ERP_SCHEMA: &str = "
CREATE TABLE customers (
    customer_no INTEGER PRIMARY KEY AUTOINCREMENT,
    first_name TEXT NOT NULL,
    last_name TEXT,
    user_email TEXT,
    phone_number TEXT,
    payment_terms TEXT NOT NULL DEFAULT 'NET30',
    notes TEXT,
    modified TEXT DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO customers (customer_no, first_name, last_name, user_email, phone_number, payment_terms, notes) VALUES
    (1001, 'Grace', 'Hopper', 'GRACE@navy.example', '+1 202 555 0142', 'NET60', 'Pays by wire'),
    (1002, 'Katherine', 'Johnson', 'katherine@nasa.example', '+1 757 555 0199', 'DUE', NULL),
    (1003, 'Edsger', 'Dijkstra', 'edsger@eindhoven.example', '+31 40 247 9111', 'NET30', NULL);
";

fn sql(conn: &Connection, statement: &str) -> Result<(), CliError> {
    conn.execute_batch(statement).map_err(|e| CliError::Usage(format!("demo SQL failed: {e}")))
}

fn show(dir: &Path) -> Result<(), CliError> {
    let dump = |file: &str, query: &str| -> Result<(), CliError> {
        let conn = Connection::open(dir.join(file)).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut stmt = conn.prepare(query).map_err(|e| CliError::Usage(e.to_string()))?;
        let n = stmt.column_count();
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        println!("    {file}: {}", names.join(" | "));
        let mut rows = stmt.query([]).map_err(|e| CliError::Usage(e.to_string()))?;
        while let Some(r) = rows.next().map_err(|e| CliError::Usage(e.to_string()))? {
            let cells: Vec<String> =
                (0..n).map(|i| r.get_ref(i).map(|v| format::value(&sqlite_value(v))).unwrap_or_default()).collect();
            println!("      {}", cells.join(" | "));
        }
        Ok(())
    };
    dump("crm.db", "SELECT id, full_name, email_address, phone, payment_terms, notes FROM contacts ORDER BY id")?;
    dump("erp.db", "SELECT customer_no, first_name, last_name, user_email, phone_number, payment_terms, notes FROM customers ORDER BY customer_no")?;
    Ok(())
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> tandem_core::value::Value {
    use tandem_core::value::Value;
    match v {
        rusqlite::types::ValueRef::Null => Value::Null,
        rusqlite::types::ValueRef::Integer(i) => Value::Int(i),
        rusqlite::types::ValueRef::Real(f) => Value::Float(f),
        rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into()),
        rusqlite::types::ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
    }
}

fn step(runner: &mut Runner, title: &str) -> Result<(), CliError> {
    let stop = AtomicBool::new(false);
    let totals = sync_until(runner, true, &stop, None)?;
    println!("  tandem: {title}");
    for line in format::summary(&runner.cfg.syncs[0], &totals[0]).lines().skip(1) {
        println!("  {line}");
    }
    Ok(())
}

/// Runs the demo in `dir`.
pub fn run(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Io { what: format!("creating {}", dir.display()), source: e })?;
    for f in [
        "crm.db",
        "erp.db",
        "tandem-state.db",
        "tandem-state.db-wal",
        "tandem-state.db-shm",
        "crm.db-journal",
        "erp.db-journal",
    ] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| CliError::Io {
                what: format!("removing the previous demo's {}", p.display()),
                source: e,
            })?;
        }
    }
    let open = |f: &str| Connection::open(dir.join(f)).map_err(|e| CliError::Usage(format!("creating {f}: {e}")));
    let crm = open("crm.db")?;
    let erp = open("erp.db")?;
    sql(&crm, CRM_SCHEMA)?;
    sql(&erp, ERP_SCHEMA)?;
    let cfg_path = dir.join("tandem.toml");
    std::fs::write(&cfg_path, DEMO_CONFIG)
        .map_err(|e| CliError::Io { what: format!("writing {}", cfg_path.display()), source: e })?;
    println!("Tandem demo in {}", std::fs::canonicalize(dir).unwrap_or(dir.to_path_buf()).display());
    println!("  created crm.db (table contacts), erp.db (table customers) and tandem.toml (read it: every rule is commented)\n");
    println!("1. Before the first sync. Grace Hopper is in both systems (emails differ in case only).");
    show(dir)?;

    let cfg = config::load(&cfg_path)?;
    let _lock = crate::commands::lock_state(&cfg.state)?;
    let mut runner = Runner::open(cfg)?;
    println!("\n2. First sync: Grace is linked by email, everyone else is created on the other side.");
    step(&mut runner, "first sync done")?;
    show(dir)?;

    println!("\n3. A user edits Ada's phone in the CRM; another changes Katherine's surname in the ERP.");
    sql(&crm, "UPDATE contacts SET phone = '+44 20 7946 0999' WHERE email_address = 'ada@analytical.example'")?;
    sql(&erp, "UPDATE customers SET last_name = 'Goble Johnson' WHERE user_email = 'katherine@nasa.example'")?;
    step(&mut runner, "both edits crossed over")?;
    show(dir)?;

    println!(
        "\n4. Both systems edit Grace at the same time: her phone (rule: latest wins) and her notes (rule: hold)."
    );
    sql(&crm, "UPDATE contacts SET phone = '+1 202 555 0100', notes = 'Prefers email' WHERE id = 2")?;
    std::thread::sleep(std::time::Duration::from_millis(20));
    sql(&erp, "UPDATE customers SET phone_number = '+1 202 555 0111', notes = 'Call before invoicing' WHERE customer_no = 1001")?;
    println!(
        "   The ERP also moves Grace to 'Due on receipt'; the CRM tries to change Ada's terms (the ERP owns them)."
    );
    sql(&erp, "UPDATE customers SET payment_terms = 'DUE' WHERE customer_no = 1001")?;
    sql(&crm, "UPDATE contacts SET payment_terms = 'Net 60 days' WHERE email_address = 'ada@analytical.example'")?;
    step(&mut runner, "conflicts resolved by their rules")?;
    show(dir)?;
    println!("   The audit trail says who won and why (`tandem audit`):");
    for a in runner.store.audit(None)?.iter().filter(|a| a.kind == "decision" || a.kind == "conflict") {
        let field = a.field.clone().unwrap_or_default();
        let value = |v: &Option<tandem_core::value::Value>| v.as_ref().map(format::value).unwrap_or_default();
        println!(
            "     {} {field}: crm {} vs erp {} -> {} ({})",
            a.kind,
            value(&a.left),
            value(&a.right),
            a.detail,
            a.rule.clone().unwrap_or_default()
        );
    }
    let open_conflicts = runner.store.conflicts(None, true)?;
    for c in &open_conflicts {
        println!("   Held for a person: conflict {} on `{}`; resolve it with `tandem conflicts --resolve {} --take left` (or right)", c.id, c.field, c.id);
    }

    println!("\n5. The CRM deletes Alan Turing; the delete rule for the CRM is `propagate`.");
    sql(&crm, "DELETE FROM contacts WHERE email_address = 'alan@bletchley.example'")?;
    step(&mut runner, "delete propagated")?;
    show(dir)?;

    println!("\n6. Nothing changes now: an idle pair makes no writes.");
    step(&mut runner, "idle")?;

    println!("\nDone. The files stay here for you to explore:");
    println!("  sqlite3 crm.db 'SELECT * FROM contacts'      sqlite3 erp.db 'SELECT * FROM customers'");
    println!("  tandem status       tandem audit       tandem conflicts       tandem run   (edit either db meanwhile)");
    Ok(())
}
