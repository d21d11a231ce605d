from django import forms

from keys.selectors import provider_list
from keys.services import POOL_CONSENT_TEXT


class ProviderKeyForm(forms.Form):
    provider = forms.ModelChoiceField(queryset=provider_list(), to_field_name="slug", empty_label=None)
    # render_value=False: a refused submit comes back with the secret field empty, never echoed.
    # The service checks the secret's shape and says why it refuses one; max_length only bounds the input.
    secret = forms.CharField(max_length=512, strip=False, widget=forms.PasswordInput(render_value=False))
    label = forms.CharField(max_length=100, required=False)
    byok = forms.BooleanField(required=False, initial=True, label="BYOK: serve my own requests")
    donate_to_pool = forms.BooleanField(required=False, label="Donate to the shared pool")
    exchange = forms.BooleanField(required=False, label="List on the provider exchange")
    consent = forms.BooleanField(required=False, label=POOL_CONSENT_TEXT)
