"""The apps depend one way (core, accounts, billing, keys, exchange, payouts, pool: each imports only
those before it), as [tool.importlinter] in pyproject.toml declares. A new import cycle fails here."""

import os
from pathlib import Path

import pytest
from importlinter import configuration
from importlinter.application.use_cases import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold(capsys, monkeypatch):
    # given the project's own contracts, read from its root as `lint-imports` would
    monkeypatch.chdir(ROOT)
    configuration.configure()
    # when import-linter checks every import of the apps (no cache: nothing is written to the tree)
    kept = lint_imports(config_filename=os.fspath(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True)
    # then every contract is kept; otherwise the report names the offending import chain
    report = capsys.readouterr().out
    if not kept:
        pytest.fail(report, pytrace=False)
    assert "0 broken" in report
