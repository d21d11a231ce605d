"""Production settings for the benchmark, plus one switch: upstreams on loopback are allowed.

The benchmark's providers are fake servers on 127.0.0.1 over plain http, which production's SSRF guard
(keys.upstream) refuses, both when a key is verified and when a base URL is validated. Everything else
is exactly config.settings.production (DEBUG off, the secret checks, PostgreSQL pool, Redis cache).
"""

from config.settings.production import *  # noqa: F403

HEADROOM_ALLOW_PRIVATE_UPSTREAMS = True
