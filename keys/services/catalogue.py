"""The provider catalogue (file → Provider rows) and model prices (genai-prices → ProviderModel rows).

Catalogue: `keys/providers.toml` (or the file named by HEADROOM_PROVIDERS_FILE) is versioned data.
`providers_sync` creates missing providers and, for rows still `catalogue_managed`, updates the
fields the file owns (name, URL, API style, balance API, exchange support, price id, the cap field the
provider reads). Pool clearance
and `is_active` are operator decisions: the file sets them only when it creates a row, so a re-sync
on every start never undoes an admin's clearance. An admin who edits a provider's URL or API fields
unticks `catalogue_managed` to keep the edit.

Prices: the `genai-prices` package (pydantic/genai-prices, MIT; chosen because it is maintained
with dated price histories per provider and ships its data inside the wheel, so a refresh works
offline). `provider_prices_refresh` loads each provider's models and their current input/output
prices per 1M tokens. Rows an admin overrode (`price_source = override`) are never touched. Choices:
- Tiered prices (e.g. above 200K prompt tokens) use the base tier: one price per model is what the
  settlement uses; an admin override can price a model at its higher tier instead.
- A model priced for input only (embeddings) gets an output price of 0: it produces no output tokens.
- Models priced in other units only (audio hours, characters) are not loaded.
"""

import logging
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from core.money import MoneyError, parse_usd
from keys.balance import BALANCE_PATHS
from keys.models import Provider, ProviderModel

logger = logging.getLogger(__name__)

DEFAULT_PROVIDERS_FILE = Path(__file__).resolve().parent.parent / "providers.toml"
CATALOGUE_FIELDS = ("name", "base_url", "api_style", "balance_api", "balance_currency", "exchange_supported",
                    "prices_provider", "cap_field")
OPERATOR_FIELDS = ("pool_clearance", "is_active")
KNOWN_FIELDS = frozenset({"slug", *CATALOGUE_FIELDS, *OPERATOR_FIELDS, "balance_path"})

CATALOGUE_UNREADABLE = "The provider catalogue {path} cannot be read: {error}"
CATALOGUE_NO_PROVIDERS = "The provider catalogue {path} has no [[providers]] entries."
CATALOGUE_BAD_ENTRY = "Provider entry {index} ({slug}): {problem}"
CATALOGUE_UNKNOWN_FIELDS = "unknown fields {fields}"
CATALOGUE_DUPLICATE = "slug appears more than once"
CATALOGUE_BALANCE_PATH = "balance_path {path!r} does not match the {kind} balance API ({expected!r})"
CATALOGUE_CHOICE = "{field} must be one of {choices}"
CATALOGUE_TYPE = "{field} must be {kind}"


class CatalogueError(ValueError):
    """The catalogue file is unusable; nothing was written."""


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # not catalogue-managed: left as the admin set them


def providers_file() -> Path:
    configured = settings.HEADROOM_PROVIDERS_FILE
    return Path(configured) if configured else DEFAULT_PROVIDERS_FILE


def _entry_values(index: int, entry: object) -> dict:
    slug = entry.get("slug", "?") if isinstance(entry, dict) else "?"

    def bad(problem: str) -> CatalogueError:
        return CatalogueError(CATALOGUE_BAD_ENTRY.format(index=index, slug=slug, problem=problem))

    if not isinstance(entry, dict):
        raise bad(CATALOGUE_TYPE.format(field="the entry", kind="a table"))
    unknown = sorted(set(entry) - KNOWN_FIELDS)
    if unknown:
        raise bad(CATALOGUE_UNKNOWN_FIELDS.format(fields=", ".join(unknown)))
    values = {
        "slug": entry.get("slug"),
        "name": entry.get("name"),
        "base_url": entry.get("base_url"),
        "api_style": entry.get("api_style", Provider.ApiStyle.OPENAI),
        "balance_api": entry.get("balance_api", Provider.BalanceApi.NONE),
        "balance_currency": entry.get("balance_currency", "USD"),
        "exchange_supported": entry.get("exchange_supported", False),
        "prices_provider": entry.get("prices_provider", ""),
        "cap_field": entry.get("cap_field", Provider.CapField.MAX_TOKENS),
        "pool_clearance": entry.get("pool_clearance", Provider.PoolClearance.PENDING),
        "is_active": entry.get("is_active", True),
    }
    for name in ("slug", "name", "base_url", "api_style", "balance_api", "balance_currency", "prices_provider",
                 "cap_field", "pool_clearance"):
        if not isinstance(values[name], str) or (name != "prices_provider" and not values[name]):
            raise bad(CATALOGUE_TYPE.format(field=name, kind="a non-empty string"))
    for name in ("exchange_supported", "is_active"):
        if not isinstance(values[name], bool):
            raise bad(CATALOGUE_TYPE.format(field=name, kind="true or false"))
    for name, choices in (
        ("api_style", Provider.ApiStyle),
        ("balance_api", Provider.BalanceApi),
        ("pool_clearance", Provider.PoolClearance),
        ("cap_field", Provider.CapField),
    ):
        if values[name] not in choices.values:
            raise bad(CATALOGUE_CHOICE.format(field=name, choices=", ".join(choices.values)))
    expected_path = BALANCE_PATHS.get(values["balance_api"], "")
    if "balance_path" in entry and entry["balance_path"] != expected_path:
        raise bad(CATALOGUE_BALANCE_PATH.format(path=entry["balance_path"], kind=values["balance_api"],
                                                expected=expected_path))
    try:
        # The model's own validation: field choices and lengths, constraints, and the base-URL rule.
        Provider(**values).full_clean(validate_unique=False)
    except ValidationError as error:
        raise bad("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in error.message_dict.items())) from None
    return values


def providers_load(path: Path) -> list[dict]:
    """Read and validate every entry of a catalogue file, or raise CatalogueError (nothing written)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise CatalogueError(CATALOGUE_UNREADABLE.format(path=path, error=error)) from None
    entries = data.get("providers")
    if not isinstance(entries, list) or not entries:
        raise CatalogueError(CATALOGUE_NO_PROVIDERS.format(path=path))
    seen: set[str] = set()
    rows = []
    for index, entry in enumerate(entries, start=1):
        values = _entry_values(index, entry)
        if values["slug"] in seen:
            raise CatalogueError(CATALOGUE_BAD_ENTRY.format(index=index, slug=values["slug"],
                                                            problem=CATALOGUE_DUPLICATE))
        seen.add(values["slug"])
        rows.append(values)
    return rows


def providers_sync(*, path: Path | None = None) -> SyncReport:
    """Load the catalogue into Provider rows (see the module docstring for what is overwritten)."""
    rows = providers_load(path or providers_file())
    report = SyncReport()
    with transaction.atomic():
        existing = {p.slug: p for p in Provider.objects.select_for_update().filter(slug__in=[r["slug"] for r in rows])}
        for values in rows:
            provider = existing.get(values["slug"])
            if provider is None:
                Provider.objects.create(**values)
                report.created.append(values["slug"])
                continue
            if not provider.catalogue_managed:
                report.kept.append(provider.slug)
                continue
            changed = [name for name in CATALOGUE_FIELDS if getattr(provider, name) != values[name]]
            if not changed:
                report.unchanged.append(provider.slug)
                continue
            for name in changed:
                setattr(provider, name, values[name])
            provider.save(update_fields=[*changed, "updated_at"])
            report.updated.append(provider.slug)
    return report


@dataclass
class PriceReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    overrides_kept: int = 0
    skipped: int = 0  # not priced per token, or a price that is not a nanodollar amount
    providers_without_data: list[str] = field(default_factory=list)


def _per_million(value: object) -> int | None:
    """USD per 1M tokens from genai-prices (a Decimal or tiered prices) as nanodollars per 1M."""
    from genai_prices.types import TieredPrices

    if isinstance(value, TieredPrices):
        value = value.base
    if not isinstance(value, Decimal):
        return None
    try:
        return parse_usd(value)
    except MoneyError:
        return None


def _package_prices(prices_provider: str) -> list[tuple[str, int, int]] | None:
    """(model id, input, output) for every token-priced model of a genai-prices provider id."""
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    source = next((p for p in snapshot.providers if p.id == prices_provider), None)
    if source is None:
        return None
    now = datetime.now(UTC)
    rows = []
    for model in source.models:
        prices = model.get_prices(now)
        input_price = _per_million(getattr(prices, "input_mtok", None))
        if input_price is None:
            rows.append((model.id, None, None))
            continue
        raw_output = getattr(prices, "output_mtok", None)
        output_price = 0 if raw_output is None else _per_million(raw_output)
        rows.append((model.id, input_price, output_price))
    return rows


def provider_prices_refresh(*, providers=None) -> PriceReport:
    """Create/update ProviderModel rows from the genai-prices data; overrides are never touched."""
    report = PriceReport()
    queryset = providers if providers is not None else Provider.objects.all()
    for provider in queryset:
        rows = _package_prices(provider.prices_provider) if provider.prices_provider else None
        if rows is None:
            report.providers_without_data.append(provider.slug)
            continue
        with transaction.atomic():
            current = {m.name: m for m in ProviderModel.objects.select_for_update().filter(provider=provider)}
            for name, input_price, output_price in rows:
                if input_price is None or output_price is None or len(name) > 200:
                    report.skipped += 1
                    continue
                row = current.get(name)
                if row is None:
                    ProviderModel.objects.create(
                        provider=provider, name=name, input_price=input_price, output_price=output_price
                    )
                    report.created += 1
                elif row.price_source == ProviderModel.PriceSource.OVERRIDE:
                    report.overrides_kept += 1
                elif (row.input_price, row.output_price) == (input_price, output_price):
                    report.unchanged += 1
                else:
                    row.input_price, row.output_price = input_price, output_price
                    row.save(update_fields=["input_price", "output_price", "updated_at"])
                    report.updated += 1
    logger.info("prices refreshed: %d models created, %d updated", report.created, report.updated)
    return report


def provider_model_set_prices(
    *, model: ProviderModel, input_price: int | None, output_price: int | None
) -> ProviderModel:
    """An admin's price override: kept as written by every later refresh."""
    model.input_price = input_price
    model.output_price = output_price
    model.price_source = ProviderModel.PriceSource.OVERRIDE
    model.save(update_fields=["input_price", "output_price", "price_source", "updated_at"])
    return model


def provider_set_clearance(*, provider: Provider, clearance: str) -> int:
    """Set a provider's pool clearance. Donated ACTIVE keys of a provider join or leave the pool
    with it (pool routing reads the clearance on every pick); returns how many are now in the pool."""
    if clearance not in Provider.PoolClearance.values:
        raise ValueError(f"{clearance!r} is not a pool clearance")
    provider.pool_clearance = clearance
    provider.save(update_fields=["pool_clearance", "updated_at"])
    logger.info("provider %s pool clearance set to %s", provider.slug, clearance)
    if clearance != Provider.PoolClearance.CLEARED:
        return 0
    from keys.selectors import provider_key_pool_candidates

    return provider_key_pool_candidates().filter(provider=provider).count()
