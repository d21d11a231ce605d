"""Admin for payout-rate rules: the rules, a precedence preview, and the global rate on its own page."""

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from accounts.models import User
from billing.admin import ReadOnlyAdmin
from core.admin import AuditEventAdmin
from core.money import format_usd
from exchange.models import ExchangeEarning, GlobalPayoutRate, PayoutRateRule, PayoutRateRuleEvent, Task
from exchange.selectors import global_payout_rate, payout_rate_explain
from exchange.services import ExchangeError, payout_rate_global_set
from keys.models import Provider

RULE_GLOBAL_ELSEWHERE = "The global rate has its own page (Exchange → Global payout rate): name a user or a provider."
PREVIEW_NO_SUCH_USER = "No user with that e-mail address."
GLOBAL_CONFIRM_OFF = (
    "Setting the global rate to 0% switches the exchange off: no member's exchange key is routed or earns, "
    "whatever user or provider rules say, and platform keys serve everything. Press Confirm to go ahead."
)
GLOBAL_CONFIRM_ON = (
    "Raising the global rate from 0% switches the exchange back on: members' exchange keys are routed again "
    "and earn their resolved rates. Press Confirm to go ahead."
)


class PayoutRateRuleForm(forms.ModelForm):
    class Meta:
        model = PayoutRateRule
        fields = ["user", "provider", "task", "percent", "note"]

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("user") and not cleaned.get("provider"):
            raise ValidationError(RULE_GLOBAL_ELSEWHERE)
        return cleaned


class RulePreviewForm(forms.Form):
    user_email = forms.EmailField(label="User e-mail", required=False, help_text="Empty: a member with no user rules.")
    provider = forms.ModelChoiceField(queryset=Provider.objects.order_by("name"))
    task = forms.ChoiceField(choices=[("", "(no task: provider level)"), *Task.choices], required=False)

    def clean_user_email(self) -> User | None:
        email = self.cleaned_data["user_email"]
        if not email:
            return None
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            raise ValidationError(PREVIEW_NO_SUCH_USER)
        return user


@admin.register(PayoutRateRule)
class PayoutRateRuleAdmin(admin.ModelAdmin):
    form = PayoutRateRuleForm
    list_display = ["scope_label", "scope_display", "percent", "note", "updated_at"]
    list_filter = ["provider", "task"]
    search_fields = ["user__email", "provider__slug", "note"]
    autocomplete_fields = ["user", "provider"]
    list_select_related = ["user", "provider"]
    change_list_template = "admin/exchange/payoutraterule/change_list.html"

    @admin.display(description="Scope")
    def scope_display(self, obj: PayoutRateRule) -> str:
        return PayoutRateRule.Scope(obj.scope).label

    def get_queryset(self, request: HttpRequest):
        # The global rule is edited on its own page, with its confirmation step.
        return super().get_queryset(request).exclude(user__isnull=True, provider__isnull=True)

    def get_urls(self):
        preview = path(
            "preview/", self.admin_site.admin_view(self.preview_view), name="exchange_payoutraterule_preview"
        )
        return [preview, *super().get_urls()]

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        """"For user X, provider Y, task Z the rate is … because of rule …"."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = RulePreviewForm(request.GET or None)
        explanation = None
        if request.GET and form.is_valid():
            explanation = payout_rate_explain(
                user=form.cleaned_data["user_email"],
                provider=form.cleaned_data["provider"],
                task=form.cleaned_data["task"],
            )
        rules = {
            rule.pk: rule
            for rule in PayoutRateRule.objects.select_related("user", "provider").filter(
                pk__in=[c.rule_id for c in explanation.candidates if c.rule_id] if explanation else []
            )
        }
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Payout rate preview",
            "form": form,
            "explanation": explanation,
            "rules": rules,
            "scope_labels": dict(PayoutRateRule.Scope.choices),
            "query": form.cleaned_data if explanation else None,
        }
        return TemplateResponse(request, "admin/exchange/payoutraterule/preview.html", context)


class GlobalRateForm(forms.Form):
    percent = forms.DecimalField(
        label="Global payout rate (%)",
        min_value=Decimal("0"),
        max_value=Decimal("100"),
        max_digits=5,
        decimal_places=2,
        help_text="Percent of each request's settled cost paid to the exchange key's owner. 0 switches the "
        "exchange off for everyone.",
    )


@admin.register(GlobalPayoutRate)
class GlobalPayoutRateAdmin(admin.ModelAdmin):
    """One obvious page for the global rate and the exchange's on/off switch."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def change_view(self, request: HttpRequest, object_id, form_url="", extra_context=None) -> HttpResponse:
        return HttpResponseRedirect(reverse("admin:exchange_globalpayoutrate_changelist"))

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        current, rule = global_payout_rate()
        can_change = self.has_change_permission(request)
        form = GlobalRateForm(request.POST or None, initial={"percent": current})
        confirmation = None
        if request.method == "POST" and can_change and form.is_valid():
            new = form.cleaned_data["percent"]
            crossing_zero = (current > 0) != (new > 0)
            if crossing_zero and request.POST.get("confirmed") != "yes":
                confirmation = GLOBAL_CONFIRM_OFF if new == 0 else GLOBAL_CONFIRM_ON
            else:
                try:
                    rule, previous = payout_rate_global_set(percent=new)
                except ExchangeError as error:
                    form.add_error("percent", str(error))
                else:
                    was = "the default" if previous is None else f"{previous}%"
                    self.log_change(request, rule, f"Global payout rate {was} → {rule.percent}%")
                    self.message_user(request, f"Global payout rate set to {rule.percent}%.", messages.SUCCESS)
                    return HttpResponseRedirect(request.path)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Global payout rate",
            "form": form,
            "current": current,
            "rule": rule,
            "exchange_on": current > 0,
            "can_change": can_change,
            "confirmation": confirmation,
        }
        return TemplateResponse(request, "admin/exchange/global_rate.html", context)


@admin.register(ExchangeEarning)
class ExchangeEarningAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "provider_key",
        "account",
        "settled_cost_usd",
        "rate_percent",
        "rate_scope",
        "amount_usd",
    ]
    list_filter = ["rate_scope"]
    search_fields = ["request_id", "account__user__email"]
    list_select_related = ["provider_key", "account__user", "account__organization"]
    readonly_fields = [f.name for f in ExchangeEarning._meta.fields]

    @admin.display(description="Settled cost")
    def settled_cost_usd(self, obj: ExchangeEarning) -> str:
        return format_usd(obj.settled_cost)

    @admin.display(description="Earned")
    def amount_usd(self, obj: ExchangeEarning) -> str:
        return format_usd(obj.amount)


@admin.register(PayoutRateRuleEvent)
class PayoutRateRuleEventAdmin(AuditEventAdmin):
    """Every payout-rate rule change, the global rate (the exchange's on/off switch) included (core/audit.py)."""
