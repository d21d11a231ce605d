from django import forms

from core.money import MoneyError, parse_usd
from payouts.selectors import withdrawal_network_list


class UsdAmountFormField(forms.CharField):
    """USD typed by a person, parsed exactly by core.money."""

    def __init__(self, **kwargs):
        kwargs.setdefault("widget", forms.TextInput(attrs={"size": 10, "inputmode": "decimal"}))
        super().__init__(max_length=64, **kwargs)

    def clean(self, value) -> int:
        text = super().clean(value).strip()
        try:
            return parse_usd(text)
        except MoneyError as error:
            raise forms.ValidationError(str(error)) from None


class ConversionForm(forms.Form):
    amount = UsdAmountFormField(label="Amount (USD)")


class WithdrawalForm(forms.Form):
    amount = UsdAmountFormField(label="Amount (USD)")
    network = forms.ChoiceField(choices=())
    address = forms.CharField(max_length=128, widget=forms.TextInput(attrs={"size": 48}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["network"].choices = [(n.code, f"{n.code} — {n.name}") for n in withdrawal_network_list()]
