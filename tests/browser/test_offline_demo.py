"""The offline demo, as a newcomer meets it: `make run` on a fresh machine (here: the test database, a
private Redis, no provider key, no network beyond loopback), the README's snippet pasted as it is (only
the port differs), then the dashboard signed in as the seller.

`make run` is the real target with local settings; its development secrets go to a file of the test's
own. The demo provider streams without its pause between words (HEADROOM_DEMO_WORD_SECONDS=0).
"""

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import override_settings

from billing.selectors import balances_for_owner
from demo import world
from keys.models import ProviderKey, ProviderKeyStats
from pool.models import RequestRecord
from tests.topology.processes import MakeRun, database_url_for_subprocesses, free_port

pytestmark = pytest.mark.django_db(transaction=True)

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def _readme_snippet() -> str:
    """The README's first SDK snippet: the first Python block under "The gateway"."""
    match = re.search(r"## The gateway \(`/v1`\).*?```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md has no Python snippet under 'The gateway'"
    return match.group(1)


def _sign_in(page, email: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", world.PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/**")


def test_make_run_serves_the_readme_snippet_offline_and_the_dashboard_shows_the_money_move(browser, tmp_path):
    env = {"DATABASE_URL": database_url_for_subprocesses(), "REDIS_URL": "", "DJANGO_ENV_FILE": str(tmp_path / ".env"),
           "HEADROOM_DEMO_WORD_SECONDS": "0", "CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule")}
    with MakeRun(env=env, port=free_port(), log=tmp_path / "make-run.log") as server:
        server.wait_healthy(timeout=120)
        assert world.API_KEY in server.log()  # printed at start-up
        seller = ProviderKey.objects.get(label="Seller donated key").owner_user

        snippet = _readme_snippet().replace("127.0.0.1:8000", server.url.removeprefix("http://"))
        run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.count("Hello from demo-mini") == 4, run.stdout

        # every route kind served, each by the key it should be
        served = dict(RequestRecord.objects.values_list("provider_key__label", "route"))
        assert served == {"Demo BYOK key": "byok", "Seller donated key": "pool", "Seller exchange key": "exchange",
                          "Demo platform key": "platform"}, served
        donated = ProviderKeyStats.objects.get(key__label="Seller donated key")
        frozen = balances_for_owner(owner=seller).frozen
        assert donated.requests_served == 1 and donated.credits_earned > 0 and frozen > 0

        # the seller sees it: the frozen balance on the dashboard, the donated key's counters on its page
        context = browser.new_context(base_url=server.url)
        page = context.new_page()
        _sign_in(page, world.SELLER_EMAIL)
        shown = page.get_by_test_id("frozen-balance").inner_text()
        page.goto("/dashboard/keys/")
        row = page.locator("tr", has_text="Seller donated key").inner_text()
        # and the demo member sees the published API key on every page
        context.clear_cookies()
        _sign_in(page, world.MEMBER_EMAIL)
        banner = page.get_by_test_id("demo-api-key").inner_text()
        context.close()
    call_command("ledger_check")
    print(f"\noffline demo: 4 streamed answers (BYOK, pool, exchange, platform-only); the seller's frozen"
          f" balance {shown}, donated key row: {' '.join(row.split())[:120]}")
    assert shown not in ("$0.00", "") and banner == world.API_KEY
    counters = f" {donated.requests_served} {donated.prompt_tokens + donated.completion_tokens} "
    assert counters in " ".join(row.split()) + " "  # requests served, tokens


def test_seed_demo_makes_its_world_once(tmp_path):
    with override_settings(HEADROOM_DEMO_PROVIDER=True):
        for _ in range(2):
            call_command("seed_demo", url=f"http://127.0.0.1:{free_port()}", stdout=open(tmp_path / "out", "w"))
    keys = ProviderKey.objects.filter(provider__slug__in=(world.SHARED, world.OWN))
    assert keys.count() == 5 and set(keys.values_list("status", flat=True)) == {ProviderKey.Status.ACTIVE}
    assert world.API_KEY in (tmp_path / "out").read_text()


def test_without_the_demo_there_is_no_demo(client, tmp_path):
    from django.core.management.base import CommandError

    # test settings, like production's, have it off: seed_demo refuses and nothing serves /_demo
    with pytest.raises(CommandError, match="local settings only"):
        call_command("seed_demo")
    assert client.get("/_demo/v1/models", HTTP_AUTHORIZATION="Bearer x").status_code == 404
    # production settings refuse to start with it on, and have no seed_demo
    env = {"DJANGO_SETTINGS_MODULE": "config.settings.production", "DATABASE_URL": database_url_for_subprocesses(),
           "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "HEADROOM_FIELD_ENCRYPTION_KEYS": "G0PTAR4DKyDOrDP3qFSZCDoGH3T6N1-3bTwyYQbAwCo=",
           "DJANGO_ENV_FILE": str(tmp_path / "no.env"), "PATH": "/usr/bin:/bin"}
    manage = [sys.executable, "manage.py", "seed_demo"]
    on = subprocess.run(manage, env={**env, "HEADROOM_DEMO_PROVIDER": "true"}, capture_output=True, text=True,
                        cwd=README.parent)
    assert on.returncode != 0 and "HEADROOM_DEMO_PROVIDER is for local settings only" in on.stderr
    off = subprocess.run(manage, env=env, capture_output=True, text=True, cwd=README.parent)
    assert off.returncode != 0 and "Unknown command: 'seed_demo'" in off.stderr
