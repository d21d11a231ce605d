"""A fake LLM provider: a real aiohttp server on loopback, scripted per key from the test thread.

Why a real server and not mocks: the gateway's hot path is HTTP streaming (SSE, partial bodies,
Retry-After, connections dropped mid-stream). Only a real socket exercises the same httpx code the
gateway uses in production, and the same server doubles as the upstream for the benchmark.

Routing matches on the path *suffix*, so any base-URL prefix works (``/v1/chat/completions``,
``/api/v1/chat/completions``, ``/api/paas/v4/chat/completions`` ...).

Threading: the server owns an event loop in a daemon thread. Scripts, balances and the request log
are shared with the test thread under one lock; ``delay``/``chunks``/``chunk_delay`` are plain
attributes (a single assignment is atomic). The hot path logs nothing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.fakeprovider import wire

# (path suffix, method, route name). Longer/more specific suffixes first.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("/chat/completions", "POST", "chat"),
    ("/embeddings", "POST", "embeddings"),
    ("/models", "GET", "models"),
    ("/users/me/balance", "GET", "moonshot_balance"),
    ("/user/balance", "GET", "deepseek_balance"),
    ("/user/info", "GET", "siliconflow_user_info"),
    ("/credits", "GET", "openrouter_credits"),
    ("/key", "GET", "openrouter_key"),
)
BALANCE_ROUTES = frozenset(
    {"moonshot_balance", "deepseek_balance", "siliconflow_user_info", "openrouter_credits", "openrouter_key"}
)

DEFAULT_BALANCE = Decimal("100.00")
DEFAULT_MODELS = ("fake-model", "fake-embedding")
DEFAULT_EMBEDDING_DIMS = 8


@dataclass(frozen=True)
class RequestRecord:
    """One request as received. ``time`` is ``time.monotonic()`` at arrival."""

    method: str
    path: str
    key: str | None
    json: Any
    time: float


@dataclass
class Fault:
    status: int | None = None
    retry_after: float | None = None
    first_byte_delay: float = 0.0
    cut_stream_after: int | None = None
    malformed_balance: bool = False
    remaining: int | None = None  # None: applies until cleared

    @property
    def active(self) -> bool:
        return (
            self.status is not None
            or self.first_byte_delay > 0
            or self.cut_stream_after is not None
            or self.malformed_balance
        )

    def applies_to(self, route: str, stream: bool) -> bool:
        return (
            self.status is not None
            or self.first_byte_delay > 0
            or (self.cut_stream_after is not None and route == "chat" and stream)
            or (self.malformed_balance and route in BALANCE_ROUTES)
        )


@dataclass
class Account:
    balance: Decimal = DEFAULT_BALANCE
    currency: str = "USD"
    unlimited: bool = False  # OpenRouter: key without a spending limit (limit_remaining null)


@dataclass
class _State:
    faults: dict[str, Fault] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)


class FakeProvider:
    """Start with ``start()`` or ``with FakeProvider() as fake:``; point clients at ``fake.url + "/v1"``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        delay: float = 0.0,
        chunks: int = 20,
        chunk_delay: float = 0.0,
        record: bool = True,
        models: tuple[str, ...] = DEFAULT_MODELS,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self._defaults = (delay, chunks, chunk_delay)
        self.delay, self.chunks, self.chunk_delay = self._defaults
        self.record = record
        self.models = models
        self._lock = threading.Lock()
        self._state = _State()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._seq = 0

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeProvider is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeProvider:
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        sock.listen(1024)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(sock, started, errors), name=f"fakeprovider:{self.port}", daemon=True
        )
        self._thread.start()
        started.wait(10)
        if errors or not started.is_set():
            self.stop()
            raise RuntimeError("FakeProvider failed to start") from (errors[0] if errors else None)
        return self

    def _run(self, sock: socket.socket, started: threading.Event, errors: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.SockSite(self._runner, sock).start())
        except BaseException as exc:  # surfaced to start() in the caller's thread
            errors.append(exc)
            sock.close()
            loop.close()
            started.set()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- scripting (called from the test thread) --------------------------------------------------

    def script(
        self,
        key: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        first_byte_delay: float = 0.0,
        cut_stream_after: int | None = None,
        malformed_balance: bool = False,
        times: int | None = None,
        balance: Decimal | None = None,
        currency: str | None = None,
        unlimited: bool | None = None,
    ) -> None:
        """Script how requests with ``key`` are answered.

        Faults (``status``, ``retry_after``, ``first_byte_delay``, ``cut_stream_after``,
        ``malformed_balance``) replace the key's previous fault; with ``times=N`` they affect only the
        next N requests they apply to, then the key is served normally again. ``retry_after`` alone
        implies ``status=429``. Account state (``balance``, ``currency``, ``unlimited``: an OpenRouter
        key without a limit) persists until ``clear(key)``/``reset()``, independent of ``times``.
        """
        if retry_after is not None and status is None:
            status = 429
        fault = Fault(status, retry_after, first_byte_delay, cut_stream_after, malformed_balance, times)
        with self._lock:
            if fault.active and (times is None or times > 0):
                self._state.faults[key] = fault
            else:
                self._state.faults.pop(key, None)
            if balance is not None or currency is not None or unlimited is not None:
                old = self._state.accounts.get(key, Account())
                self._state.accounts[key] = Account(
                    balance=Decimal(balance) if balance is not None else old.balance,
                    currency=currency or old.currency,
                    unlimited=old.unlimited if unlimited is None else unlimited,
                )

    def clear(self, key: str) -> None:
        with self._lock:
            self._state.faults.pop(key, None)
            self._state.accounts.pop(key, None)

    def reset(self) -> None:
        """Forget requests, scripts and balances; restore the constructor's delay/chunks."""
        with self._lock:
            self._state = _State()
        self.delay, self.chunks, self.chunk_delay = self._defaults

    # --- observation ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._state.records)

    def count(self, key: str | None = None, path: str | None = None) -> int:
        """Requests seen, optionally only with ``key`` and/or whose path ends with ``path``."""
        return sum(
            1
            for r in self.requests
            if (key is None or r.key == key) and (path is None or r.path.endswith(path))
        )

    # --- request handling -------------------------------------------------------------------------

    def _take_fault(self, key: str | None, route: str, stream: bool) -> Fault | None:
        if key is None or not self._state.faults:
            return None
        with self._lock:
            fault = self._state.faults.get(key)
            if fault is None or not fault.applies_to(route, stream):
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._state.faults[key]
            return fault

    def _account(self, key: str) -> Account:
        with self._lock:
            return self._state.accounts.get(key) or Account()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        route = next(
            (name for suffix, method, name in ROUTES if path.endswith(suffix) and request.method == method), None
        )
        if route is None:
            msg = f"Unknown request URL: {request.method} {request.path}."
            return _json(404, wire.openai_error(msg, "invalid_request_error", "unknown_url"))

        auth = request.headers.get("Authorization", "")
        key = (auth[7:].strip() or None) if auth[:7].lower() == "bearer " else None
        body: Any = None
        if request.method == "POST":
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        if self.record:
            with self._lock:
                self._state.records.append(RequestRecord(request.method, request.path, key, body, time.monotonic()))

        stream = route == "chat" and isinstance(body, dict) and body.get("stream") is True
        fault = self._take_fault(key, route, stream)
        wait = self.delay + (fault.first_byte_delay if fault else 0.0)
        if wait > 0:
            await asyncio.sleep(wait)

        if key is None or (fault and fault.status == 401):
            payload, ctype = wire.invalid_key_error(route, key)
            return web.Response(status=401, body=payload, content_type=ctype)
        if fault and fault.status is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return _json(fault.status, wire.status_error(fault.status, key, fault.retry_after), headers)
        if route in BALANCE_ROUTES:
            if fault and fault.malformed_balance:
                return _json(200, wire.MALFORMED_BALANCE)
            return _json(200, self._balance_body(route, key))
        if route == "models":
            return _json(200, wire.models_list(self.models, int(time.time())))
        if not isinstance(body, dict):
            msg = "We could not parse the JSON body of your request."
            return _json(400, wire.openai_error(msg, "invalid_request_error", None))
        if route == "embeddings":
            return self._embeddings(body)
        return await self._chat(request, body, stream, fault)

    def _balance_body(self, route: str, key: str) -> bytes:
        account = self._account(key)
        if route == "deepseek_balance":
            return wire.deepseek_balance(account.balance, account.currency)
        if route == "openrouter_key":
            return wire.openrouter_key(account.balance, key, account.unlimited)
        if route == "openrouter_credits":
            return wire.openrouter_credits(account.balance)
        if route == "moonshot_balance":
            return wire.moonshot_balance(account.balance)
        return wire.siliconflow_user_info(account.balance)

    def _embeddings(self, body: dict) -> web.Response:
        raw = body.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [" ".join(map(str, raw))]  # one pre-tokenised input
        elif isinstance(raw, list) and raw:
            inputs = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
        else:
            msg = "'input' is a required property"
            return _json(400, wire.openai_error(msg, "invalid_request_error", None, "input"))
        dims = body.get("dimensions")
        dims = dims if isinstance(dims, int) and 0 < dims <= 4096 else DEFAULT_EMBEDDING_DIMS
        tokens = max(1, sum(len(t.split()) for t in inputs))
        fmt = "base64" if body.get("encoding_format") == "base64" else "float"
        return _json(200, wire.embeddings(inputs=inputs, model=str(body.get("model", "")), dims=dims,
                                          encoding_format=fmt, prompt_tokens=tokens))

    def _next_id(self) -> str:
        self._seq += 1  # only touched on the loop thread
        return f"chatcmpl-fake{self._seq:08d}"

    async def _chat(self, request: web.Request, body: dict, stream: bool, fault: Fault | None) -> web.StreamResponse:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            msg = "'messages' is a required property"
            return _json(400, wire.openai_error(msg, "invalid_request_error", None, "messages"))
        model = str(body.get("model", ""))
        prompt_tokens = wire.count_prompt_tokens(messages)
        n_tokens = max(0, int(self.chunks))
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        finish = "stop"
        if isinstance(cap, int) and not isinstance(cap, bool) and 0 <= cap < n_tokens:
            n_tokens, finish = cap, "length"
        rid, created = self._next_id(), int(time.time())
        if not stream:
            return _json(200, wire.chat_completion(rid=rid, model=model, created=created, n_tokens=n_tokens,
                                                   prompt_tokens=prompt_tokens, finish_reason=finish))

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        cut = fault.cut_stream_after if fault else None
        for i in range(n_tokens):
            if cut is not None and i >= cut:
                return await _drop(request, resp)
            delta = {"content": wire.content_piece(i)}
            if i == 0:
                delta = {"role": "assistant", **delta}
            await resp.write(wire.chunk(rid=rid, model=model, created=created, delta=delta,
                                        finish_reason=None, with_usage_field=include_usage))
            if self.chunk_delay > 0:
                await asyncio.sleep(self.chunk_delay)
        if cut is not None:  # asked to cut at or after the last content chunk: still no [DONE]
            return await _drop(request, resp)
        first = {"role": "assistant", "content": ""} if n_tokens == 0 else {}
        await resp.write(wire.chunk(rid=rid, model=model, created=created, delta=first,
                                    finish_reason=finish, with_usage_field=include_usage))
        if include_usage:
            await resp.write(wire.usage_chunk(rid=rid, model=model, created=created,
                                              prompt_tokens=prompt_tokens, completion_tokens=n_tokens))
        await resp.write(wire.DONE_EVENT)
        await resp.write_eof()
        return resp


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


async def _drop(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Close the socket mid-body: the client sees a truncated chunked response and no ``[DONE]``."""
    await asyncio.sleep(0.01)  # let the chunks already written reach the client first
    transport = request.transport
    if transport is not None:
        transport.abort()
    return resp
