from django.apps import AppConfig


class ExchangeConfig(AppConfig):
    name = "exchange"
    verbose_name = "Provider exchange"

    def ready(self) -> None:
        from billing.services import ledger_check_register
        from exchange.selectors import earning_violations, exchange_listing_refusal
        from keys.services import exchange_check_register

        # keys sits below exchange: it asks the rules registered here before listing a key.
        exchange_check_register(exchange_listing_refusal)
        # billing sits below exchange: its ledger_check runs the earnings' check registered here.
        ledger_check_register(earning_violations)
