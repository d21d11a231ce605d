"""Run the fake provider standalone, e.g. as the upstream for the benchmark.

    python -m tests.fakeprovider --host 127.0.0.1 --port 9100 --delay-ms 50 --chunks 20

Requests are not recorded (memory stays flat under load) unless ``--record`` is given.
Stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import threading

from tests.fakeprovider.server import FakeProvider


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakeprovider", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait before the first byte of every reply")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks (= completion tokens) per answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="wait between streamed chunks")
    parser.add_argument("--record", action="store_true", help="keep a log of requests (grows without bound)")
    parser.add_argument("--dialect", default="openai", help="provider dialect of every key (see dialects.py)")
    parser.add_argument("--billing", default="friendly", choices=("friendly", "realistic"),
                        help="realistic: worst-case prompt count, answers run to the cap or the model limit")
    parser.add_argument("--max-output-tokens", type=int, default=4096, help="model limit on realistic billing")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    fake = FakeProvider(
        args.host,
        args.port,
        delay=args.delay_ms / 1000,
        chunks=args.chunks,
        chunk_delay=args.chunk_delay_ms / 1000,
        record=args.record,
        dialect=args.dialect,
        billing=args.billing,
        max_output_tokens=args.max_output_tokens,
    ).start()
    print(f"fakeprovider listening on {fake.url}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        fake.stop()
        print("fakeprovider stopped", flush=True)


if __name__ == "__main__":
    main()
