"""`make run`'s demo world (demo/world.py), verified against the demo provider, and how to use it.

Runs before the gateway starts, so the demo provider the keys are verified against is not up yet:
this command serves it on the gateway's address for the few seconds verification takes (the same
provider, demo/provider.py), then stops. Refuses unless the demo is on (local settings only).
"""

import threading
import time
from urllib.parse import urlsplit

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from demo import world
from demo.provider import DEMO_PREFIX, DemoProvider
from keys.models import ProviderKey
from keys.services import TransientCheckError, provider_key_verify

START_TIMEOUT_S = 10


async def _nothing_else(scope, receive, send):
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class _Served:
    """The demo provider alone, on `host:port`, in a thread, until the block ends."""

    def __init__(self, host: str, port: int):
        self.server = uvicorn.Server(uvicorn.Config(DemoProvider(_nothing_else), host=host, port=port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise CommandError("could not serve the demo provider to verify the demo keys (is the port taken?)")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info):
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Command(BaseCommand):
    help = "Create the offline demo world (idempotent): local settings only."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000",
                            help="where the gateway will listen (the demo provider is served there too)")

    def handle(self, *args, **options):
        if not settings.HEADROOM_DEMO_PROVIDER:
            raise CommandError("seed_demo needs the demo (HEADROOM_DEMO_PROVIDER, local settings only): it makes"
                               " accounts with a published password and API key.")
        address = urlsplit(options["url"])
        host = address.hostname if address.hostname not in ("0.0.0.0", "::", None) else "127.0.0.1"
        port = address.port or 8000
        with _Served(host, port):
            made = world.demo_world_seed(base_url=f"http://{host}:{port}{DEMO_PREFIX}")
            for key in made.keys:
                try:
                    provider_key_verify(key_id=key.pk)  # a no-op for a key already verified
                except TransientCheckError as error:
                    self.stderr.write(f"demo key {key.label!r}: {error} (the worker retries it)")
        states = {key.label: ProviderKey.objects.get(pk=key.pk).status for key in made.keys}
        self.stdout.write(
            f"demo member: {world.MEMBER_EMAIL} / {world.PASSWORD}   seller: {world.SELLER_EMAIL} / {world.PASSWORD}\n"
            f"demo API key: {world.API_KEY}\n"
            f"demo keys: {', '.join(f'{label} ({status})' for label, status in states.items())}\n"
            f"try the models {world.OWN}/demo-mini (BYOK), {world.SHARED}-pool/demo-mini (pool),"
            f" {world.SHARED}/demo-mini (platform and exchange) — README, 'The gateway'"
        )
