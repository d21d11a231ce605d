"""Fake LLM provider for tests and benchmarks; see ``server.py`` for why it is a real HTTP server.

``billing.py`` holds the worst-case prompt-token rule of realistic keys, ``dialects.py`` the providers'
cap fields and error bodies.
"""

from tests.fakeprovider.dialects import DIALECTS, Dialect
from tests.fakeprovider.server import Billed, FakeProvider, RequestRecord, Totals
from tests.fakeprovider.wire import mask_key

__all__ = ["DIALECTS", "Billed", "Dialect", "FakeProvider", "RequestRecord", "Totals", "mask_key"]
