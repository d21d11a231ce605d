"""Error reports that hide provider secrets even with DEBUG on.

Django's SafeExceptionReporterFilter ignores `sensitive_variables` and `sensitive_post_parameters`
while DEBUG is True, so a developer's technical 500 page (or an error e-mail from a misconfigured
server) would print a provider secret from a view's local variables or the POST data. Headroom's
rule is stricter: a secret never appears on an error page, so the markers apply always.
"""

from django.views.debug import SafeExceptionReporterFilter


class SecretSafeExceptionReporterFilter(SafeExceptionReporterFilter):
    def is_active(self, request) -> bool:
        return True
