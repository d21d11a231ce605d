"""Database-level guards for the ledger, on PostgreSQL.

- A deferred constraint trigger checks, at COMMIT, that every transaction that
  received entries has at least two and that they sum to zero (after hordak's
  0002_check_leg_trigger). Deferred, because the legs are inserted one by one.
- Entries are append-only: UPDATE and DELETE are refused. TRUNCATE (used by
  test teardown) is not a row operation and stays possible for operators.

SQLite has no deferred triggers; there the service check and `ledger_check`
stand guard.
"""

from django.db import migrations

CREATE_SQL = """
CREATE OR REPLACE FUNCTION billing_check_transaction_balanced() RETURNS trigger AS $$
DECLARE
    total numeric;
    legs integer;
BEGIN
    SELECT COALESCE(SUM(amount), 0), COUNT(*) INTO total, legs
    FROM billing_ledgerentry WHERE transaction_id = NEW.transaction_id;
    IF legs < 2 OR total <> 0 THEN
        -- Concatenation, not RAISE's own placeholders, which psycopg would take for parameters.
        RAISE EXCEPTION USING
            MESSAGE = 'ledger transaction ' || NEW.transaction_id || ' is unbalanced: '
                || legs || ' entries summing to ' || total,
            ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER billing_ledgerentry_balanced
    AFTER INSERT ON billing_ledgerentry
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION billing_check_transaction_balanced();

CREATE OR REPLACE FUNCTION billing_refuse_entry_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only' USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_ledgerentry_append_only
    BEFORE UPDATE OR DELETE ON billing_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION billing_refuse_entry_change();
"""

DROP_SQL = """
DROP TRIGGER IF EXISTS billing_ledgerentry_append_only ON billing_ledgerentry;
DROP FUNCTION IF EXISTS billing_refuse_entry_change();
DROP TRIGGER IF EXISTS billing_ledgerentry_balanced ON billing_ledgerentry;
DROP FUNCTION IF EXISTS billing_check_transaction_balanced();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_SQL)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SQL)


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(forwards, backwards)]
