"""Steady load on the gateway through the official SDK, from a few threads, each call recorded with
when it started and ended and how it came out: what the fault tests read their figures from."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import openai
from openai import OpenAI


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    outcome: str  # "ok", an HTTP status with the error's code ("503 database_unavailable"), or the exception's name

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class Load:
    def __init__(self, *, url: str, api_key: str, model: str, threads: int = 4, timeout: float = 30):
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._client = OpenAI(api_key=api_key, base_url=f"{url}/v1", max_retries=0, timeout=timeout)
        self._model = model
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._client.chat.completions.create(model=self._model, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=16)
                outcome = "ok"
            except openai.APIStatusError as error:
                outcome = f"{error.status_code} {error.code}"
            except Exception as error:
                outcome = error.__class__.__name__
            self.calls.append(Call(started, time.monotonic(), outcome))
            if outcome != "ok":
                time.sleep(0.05)  # a client backing off a little, as the SDK's retries would

    def count(self, outcome: str = "ok", *, since: float = 0.0) -> int:
        return sum(1 for c in list(self.calls) if c.outcome == outcome and c.started >= since)
