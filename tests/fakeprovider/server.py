"""A fake LLM provider: a real aiohttp server on loopback, scripted per key from the test thread.

Why a real server and not mocks: the gateway's hot path is HTTP streaming (SSE, partial bodies,
Retry-After, connections dropped mid-stream). Only a real socket exercises the same httpx code the
gateway uses in production, and the same server doubles as the upstream for the benchmark.

Routing matches on the path *suffix*, so any base-URL prefix works (``/v1/chat/completions``,
``/api/v1/chat/completions``, ``/api/paas/v4/chat/completions`` ...).

Billing for issue 12 (a member is never served more than they pay) — each key may be scripted with:

- a **dialect** (``dialects.py``): which cap field the provider reads (``openai``: max_completion_tokens
  then max_tokens; ``max_tokens_only``: max_tokens alone ...) and how it words errors, so request-level
  errors (too large, context length) can be told from key-level ones (rate limit, quota) per family;
- a **billing** mode: ``friendly`` (the default, which tests/pool's exact figures are built on: prompt =
  words of message contents, an uncapped answer is ``chunks`` tokens) or ``realistic`` (prompt by the
  worst-case rule in ``billing.py``; the answer uses the whole cap, or the model's
  ``max_output_tokens`` when no cap is read — absent caps are expensive);
- an **answer** of any delta kinds (``content``, ``reasoning_content``, ``refusal``, ``tool_calls``).

``n`` choices are honoured on every key. Each served completion's record carries ``billed`` (prompt,
completion tokens actually delivered, ``n``, the cap applied and the field it came from), so money
tests can sum exactly what the upstream served (``totals()``).

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
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any, Iterator

from aiohttp import web

from tests.fakeprovider import billing as billing_rules
from tests.fakeprovider import dialects, wire
from tests.fakeprovider.dialects import Dialect, ErrorContext

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
DEFAULT_MAX_OUTPUT_TOKENS = 4096
DEFAULT_CONTEXT_WINDOW = 128_000
MAX_N = 128  # OpenAI refuses n above 128
BILLING_MODES = ("friendly", "realistic")


def _realistic(mode: str) -> bool:
    if mode not in BILLING_MODES:
        raise ValueError(f"billing must be one of {BILLING_MODES}, not {mode!r}")
    return mode == "realistic"


@dataclass(frozen=True)
class Billed:
    """What the fake billed for one chat completion it served (errors bill nothing: no ``Billed``).

    ``completion_tokens`` is summed over the ``n`` choices and counts only the events actually written:
    a cut stream, or a client that went away, bills what was delivered (``complete`` is then False).
    ``cap`` is the completion cap applied to each choice: the value read from ``cap_field`` (the first
    field of the key's dialect present in the body), bounded by the model's ``max_output_tokens`` on a
    realistic key; ``cap_field`` None means no cap was sent — a realistic key then generated to the
    model's limit (``cap`` is that limit), a friendly key its ``chunks`` (``cap`` None).
    """

    prompt_tokens: int
    completion_tokens: int
    n: int
    cap: int | None
    cap_field: str | None
    dialect: str
    realistic: bool
    complete: bool = True

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RequestRecord:
    """One request as received. ``time`` is ``time.monotonic()`` at arrival; ``billed`` is set when a
    chat completion has been served (see ``Billed``), and stays None for errors and other routes."""

    method: str
    path: str
    key: str | None
    json: Any
    time: float
    billed: Billed | None = None


@dataclass(frozen=True)
class Totals:
    requests: int
    prompt_tokens: int
    completion_tokens: int

    def cost(self, input_price: int, output_price: int) -> Fraction:
        """Exact cost for prices per 1M tokens (e.g. nanodollars per 1M), as a Fraction (no rounding)."""
        return Fraction(self.prompt_tokens * input_price + self.completion_tokens * output_price, 1_000_000)


@dataclass(frozen=True)
class ModelLimits:
    max_output_tokens: int
    context_window: int


@dataclass(frozen=True)
class Profile:
    """How a key's provider behaves: persists until ``clear(key)``/``reset()``, like a balance."""

    dialect: Dialect | None = None
    realistic: bool | None = None
    answer: tuple | None = None
    usage: bool | None = None  # False: answers of the scripted ``answer`` carry no usage


@dataclass
class Fault:
    status: int | None = None
    retry_after: float | None = None
    first_byte_delay: float = 0.0
    cut_stream_after: int | None = None
    malformed_balance: bool = False
    remaining: int | None = None  # None: applies until cleared
    error: str | None = None  # a dialects.ERROR_KINDS kind, answered in the key's dialect (chat only)

    @property
    def active(self) -> bool:
        return (
            self.status is not None
            or self.first_byte_delay > 0
            or self.cut_stream_after is not None
            or self.malformed_balance
            or self.error is not None
        )

    def applies_to(self, route: str, stream: bool) -> bool:
        return (
            self.status is not None
            or self.first_byte_delay > 0
            or (self.cut_stream_after is not None and route == "chat" and stream)
            or (self.malformed_balance and route in BALANCE_ROUTES)
            or (self.error is not None and route == "chat")
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
    profiles: dict[str, Profile] = field(default_factory=dict)
    limits: dict[str, ModelLimits] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)


_NO_PROFILE = Profile()


def _segments(answer: list | tuple) -> tuple:
    segments = []
    for segment in answer:
        kind, count = segment[0], segment[1]
        if kind not in wire.DELTA_KINDS or not isinstance(count, int) or count < 0:
            raise ValueError(f"answer segments are (kind in {wire.DELTA_KINDS}, count >= 0), not {segment!r}")
        segments.append(tuple(segment))
    return tuple(segments)


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
        dialect: str | Dialect = "openai",
        billing: str = "friendly",
        max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        context_window: int = DEFAULT_CONTEXT_WINDOW,
    ) -> None:
        """``dialect`` and ``billing`` are the defaults for keys not scripted otherwise (see ``script``);
        ``max_output_tokens``/``context_window`` the limits of models without ``set_model_limits``."""
        self.host = host
        self.dialect = dialects.get(dialect)
        self.realistic = _realistic(billing)
        self.default_limits = ModelLimits(max_output_tokens, context_window)
        self.image_low_tokens = billing_rules.IMAGE_LOW_TOKENS
        self.image_high_tokens = billing_rules.IMAGE_HIGH_TOKENS
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
        error: str | None = None,
        dialect: str | Dialect | None = None,
        billing: str | None = None,
        answer: list | tuple | None = None,
        usage: bool | None = None,
    ) -> None:
        """Script how requests with ``key`` are answered.

        Faults (``status``, ``retry_after``, ``first_byte_delay``, ``cut_stream_after``,
        ``malformed_balance``, ``error``) replace the key's previous fault; with ``times=N`` they affect
        only the next N requests they apply to, then the key is served normally again. ``retry_after``
        alone implies ``status=429``. ``error`` is a kind from ``dialects.ERROR_KINDS`` (``rate_limit``,
        ``insufficient_quota``, ``request_too_large``, ``context_length``, ``overloaded``) answered on
        chat completions with the status and body of the key's dialect (``retry_after`` adds the header).
        ``cut_stream_after=N`` drops the connection after N delta events of any kind and choice.

        Account and provider state persists until ``clear(key)``/``reset()``, independent of ``times``:
        ``balance``, ``currency``, ``unlimited`` (an OpenRouter key without a limit); ``dialect`` (a name
        in ``dialects.DIALECTS`` or a ``Dialect``: which cap field is read, which error bodies);
        ``billing`` ("friendly": prompt = words of message contents, an uncapped answer is ``chunks``
        long; "realistic": the worst-case rule of ``billing.py``, an answer runs to the cap or to the
        model's ``max_output_tokens``); ``answer``, the events of every choice as ``(kind, count)``
        segments — kinds ``content``, ``reasoning_content``, ``refusal``, ``tool_calls`` (one tool call
        per segment, optionally ``("tool_calls", count, name)``), one completion token per event, cut
        at the cap with ``finish_reason: "length"``; ``usage=False``, JSON answers of that ``answer``
        without a ``usage`` object.
        """
        if retry_after is not None and status is None and error is None:
            status = 429
        new_dialect = dialects.get(dialect) if dialect is not None else None
        new_realistic = _realistic(billing) if billing is not None else None
        new_answer = _segments(answer) if answer is not None else None
        if error is not None:
            if error not in dialects.ERROR_KINDS:
                raise ValueError(f"unknown error kind {error!r}; known: {sorted(dialects.ERROR_KINDS)}")
            effective = new_dialect or self._profile(key).dialect or self.dialect
            if error not in effective.errors:
                raise ValueError(f"dialect {effective.name!r} has no documented body for {error!r}")
        fault = Fault(status, retry_after, first_byte_delay, cut_stream_after, malformed_balance, times, error)
        with self._lock:
            if new_dialect is not None or new_realistic is not None or new_answer is not None or usage is not None:
                old_profile = self._state.profiles.get(key, Profile())
                self._state.profiles[key] = Profile(
                    dialect=new_dialect or old_profile.dialect,
                    realistic=old_profile.realistic if new_realistic is None else new_realistic,
                    answer=old_profile.answer if new_answer is None else new_answer,
                    usage=old_profile.usage if usage is None else usage,
                )
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
            self._state.profiles.pop(key, None)

    def set_model_limits(
        self, model: str, *, max_output_tokens: int | None = None, context_window: int | None = None
    ) -> None:
        """Limits of ``model`` (the body's ``model`` string) on realistic keys, until ``reset()``.

        A realistic key generates at most ``max_output_tokens`` per choice (all of them when no cap is
        sent), and answers ``context_length`` in its dialect when the prompt plus the cap read exceeds
        ``context_window``.
        """
        with self._lock:
            old = self._state.limits.get(model, self.default_limits)
            self._state.limits[model] = ModelLimits(
                old.max_output_tokens if max_output_tokens is None else max_output_tokens,
                old.context_window if context_window is None else context_window,
            )

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

    def totals(self, key: str | None = None) -> Totals:
        """What was billed, summed over served chat completions (optionally only ``key``'s)."""
        billed = [r.billed for r in self.requests if r.billed is not None and (key is None or r.key == key)]
        return Totals(len(billed), sum(b.prompt_tokens for b in billed), sum(b.completion_tokens for b in billed))

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

    def _profile(self, key: str | None) -> Profile:
        profiles = self._state.profiles
        return (profiles.get(key) if profiles and key is not None else None) or _NO_PROFILE

    def _limits(self, model: str) -> ModelLimits:
        return self._state.limits.get(model) or self.default_limits

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
        record = None
        if self.record:
            record = RequestRecord(request.method, request.path, key, body, time.monotonic())
            with self._lock:
                self._state.records.append(record)

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
        return await self._chat(request, body, stream, fault, key, record)

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
        elif isinstance(raw, list) and raw and all(
            isinstance(x, str) or isinstance(x, list) and all(isinstance(t, int) for t in x) for x in raw
        ):
            inputs = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
        else:  # as OpenAI: a string, or a list of strings, of token ids or of token-id lists; else a 400
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

    async def _chat(
        self, request: web.Request, body: dict, stream: bool, fault: Fault | None, key: str | None,
        record: RequestRecord | None,
    ) -> web.StreamResponse:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            msg = "'messages' is a required property"
            return _json(400, wire.openai_error(msg, "invalid_request_error", None, "messages"))
        n = body.get("n")
        if n is None:
            n = 1
        elif not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
            msg = f"{n!r} is not valid under any of the given schemas - 'n' (must be an integer from 1 to {MAX_N})"
            return _json(400, wire.openai_error(msg, "invalid_request_error", "invalid_value", "n"))
        model = str(body.get("model", ""))
        profile = self._profile(key)
        dialect = profile.dialect or self.dialect
        realistic = self.realistic if profile.realistic is None else profile.realistic
        cap, cap_field = dialect.cap(body)
        if cap is not None and cap < 0:
            cap, cap_field = None, None
        if realistic:
            prompt_tokens = billing_rules.prompt_tokens(body, low=self.image_low_tokens, high=self.image_high_tokens)
            limits = self._limits(model)
            applied: int | None = limits.max_output_tokens if cap is None else min(cap, limits.max_output_tokens)
            if prompt_tokens + (cap or 0) > limits.context_window:
                return self._error(dialect, "context_length", key, model, prompt_tokens, cap or 0,
                                   limits.context_window, None)
        else:
            prompt_tokens = wire.count_prompt_tokens(messages)
            applied = cap
        if fault and fault.error is not None:
            return self._error(dialect, fault.error, key, model, prompt_tokens, applied or 0,
                               self._limits(model).context_window, fault.retry_after)
        segments = profile.answer
        if segments is None:  # the default answer: `chunks` words, or all the cap on a realistic key
            segments = (("content", applied if realistic else max(0, int(self.chunks))),)
        rid, created = self._next_id(), int(time.time())
        if n == 1 and profile.answer is None:  # the plain path: as fast as before
            n_tokens = segments[0][1]
            finish = "length" if realistic else "stop"
            if applied is not None and 0 <= applied < n_tokens:
                n_tokens, finish = applied, "length"
            if not stream:
                if record is not None:
                    record.billed = Billed(prompt_tokens, n_tokens, 1, applied, cap_field, dialect.name, realistic)
                return _json(200, wire.chat_completion(rid=rid, model=model, created=created, n_tokens=n_tokens,
                                                       prompt_tokens=prompt_tokens, finish_reason=finish))
            billed = None  # built only when recording: the benchmark's upstream records nothing
            if record is not None:
                billed = Billed(prompt_tokens, 0, 1, applied, cap_field, dialect.name, realistic, False)
            return await self._stream(request, rid, model, created, body, fault, _plain_events(n_tokens),
                                      [(finish, n_tokens == 0)], prompt_tokens, billed, record)

        # every choice is its own completion of the same (deterministic) answer, billed separately
        deltas, truncated = wire.answer_deltas(segments, applied)
        finish = wire.finish_reason_of(segments, truncated)
        billed = Billed(prompt_tokens, 0, n, applied, cap_field, dialect.name, realistic, False)
        if not stream:
            if record is not None:
                record.billed = replace(billed, completion_tokens=n * len(deltas), complete=True)
            choices = [(wire.message_of(deltas), finish)] * n
            return _json(200, wire.chat_completion_choices(rid=rid, model=model, created=created, choices=choices,
                                                           prompt_tokens=prompt_tokens,
                                                           completion_tokens=n * len(deltas),
                                                           with_usage=profile.usage is not False))
        return await self._stream(request, rid, model, created, body, fault, _interleaved([deltas] * n),
                                  [(finish, not deltas)] * n, prompt_tokens, billed, record)

    def _error(
        self, dialect: Dialect, kind: str, key: str | None, model: str, prompt_tokens: int, completion_tokens: int,
        context_window: int, retry_after: float | None,
    ) -> web.Response:
        builder = dialect if kind in dialect.errors else dialects.DIALECTS["openai"]
        ctx = ErrorContext(key=key, model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                           context_window=context_window, retry_after=retry_after)
        status, payload = builder.error(kind, ctx)
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        return _json(status, payload, headers)

    async def _stream(
        self, request: web.Request, rid: str, model: str, created: int, body: dict, fault: Fault | None,
        events: Iterator[tuple[int, dict]], finishes: list[tuple[str, bool]], prompt_tokens: int,
        billed: Billed | None, record: RequestRecord | None,
    ) -> web.StreamResponse:
        """Write ``events`` ((choice index, delta) pairs), then one finish chunk per choice
        ((finish_reason, choice had no event) in choice order), the usage chunk and ``[DONE]``.
        ``cut_stream_after=N`` drops the connection after N events, whatever their kind or choice."""
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        cut = fault.cut_stream_after if fault else None
        sent, complete = 0, False
        try:
            for index, delta in events:
                if cut is not None and sent >= cut:
                    return await _drop(request, resp)
                await resp.write(wire.chunk(rid=rid, model=model, created=created, delta=delta, index=index,
                                            finish_reason=None, with_usage_field=include_usage))
                sent += 1
                if self.chunk_delay > 0:
                    await asyncio.sleep(self.chunk_delay)
            if cut is not None:  # asked to cut at or after the last event: still no [DONE]
                return await _drop(request, resp)
            for index, (finish, empty) in enumerate(finishes):
                last = {"role": "assistant", "content": ""} if empty else {}
                await resp.write(wire.chunk(rid=rid, model=model, created=created, delta=last, index=index,
                                            finish_reason=finish, with_usage_field=include_usage))
            if include_usage:
                await resp.write(wire.usage_chunk(rid=rid, model=model, created=created,
                                                  prompt_tokens=prompt_tokens, completion_tokens=sent))
            await resp.write(wire.DONE_EVENT)
            await resp.write_eof()
            complete = True
            return resp
        except ConnectionError:  # the client went away mid-stream: bill what was delivered, log nothing
            return resp
        finally:
            if record is not None and billed is not None:
                record.billed = replace(billed, completion_tokens=sent, complete=complete)


def _plain_events(n_tokens: int) -> Iterator[tuple[int, dict]]:
    """The default answer of one choice, built lazily: ``tok0 tok1 ...`` as content deltas."""
    if n_tokens > 0:
        yield 0, {"role": "assistant", "content": wire.content_piece(0)}
    for i in range(1, n_tokens):
        yield 0, {"content": wire.content_piece(i)}


def _interleaved(answers: list[list[dict]]) -> Iterator[tuple[int, dict]]:
    """``n`` choices interleaved, one event per choice per step, as OpenAI streams them."""
    for step in range(max(len(deltas) for deltas in answers)):
        for index, deltas in enumerate(answers):
            if step < len(deltas):
                yield index, ({"role": "assistant", **deltas[step]} if step == 0 else deltas[step])


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


async def _drop(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Close the socket mid-body: the client sees a truncated chunked response and no ``[DONE]``."""
    await asyncio.sleep(0.01)  # let the chunks already written reach the client first
    transport = request.transport
    if transport is not None:
        transport.abort()
    return resp
