from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts, organizations and API keys"

    def ready(self) -> None:
        from allauth.account.signals import email_confirmed

        from accounts import schema  # noqa: F401  (registers the OpenAPI extension)
        from accounts.receivers import welcome_on_email_confirmed

        email_confirmed.connect(welcome_on_email_confirmed, dispatch_uid="accounts-welcome-on-email-confirmed")
