from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing and ledger"

    def ready(self) -> None:
        from accounts.signals import user_signed_up
        from billing.receivers import signup_credit_on_signup

        # accounts sits below billing and may not call it: billing listens instead.
        user_signed_up.connect(signup_credit_on_signup, dispatch_uid="billing-signup-credit")
