"""Fake LLM provider for tests and benchmarks; see ``server.py`` for why it is a real HTTP server."""

from tests.fakeprovider.server import FakeProvider, RequestRecord
from tests.fakeprovider.wire import mask_key

__all__ = ["FakeProvider", "RequestRecord", "mask_key"]
