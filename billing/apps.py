from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing and ledger"

    def ready(self) -> None:
        from accounts.signals import user_email_verified
        from billing.receivers import signup_credit_on_email_verified

        # accounts sits below billing and may not call it: billing listens instead.
        user_email_verified.connect(signup_credit_on_email_verified, dispatch_uid="billing-signup-credit")
