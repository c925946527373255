//! The CRM (PostgreSQL) ↔ ERP (MariaDB) example of `examples/crm-erp`, with its own config and
//! schemas, in databases of this test's own: both ways, every rule, deletes.

mod common;

use common::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/crm-erp");

struct Example {
    crm: PgDb,
    erp: MyDb,
    dir: TempDir,
}

impl Example {
    fn new() -> Example {
        let (crm, erp) = (PgDb::new("crm"), MyDb::new("erp"));
        crm.sql(&std::fs::read_to_string(format!("{EXAMPLE}/crm.sql")).unwrap());
        let erp_sql = std::fs::read_to_string(format!("{EXAMPLE}/erp.sql")).unwrap();
        erp.sql(&erp_sql);
        let dir = TempDir::new("crmerp");
        std::fs::copy(format!("{EXAMPLE}/tandem.toml"), dir.path("tandem.toml")).unwrap();
        Example { crm, erp, dir }
    }

    fn tandem(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(bin())
            .args(args)
            .args(["-c", self.dir.path("tandem.toml").to_str().unwrap()])
            .env("TANDEM_LOG", "warn")
            .env("CRM_DB", &self.crm.0)
            .env("ERP_DB", &self.erp.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    }

    fn contact(&self, email: &str, cols: &str) -> String {
        self.crm.sql(&format!("SELECT {cols} FROM contacts WHERE lower(email_address) = '{email}'"))
    }

    fn customer(&self, email: &str, cols: &str) -> String {
        self.erp.sql(&format!("SELECT {cols} FROM customers WHERE LOWER(user_email) = '{email}'"))
    }
}

#[test]
fn crm_and_erp_stay_in_sync_by_their_rules() {
    let x = Example::new();
    assert!(x.tandem(&["check"]).contains("OK"));

    // First sync: Grace matched by email (not doubled), Ada and Alan created in the ERP, Emmy
    // in the CRM, every shape mapped.
    let out = x.tandem(&["run", "--once"]);
    assert!(out.contains("1 linked by match_on"), "{out}");
    assert_eq!(x.crm.sql("SELECT count(*) FROM contacts"), "4");
    assert_eq!(x.erp.sql("SELECT COUNT(*) FROM customers"), "4");
    assert_eq!(
        x.customer("ada@analytical.example", "CONCAT_WS('|', first_name, last_name, address_line, country_name, ship_pref, payment_terms, credit_limit_cents)"),
        "Ada|Lovelace|12 St James Sq, SW1Y London|United Kingdom|EXP|NET30|0"
    );
    assert_eq!(
        x.contact("emmy@goettingen.example", "concat_ws('|', full_name, street, postal_code, city, country, shipping_preference, payment_terms, credit_limit)"),
        "Emmy Noether|Bunsenstr. 3|37073|Göttingen|DE|Express|Due on receipt|500.00"
    );
    // The ERP owns payment terms and credit: Grace's flow to the CRM.
    assert_eq!(
        x.contact("grace@navy.example", "payment_terms || '|' || credit_limit || '|' || notes"),
        "Net 60 days|25000.00|Key account"
    );

    // Changes both ways; a CRM edit of an ERP-owned field is put back.
    x.crm.sql(
        "UPDATE contacts SET street = '10 Downing St', phone = '+44 1' WHERE email_address = 'ada@analytical.example'",
    );
    x.erp.sql("UPDATE customers SET ship_pref = 'PICK', credit_limit_cents = 750001 WHERE user_email = 'emmy@goettingen.example'");
    x.crm.sql("UPDATE contacts SET payment_terms = 'Due on receipt', credit_limit = 1 WHERE email_address = 'alan@bletchley.example'");
    x.tandem(&["run", "--once"]);
    assert_eq!(
        x.customer("ada@analytical.example", "CONCAT(address_line, '|', phone_number)"),
        "10 Downing St, SW1Y London|+44 1"
    );
    assert_eq!(x.contact("emmy@goettingen.example", "shipping_preference || '|' || credit_limit"), "Pickup|7500.01");
    assert_eq!(x.contact("alan@bletchley.example", "payment_terms || '|' || credit_limit"), "Net 30 days|0.00");
    assert_eq!(x.customer("alan@bletchley.example", "CONCAT(payment_terms, '|', credit_limit_cents)"), "NET30|0");

    // Conflicts: notes merged by lines, shipping by latest (the ERP edits last).
    x.crm.sql("UPDATE contacts SET notes = notes || E'\\nCalled on Monday', shipping_preference = 'Standard' WHERE email_address = 'ada@analytical.example'");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    x.erp.sql("UPDATE customers SET notes = CONCAT(notes, '\\nInvoice sent'), ship_pref = 'PICK' WHERE user_email = 'ada@analytical.example'");
    let out = x.tandem(&["run", "--once"]);
    assert!(out.contains("2 conflicts decided by rule"), "{out}");
    let merged = "Prefers email\nCalled on Monday\nInvoice sent";
    assert_eq!(x.contact("ada@analytical.example", "notes || '|' || shipping_preference"), format!("{merged}|Pickup"));
    assert_eq!(x.customer("ada@analytical.example", "CONCAT(notes, '|', ship_pref)"), format!("{merged}|PICK"));
    let audit = x.tandem(&["audit"]);
    assert!(audit.contains("rule merge_lines") && audit.contains("erp wins by rule latest"), "{audit}");

    // A CRM edit Tandem writes to the ERP a second or more after the ERP's stamp was synced.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    x.crm.sql("UPDATE contacts SET phone = '+44 20 7946 0000' WHERE email_address = 'alan@bletchley.example'");
    x.tandem(&["run", "--once"]);

    // Deletes: the CRM's propagate, the ERP's are soft in the CRM, and so is is_active = 0.
    x.crm.sql("DELETE FROM contacts WHERE email_address = 'alan@bletchley.example'");
    x.erp.sql("DELETE FROM customers WHERE user_email = 'grace@navy.example'");
    x.erp.sql("UPDATE customers SET is_active = 0 WHERE user_email = 'emmy@goettingen.example'");
    x.tandem(&["run", "--once"]);
    assert_eq!(x.customer("alan@bletchley.example", "COUNT(*)"), "0");
    assert_eq!(x.contact("grace@navy.example", "active"), "f");
    assert_eq!(x.contact("emmy@goettingen.example", "active"), "f");
    assert_eq!(x.contact("ada@analytical.example", "active"), "t");
    assert_eq!(x.crm.sql("SELECT count(*) FROM contacts"), "3");
    // Tandem's own writes to the ERP did not move its ON UPDATE stamp (a mapped column): no
    // phantom ERP change made a delete "win" over it.
    let audit = x.tandem(&["audit"]);
    assert!(!audit.contains("delete_wins"), "{audit}");

    // Settled: another run changes nothing anywhere.
    let out = x.tandem(&["run", "--once"]);
    assert!(
        out.contains("crm → erp: 0 created, 0 updated, 0 deleted")
            && out.contains("erp → crm: 0 created, 0 updated, 0 deleted"),
        "{out}"
    );

    // The "last changed" stamp is the ERP's (DATETIME in its zone, UTC here): it reaches the
    // CRM's timestamptz, and a CRM edit of it is put back.
    x.erp.sql("UPDATE customers SET modified = '2026-12-01 08:00:00' WHERE user_email = 'ada@analytical.example'");
    x.tandem(&["run", "--once"]);
    assert_eq!(x.contact("ada@analytical.example", "updated_at AT TIME ZONE 'UTC'"), "2026-12-01 08:00:00");
    x.crm.sql(
        "UPDATE contacts SET updated_at = '2026-11-26 15:30:00+01' WHERE email_address = 'ada@analytical.example'",
    );
    x.tandem(&["run", "--once"]);
    assert_eq!(x.contact("ada@analytical.example", "updated_at AT TIME ZONE 'UTC'"), "2026-12-01 08:00:00");
    assert_eq!(x.customer("ada@analytical.example", "CAST(modified AS CHAR)"), "2026-12-01 08:00:00");
}
