"""The provider catalogue file and `manage.py sync_providers`; prices from genai-prices and
`manage.py refresh_prices`, with admin overrides that a refresh never overwrites."""

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from keys.models import Provider, ProviderModel
from keys.selectors import provider_model_get_routable
from keys.services import (
    provider_model_set_prices,
    provider_prices_refresh,
    providers_sync,
)
from keys.services.catalogue import CatalogueError
from tests.keys.factories import ProviderFactory

pytestmark = pytest.mark.django_db

SEEDED = {
    "openai": ("https://api.openai.com/v1", "none"),
    "anthropic": ("https://api.anthropic.com/v1/", "none"),
    "gemini": ("https://generativelanguage.googleapis.com/v1beta/openai/", "none"),
    "groq": ("https://api.groq.com/openai/v1", "none"),
    "deepseek": ("https://api.deepseek.com", "deepseek"),
    "zai": ("https://api.z.ai/api/paas/v4", "none"),
    "mistral": ("https://api.mistral.ai/v1", "none"),
    "xai": ("https://api.x.ai/v1", "none"),
    "openrouter": ("https://openrouter.ai/api/v1", "openrouter"),
    "together": ("https://api.together.ai/v1", "none"),
    "moonshot": ("https://api.moonshot.ai/v1", "moonshot"),
    "siliconflow": ("https://api.siliconflow.com/v1", "siliconflow"),
}

ENTRY = """
[[providers]]
slug = "{slug}"
name = "Fake"
base_url = "{base_url}"
api_style = "openai"
balance_api = "{balance_api}"
pool_clearance = "pending"
exchange_supported = {exchange}
prices_provider = ""
"""


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text)
    return path


def _entry(slug="fake", base_url="https://api.fake.example/v1", balance_api="none", exchange="false", extra=""):
    return ENTRY.format(slug=slug, base_url=base_url, balance_api=balance_api, exchange=exchange) + extra


def test_the_versioned_catalogue_seeds_every_required_provider(settings):
    settings.HEADROOM_ALLOW_PRIVATE_UPSTREAMS = False  # production rules: the seeded URLs must pass them
    out = io.StringIO()
    call_command("sync_providers", stdout=out)
    assert "12 created" in out.getvalue()
    rows = {p.slug: p for p in Provider.objects.all()}
    assert {slug: (p.base_url, p.balance_api) for slug, p in rows.items()} == SEEDED
    for provider in rows.values():
        assert provider.base_url.startswith("https://")
        assert provider.pool_clearance == Provider.PoolClearance.PENDING
        assert provider.exchange_supported == (provider.balance_api != "none")
        assert provider.api_style == Provider.ApiStyle.OPENAI
    # The cap field each provider reads (issue 12: the gateway forwards its held cap in it alone).
    assert {slug for slug, p in rows.items() if p.cap_field == Provider.CapField.MAX_COMPLETION_TOKENS} == {
        "openai", "groq"}
    assert {p.cap_field for slug, p in rows.items() if slug not in ("openai", "groq")} == {"max_tokens"}


def test_sync_is_idempotent_and_never_undoes_an_operators_clearance():
    providers_sync()
    Provider.objects.filter(slug="groq").update(pool_clearance="cleared", is_active=False)
    report = providers_sync()
    assert report.created == [] and report.updated == [] and len(report.unchanged) == 12
    groq = Provider.objects.get(slug="groq")
    assert (groq.pool_clearance, groq.is_active) == ("cleared", False)


def test_a_changed_file_updates_managed_rows_and_keeps_admin_owned_ones(tmp_path, settings):
    providers_sync(path=_file(tmp_path, _entry(slug="a") + _entry(slug="b")))
    Provider.objects.filter(slug="b").update(catalogue_managed=False, base_url="https://edited.example/v1")
    changed = _entry(slug="a", base_url="https://new.example/v1") + _entry(slug="b", base_url="https://new.example/v1")
    settings.HEADROOM_PROVIDERS_FILE = str(_file(tmp_path, changed))
    report = providers_sync()
    assert (report.updated, report.kept) == (["a"], ["b"])
    assert Provider.objects.get(slug="a").base_url == "https://new.example/v1"
    assert Provider.objects.get(slug="b").base_url == "https://edited.example/v1"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (_entry(extra='colour = "blue"\n'), "unknown fields colour"),
        (_entry() + _entry(), "slug appears more than once"),
        (_entry(balance_api="deepseek", exchange="true", extra='balance_path = "/balance"\n'), "balance_path"),
        (_entry(exchange="true"), "exchange"),
        (_entry(balance_api="paypal"), "balance_api must be one of"),
        (_entry(extra='cap_field = "max_output_tokens"\n'), "cap_field must be one of"),
        (_entry(base_url="https://127.0.0.1/v1"), "loopback, private"),
        (_entry(base_url="https://169.254.169.254/v1"), "loopback, private"),
        (_entry(base_url="https://10.0.0.8/v1"), "loopback, private"),
        (_entry(base_url="http://api.fake.example/v1"), "https"),
        (_entry(slug="Not A Slug"), "slug"),
        ("[[providers]\nslug=", "cannot be read"),
        ("[[providers]]\nslug = 'x'\ncolour = 'blue'", "unknown fields colour"),
    ],
)
def test_a_bad_catalogue_is_refused_whole_and_writes_nothing(text, problem, tmp_path, settings):
    settings.HEADROOM_ALLOW_PRIVATE_UPSTREAMS = False
    path = _file(tmp_path, _entry(slug="good") + text)
    with pytest.raises(CommandError, match=problem.replace("[", r"\[")):
        call_command("sync_providers", file=path, stdout=io.StringIO())
    assert not Provider.objects.exists()


def test_the_fake_provider_catalogue_loads_when_private_upstreams_are_allowed(tmp_path, fake):
    path = _file(tmp_path, _entry(base_url=f"{fake.url}/v1", balance_api="deepseek", exchange="true"))
    providers_sync(path=path)
    assert Provider.objects.get(slug="fake").base_url == f"{fake.url}/v1"


def test_a_file_without_providers_is_refused(tmp_path):
    with pytest.raises(CatalogueError, match=r"no \[\[providers\]\] entries"):
        providers_sync(path=_file(tmp_path, "title = 'no providers'\n"))


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogueError, match="cannot be read"):
        providers_sync(path=tmp_path / "nope.toml")


# --- prices ---------------------------------------------------------------------------------------


def test_refresh_loads_prices_per_million_tokens_in_nanodollars():
    providers_sync()
    out = io.StringIO()
    call_command("refresh_prices", stdout=out)
    assert "No genai-prices data for: siliconflow" in out.getvalue()
    model = ProviderModel.objects.get(provider__slug="groq", name="llama-3.1-8b-instant")
    # genai-prices: $0.05 input, $0.08 output per 1M tokens
    assert (model.input_price, model.output_price, model.price_source) == (50_000_000, 80_000_000, "package")
    assert provider_model_get_routable(provider_slug="groq", model_name="llama-3.1-8b-instant") == model
    # tiered prices use the base tier; an input-only (embedding) model costs nothing per output token
    pro = ProviderModel.objects.get(provider__slug="gemini", name="gemini-2.5-pro")
    assert (pro.input_price, pro.output_price) == (1_250_000_000, 10_000_000_000)
    embedding = ProviderModel.objects.get(provider__slug="gemini", name="gemini-embedding-001")
    assert (embedding.input_price, embedding.output_price) == (150_000_000, 0)
    # models priced in other units (audio hours) are not loaded
    assert not ProviderModel.objects.filter(provider__slug="groq", name="whisper-large-v3").exists()


def test_refresh_never_overwrites_an_admin_override_and_updates_the_rest():
    providers_sync()
    groq = Provider.objects.filter(slug="groq")
    provider_prices_refresh(providers=groq)
    overridden = ProviderModel.objects.get(provider__slug="groq", name="llama-3.1-8b-instant")
    provider_model_set_prices(model=overridden, input_price=1, output_price=2)
    drifted = ProviderModel.objects.get(provider__slug="groq", name="llama-3.3-70b-versatile")
    ProviderModel.objects.filter(pk=drifted.pk).update(input_price=7, output_price=7)

    report = provider_prices_refresh(providers=groq)

    overridden.refresh_from_db()
    drifted.refresh_from_db()
    assert (overridden.input_price, overridden.output_price, overridden.price_source) == (1, 2, "override")
    assert (drifted.input_price, drifted.output_price) == (590_000_000, 790_000_000)
    assert report.overrides_kept == 1 and report.updated == 1 and report.created == 0


def test_a_model_without_a_price_cannot_be_routed():
    provider = ProviderFactory(slug="pricey")
    ProviderModel.objects.create(provider=provider, name="unpriced", input_price=None, output_price=None)
    ProviderModel.objects.create(provider=provider, name="half", input_price=5, output_price=None)
    ProviderModel.objects.create(provider=provider, name="priced", input_price=5, output_price=6)
    ProviderModel.objects.create(provider=provider, name="retired", input_price=5, output_price=6, is_active=False)
    assert provider_model_get_routable(provider_slug="pricey", model_name="unpriced") is None
    assert provider_model_get_routable(provider_slug="pricey", model_name="half") is None
    assert provider_model_get_routable(provider_slug="pricey", model_name="retired") is None
    assert provider_model_get_routable(provider_slug="pricey", model_name="priced").name == "priced"
    Provider.objects.filter(slug="pricey").update(is_active=False)
    assert provider_model_get_routable(provider_slug="pricey", model_name="priced") is None


def test_refresh_prices_for_an_unknown_provider_is_an_error():
    with pytest.raises(CommandError, match="nope"):
        call_command("refresh_prices", provider=["nope"], stdout=io.StringIO())
