#!/usr/bin/env bash
# The CRM ↔ ERP example in one command, on the machine's PostgreSQL and MariaDB:
#   examples/crm-erp/run.sh
# Creates the databases crm_example (PostgreSQL) and erp_example (MariaDB) afresh, syncs them
# both ways, then changes both sides, causes conflicts and deletes, and shows what Tandem did.
# Set CRM_DB / ERP_DB to use other database names. Leaves everything in place to explore.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CRM_DB="${CRM_DB:-crm_example}" ERP_DB="${ERP_DB:-erp_example}"
export PGHOST=127.0.0.1 PGUSER=postgres TANDEM_LOG="${TANDEM_LOG:-warn}"
crm() { psql -X -q -v ON_ERROR_STOP=1 -d "$CRM_DB" -c "$1"; }
erp() { mysql -h 127.0.0.1 -uroot --default-character-set=utf8mb4 "$ERP_DB" -e "$1"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() {
  crm "SELECT id, full_name, email_address, street, postal_code, city, country, shipping_preference AS ship,
              payment_terms AS terms, credit_limit, active, replace(notes, E'\n', ' / ') AS notes FROM contacts ORDER BY id"
  erp "SELECT customer_no AS no, first_name, last_name, user_email, address_line, country_name, ship_pref,
              payment_terms, credit_limit_cents AS cents, is_active, REPLACE(notes, '\n', ' / ') AS notes FROM customers ORDER BY customer_no"
}

"$root/scripts/pg-setup" >/dev/null
"$root/scripts/mariadb-setup" >/dev/null
cargo build -q --manifest-path "$root/Cargo.toml" -p tandem
tandem() { (cd "$here" && "$root/target/debug/tandem" "$@"); }

say "Fresh databases: $CRM_DB (PostgreSQL) and $ERP_DB (MariaDB)"
tandem uninstall -c tandem.toml >/dev/null 2>&1 || true
psql -X -q -d postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$CRM_DB'" >/dev/null
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $CRM_DB WITH (FORCE)" -c "CREATE DATABASE $CRM_DB"
mysql -h 127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $ERP_DB; CREATE DATABASE $ERP_DB CHARACTER SET utf8mb4"
psql -X -q -v ON_ERROR_STOP=1 -d "$CRM_DB" -f "$here/crm.sql"
mysql -h 127.0.0.1 -uroot --default-character-set=utf8mb4 "$ERP_DB" < "$here/erp.sql"
rm -f "$here"/tandem-state.db*
show

say "tandem check: the config against both servers"
tandem check -c tandem.toml

say "First sync: Grace is in both (matched by email), Ada and Alan go to the ERP, Emmy to the CRM"
tandem run --once -c tandem.toml
show

say "Changes on both sides: a CRM phone and address, an ERP shipping preference and credit limit"
crm "UPDATE contacts SET phone = '+44 20 7946 0999', street = '10 Downing St' WHERE email_address = 'ada@analytical.example'"
erp "UPDATE customers SET ship_pref = 'PICK', credit_limit_cents = 750000 WHERE user_email = 'emmy@goettingen.example'"
crm "UPDATE contacts SET payment_terms = 'Due on receipt' WHERE email_address = 'alan@bletchley.example'"   # not the CRM's to change
tandem run --once -c tandem.toml
show

say "Conflicts: both sides edit Alan's notes (merged line by line) and Ada's shipping (latest wins)"
crm "UPDATE contacts SET notes = notes || E'\nCalled on Monday', shipping_preference = 'Standard' WHERE email_address = 'alan@bletchley.example' OR email_address = 'ada@analytical.example'"
sleep 1
erp "UPDATE customers SET notes = CONCAT(IFNULL(notes, ''), '\nInvoice sent'), ship_pref = 'PICK' WHERE user_email IN ('alan@bletchley.example', 'ada@analytical.example')"
tandem run --once -c tandem.toml
show

say "Deletes: Alan deleted in the CRM (gone from the ERP); Grace deleted and Emmy deactivated in the ERP (inactive in the CRM)"
crm "DELETE FROM contacts WHERE email_address = 'alan@bletchley.example'"
erp "DELETE FROM customers WHERE user_email = 'grace@navy.example'"
erp "UPDATE customers SET is_active = 0 WHERE user_email = 'emmy@goettingen.example'"
tandem run --once -c tandem.toml
show

say "The audit trail: every change applied and every rule decision (tandem audit)"
tandem audit -c tandem.toml | tail -n 25
say "Now run 'tandem run -c tandem.toml' in $here and edit either database; Ctrl-C stops it."
