"""Operators' pages: the provider catalogue and its pool clearance, prices with overrides, provider
keys (platform keys are added here, secret typed once into a password field), consents and the
audit trail. Ciphertext and fingerprints are never displayed; every key action goes through
keys.services so it is checked and audited like a member's."""

from django import forms
from django.contrib import admin, messages
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from core.admin import AuditEventAdmin
from core.money import MoneyError, parse_usd, usd_str
from keys.models import (
    PoolConsent,
    Provider,
    ProviderEvent,
    ProviderKey,
    ProviderKeyStats,
    ProviderKeyTransition,
    ProviderModel,
    ProviderModelEvent,
)
from keys.services import (
    ProviderKeyError,
    provider_key_create,
    provider_key_deactivate,
    provider_key_in_flight,
    provider_key_reactivate,
    provider_key_revalidate,
    provider_model_set_prices,
    provider_set_clearance,
)
from keys.services.provider_keys import provider_key_check_enrolable


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "name",
        "base_url",
        "api_style",
        "balance_api",
        "pool_clearance",
        "exchange_supported",
        "is_active",
        "catalogue_managed",
    ]
    list_filter = ["pool_clearance", "api_style", "balance_api", "exchange_supported", "is_active"]
    search_fields = ["slug", "name"]
    readonly_fields = ["created_at", "updated_at"]
    actions = ["clear_for_pool", "mark_pending", "exclude_from_pool"]

    def _set_clearance(self, request, queryset, clearance: str) -> None:
        for provider in queryset:
            joined = provider_set_clearance(provider=provider, clearance=clearance)
            note = f" ({joined} donated key(s) now in the pool)" if clearance == Provider.PoolClearance.CLEARED else ""
            self.message_user(request, f"{provider.name}: {provider.get_pool_clearance_display()}{note}.")

    @admin.action(description="Clear for the shared pool")
    def clear_for_pool(self, request, queryset):
        self._set_clearance(request, queryset, Provider.PoolClearance.CLEARED)

    @admin.action(description="Mark pool clearance pending")
    def mark_pending(self, request, queryset):
        self._set_clearance(request, queryset, Provider.PoolClearance.PENDING)

    @admin.action(description="Exclude from the shared pool")
    def exclude_from_pool(self, request, queryset):
        self._set_clearance(request, queryset, Provider.PoolClearance.EXCLUDED)


class UsdPerMillionField(forms.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", "USD per 1M tokens, e.g. 0.59; empty: not priced (not routable).")
        super().__init__(**kwargs)

    def clean(self, value):
        value = super().clean(value)
        if value in (None, ""):
            return None
        try:
            return parse_usd(value)
        except MoneyError as error:
            raise forms.ValidationError(str(error)) from None


class ProviderModelForm(forms.ModelForm):
    input_price_usd = UsdPerMillionField(label="Input price")
    output_price_usd = UsdPerMillionField(label="Output price")

    class Meta:
        model = ProviderModel
        fields = ["provider", "name", "is_active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field, source in (("input_price_usd", "input_price"), ("output_price_usd", "output_price")):
            value = getattr(self.instance, source)
            self.initial[field] = "" if value is None else usd_str(value)


@admin.register(ProviderModel)
class ProviderModelAdmin(admin.ModelAdmin):
    form = ProviderModelForm
    list_display = ["name", "provider", "input_usd", "output_usd", "price_source", "is_active"]
    list_filter = ["provider", "price_source", "is_active"]
    search_fields = ["name", "provider__slug"]
    readonly_fields = ["price_source", "created_at", "updated_at"]
    actions = ["use_package_prices"]

    @admin.display(description="Input $/1M")
    def input_usd(self, model: ProviderModel) -> str:
        return "—" if model.input_price is None else usd_str(model.input_price)

    @admin.display(description="Output $/1M")
    def output_usd(self, model: ProviderModel) -> str:
        return "—" if model.output_price is None else usd_str(model.output_price)

    def save_model(self, request, obj, form, change):
        obj.save()
        prices = (form.cleaned_data["input_price_usd"], form.cleaned_data["output_price_usd"])
        if not change or prices != (obj.input_price, obj.output_price):
            # An operator's price is an override: refresh_prices keeps it as written.
            provider_model_set_prices(model=obj, input_price=prices[0], output_price=prices[1])

    @admin.action(description="Follow the price package again (next refresh_prices)")
    def use_package_prices(self, request, queryset):
        count = queryset.update(price_source=ProviderModel.PriceSource.PACKAGE)
        self.message_user(request, f"{count} model(s) will follow genai-prices from the next refresh.")


class PlatformKeyAddForm(forms.ModelForm):
    # Never rendered back: a form with errors shows an empty secret field.
    secret = forms.CharField(widget=forms.PasswordInput(render_value=False), strip=True, max_length=512)

    class Meta:
        model = ProviderKey
        fields = ["provider", "label"]

    def clean(self):
        cleaned = super().clean()
        provider, secret = cleaned.get("provider"), cleaned.get("secret")
        if provider is not None and secret:
            try:
                provider_key_check_enrolable(provider=provider, secret=secret)
            except ProviderKeyError as error:
                raise forms.ValidationError(str(error)) from None
        return cleaned


class ProviderKeyChangeForm(forms.ModelForm):
    class Meta:
        model = ProviderKey
        fields = ["label"]


class ProviderKeyStatsInline(admin.StackedInline):
    model = ProviderKeyStats
    can_delete = False
    readonly_fields = ["requests_served", "prompt_tokens", "completion_tokens", "credits_earned", "updated_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class ProviderKeyTransitionInline(admin.TabularInline):
    model = ProviderKeyTransition
    extra = 0
    can_delete = False
    fields = readonly_fields = ["at", "from_status", "to_status", "actor", "reason"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@method_decorator(sensitive_post_parameters("secret"), name="changeform_view")
@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    # No secret_ciphertext or fingerprint anywhere: `masked` is the only trace of the secret shown.
    list_display = ["id", "label", "provider", "owner_display", "masked", "status", "byok", "donate_to_pool",
                    "exchange", "last_used_at"]
    list_filter = ["status", "provider", "is_platform", "byok", "donate_to_pool", "exchange"]
    search_fields = ["label", "owner_user__email", "owner_org__slug", "secret_last4"]
    list_select_related = ["provider", "owner_user", "owner_org"]
    readonly_fields = [
        "masked",
        "provider",
        "owner_user",
        "owner_org",
        "is_platform",
        "status",
        "status_changed_at",
        "byok",
        "donate_to_pool",
        "donated_at",
        "exchange",
        "exchange_listed_at",
        "last_used_at",
        "in_flight",
        "consecutive_429s",
        "failure_count",
        "retry_after_until",
        "last_error",
        "verified_balance",
        "verified_at",
        "removed_at",
        "created_at",
        "updated_at",
    ]
    inlines = [ProviderKeyStatsInline, ProviderKeyTransitionInline]
    actions = ["deactivate_keys", "remove_keys", "revalidate_keys", "reactivate_keys"]

    @admin.display(description="In flight")
    def in_flight(self, key: ProviderKey) -> int:
        return provider_key_in_flight(key_id=key.pk)

    @admin.display(description="Owner")
    def owner_display(self, key: ProviderKey) -> str:
        return "platform" if key.is_platform else str(key.owner)

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = ProviderKeyChangeForm if obj is not None else PlatformKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["provider", "label", "secret"]
        return ["label", *self.readonly_fields]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else []

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["label", "updated_at"])
            return
        # Platform keys only: enrolled through the service (encrypted, fingerprinted, audited, verified).
        key = provider_key_create(
            owner=None,
            provider=form.cleaned_data["provider"],
            secret=form.cleaned_data["secret"],
            label=form.cleaned_data.get("label", ""),
            actor=request.user,
        )
        obj.pk, obj.secret_last4, obj.is_platform = key.pk, key.secret_last4, True
        obj._state.adding = False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # remove (erases the secret, keeps the history) instead of deleting rows

    def _run(self, request, queryset, action, label: str) -> None:
        done = 0
        for key in queryset:
            try:
                action(key=key, actor=request.user)
                done += 1
            except ProviderKeyError as error:
                self.message_user(request, f"Key {key.pk}: {error}", level=messages.WARNING)
        self.message_user(request, f"{label}: {done} key(s).")

    @admin.action(description="Deactivate (keep the secret)")
    def deactivate_keys(self, request, queryset):
        self._run(request, queryset, provider_key_deactivate, "Deactivated")

    @admin.action(description="Remove (erase the secret once drained)")
    def remove_keys(self, request, queryset):
        self._run(
            request, queryset, lambda key, actor: provider_key_deactivate(key=key, actor=actor, remove=True), "Removed"
        )

    @admin.action(description="Revalidate (exhausted or failed keys)")
    def revalidate_keys(self, request, queryset):
        self._run(request, queryset, provider_key_revalidate, "Revalidation started")

    @admin.action(description="Reactivate (paused keys)")
    def reactivate_keys(self, request, queryset):
        self._run(request, queryset, provider_key_reactivate, "Reactivated")


@admin.register(PoolConsent)
class PoolConsentAdmin(admin.ModelAdmin):
    list_display = ["user", "consent_version", "accepted_at", "key"]
    search_fields = ["user__email"]
    readonly_fields = ["user", "consent_version", "accepted_at", "key"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ProviderKeyTransition)
class ProviderKeyTransitionAdmin(admin.ModelAdmin):
    list_display = ["at", "key", "from_status", "to_status", "actor", "reason"]
    list_filter = ["to_status"]
    search_fields = ["key__id", "reason"]
    readonly_fields = ["key", "from_status", "to_status", "actor", "reason", "at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# Audit trails of operator decisions, written by triggers (core/audit.py); key states keep
# ProviderKeyTransition above.
@admin.register(ProviderEvent)
class ProviderEventAdmin(AuditEventAdmin):
    """Pool clearance, activity, exchange support and base URL of providers."""


@admin.register(ProviderModelEvent)
class ProviderModelEventAdmin(AuditEventAdmin):
    """Model prices (overrides and refreshes) and activity."""
