from django import forms

from accounts.models import ApiKey
from core.money import MoneyError, parse_usd


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    key_pool_mode = forms.ChoiceField(choices=ApiKey.PoolMode.choices, initial=ApiKey.PoolMode.ANY, label="Pool mode")
    byok_fallback = forms.BooleanField(required=False, initial=True)
    monthly_limit = forms.CharField(required=False, label="Monthly limit (USD)", widget=forms.TextInput(attrs={"size": 8}))
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices, initial=[ApiKey.Scope.GATEWAY], widget=forms.CheckboxSelectMultiple,
        help_text="Management scopes are opt-in: a key pasted into an SDK config needs only the gateway.",
    )

    def clean_monthly_limit(self) -> int | None:
        value = self.cleaned_data["monthly_limit"].strip()
        if not value:
            return None
        try:
            return parse_usd(value)
        except MoneyError as error:
            raise forms.ValidationError(str(error)) from None


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=100)
