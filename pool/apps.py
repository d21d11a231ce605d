from django.apps import AppConfig


class PoolConfig(AppConfig):
    name = "pool"
    verbose_name = "Gateway and shared pool"

    def ready(self) -> None:
        from billing.services import ledger_check_register
        from pool.selectors import api_key_spend_violations, earning_record_violations

        # billing sits below pool: its ledger_check runs the checks, registered here, that each exchange
        # earning matches its request's record and each API key's month counter its requests' charges.
        ledger_check_register(earning_record_violations)
        ledger_check_register(api_key_spend_violations)
