"""The PL/pgSQL functions installed in the database are the newest shipped files' text.

Each app's functions ship as frozen files, `<app>/sql/NNNN_name.pg.sql`, one per migration that
installs them, each holding the app's whole set. A change to a function without a new file and
migration would leave databases running yesterday's text while the code expects today's: this fails
it in CI. The newest file is installed in a scratch schema (the test's transaction rolls it back)
and compared, definition by definition, with what the migrations installed. (Trigger functions are
their migrations' own text: billing/0002.)
"""

from pathlib import Path

import pytest
from django.apps import apps
from django.db import connection

pytestmark = pytest.mark.django_db
APPS_WITH_FUNCTIONS = ("pool", "billing", "exchange", "keys", "accounts")

DEFINITIONS = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', pg_get_functiondef(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = %s AND p.proname LIKE %s AND p.prorettype <> 'trigger'::regtype
"""


def _newest_file(app_label: str) -> Path:
    files = sorted((Path(apps.get_app_config(app_label).path) / "sql").glob("*.pg.sql"))
    assert files, f"{app_label} ships no functions"
    return files[-1]


def _definitions(cursor, schema: str, app_label: str) -> dict[str, str]:
    cursor.execute(DEFINITIONS, [schema, f"{app_label}\\_%"])
    return {name: text.replace(f"{schema}.", "") for name, text in cursor.fetchall()}


@pytest.mark.parametrize("app_label", APPS_WITH_FUNCTIONS)
def test_the_installed_functions_are_the_newest_shipped_file(app_label):
    with connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA shipped")
        cursor.execute("SET LOCAL search_path = shipped")
        cursor.execute(_newest_file(app_label).read_text())
        cursor.execute("SET LOCAL search_path = public")
        shipped = _definitions(cursor, "shipped", app_label)
        installed = _definitions(cursor, "public", app_label)

    assert shipped, f"{_newest_file(app_label).name} defines no {app_label}_ function"
    assert installed == shipped


def test_every_shipped_file_belongs_to_a_migration():
    # A file's name is its migration's: a new file without a migration would install nothing.
    for app_label in APPS_WITH_FUNCTIONS:
        migrations = {p.stem for p in (Path(apps.get_app_config(app_label).path) / "migrations").glob("0*.py")}
        for sql in (Path(apps.get_app_config(app_label).path) / "sql").glob("*.pg.sql"):
            assert sql.name.removesuffix(".pg.sql") in migrations, sql.name
