"""Served ≤ collected (issue 12, README "Money integrity"): the hold bounds the upstream.

Against the fake provider billing realistically (tests/fakeprovider/billing.py: one prompt token per
UTF-8 byte of everything reaching the model, every image at its worst case, an uncapped answer runs to
the model's output limit, `n` honoured) in both cap dialects: whatever the body, what the upstream
served costs no more than what was held, the hold no more than the balance (or the monthly limit)
allowed, and the settled charge is the upstream's usage × price. The race tests print their figures
(`pytest -s`).
"""

import asyncio
import string
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st
from openai import APIStatusError, BadRequestError

from billing.models import Account, BalanceHold
from core.money import token_cost
from keys.models import ProviderModel
from pool.gateway import _prompt_estimate
from pool.models import RequestRecord
from tests.fakeprovider import billing as fake_billing
from tests.pool.conftest import INPUT_PRICE, MODEL, OUTPUT_PRICE, PROVIDER
from tests.pool.helpers import assert_ledger_clean, burst, holds_during, main

MODEL_ID = f"{PROVIDER}/{MODEL}"
DIALECTS = ("openai", "max_tokens_only")
BIG_CONTEXT = 10_000_000

# --- bodies ------------------------------------------------------------------------------------------

SCRIPTS = (
    string.ascii_letters + string.digits + string.punctuation + " \n\t"
    + "éüßøçñ" + "Жжщъ" + "αβγδ" + "אבג" + "مرحبا" + "हिन्दी" + "ไทย"
    + "漢字中文日本語한국어かなカナ" + "😀🎉🧑‍💻👍🏽🇺🇳" + "\u200b\u2028\u00a0\ufeff"
)
text = st.one_of(
    st.text(alphabet=SCRIPTS, max_size=300),
    st.text(max_size=120),  # any Unicode (no lone surrogates: JSON cannot carry them)
    st.sampled_from(["def f(x):\n    return {'a': [1, 2, 3]}\n", '{"k": [1, 2.5, null, true], "s": "\\u00e9"}']),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | text
    | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([2.5e-7, 1e-9, 1e100, -3.3e-8]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
image_part = st.builds(
    lambda url, detail: {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}},
    st.sampled_from(["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="]),
    st.sampled_from([None, "low", "high", "auto"]),
)
content = st.one_of(
    text,
    st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, text), image_part), min_size=1, max_size=3),
)
tool_call = st.builds(
    lambda name, args: {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}},
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=12), text,
)


@st.composite
def messages(draw):
    found = []
    for _ in range(draw(st.integers(1, 3))):
        role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
        message = {"role": role, "content": draw(content)}
        if draw(st.booleans()):
            message["name"] = draw(st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=16))
        if role == "assistant" and draw(st.booleans()):
            message["tool_calls"] = [draw(tool_call)]
        if role == "tool":
            message["tool_call_id"] = "call_1"
        found.append(message)
    return found


tools = st.lists(
    st.builds(
        lambda name, schema: {"type": "function", "function": {"name": name, "description": "d",
                                                               "parameters": {"type": "object", "properties": schema}}},
        st.text(alphabet=string.ascii_letters, min_size=1, max_size=12),
        st.dictionaries(st.text(alphabet=string.ascii_letters, min_size=1, max_size=8), json_values, max_size=3),
    ),
    min_size=1, max_size=2,
)


@st.composite
def bodies(draw):
    body = {"messages": draw(messages())}
    if draw(st.booleans()):
        body["tools"] = draw(tools)
        body["tool_choice"] = draw(st.sampled_from(["auto", "none", {"type": "function", "function": {"name": "x"}}]))
    if draw(st.booleans()):
        body["response_format"] = draw(st.sampled_from([
            {"type": "json_object"},
            {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object", "properties": {
                "漢字": {"type": "string"}, "emoji😀": {"type": "array", "items": {"type": "integer"}}}}}},
        ]))
    return body


@given(body=bodies())
@hypothesis_settings(max_examples=300)
def test_the_prompt_estimate_is_never_below_what_a_realistic_provider_bills(body):
    assert _prompt_estimate(body) >= fake_billing.prompt_tokens(body)


def test_the_prompt_estimate_counts_floats_as_python_writes_them():
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "enum": [2.5e-7] * 1000}}}]}
    assert _prompt_estimate(body) >= fake_billing.prompt_tokens(body)


def test_the_prompt_estimate_counts_what_len_over_three_missed():
    cjk = {"messages": [{"role": "user", "content": "漢字😀" * 500}],
           "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
           "response_format": {"type": "json_object"}}
    assert _prompt_estimate(cjk) >= fake_billing.prompt_tokens(cjk) > 3_500


# --- against the gateway -----------------------------------------------------------------------------


def set_balance(user, nanos: int) -> None:
    """Move a member's main balance down to exactly `nanos` through the ledger (an adjustment)."""
    from billing.services import account_for_owner, ledger_transfer, platform_account

    account = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    if account.balance > nanos:
        ledger_transfer(source=account, destination=platform_account(Account.Kind.ADJUSTMENTS),
                        amount=account.balance - nanos, idempotency_key=f"test-set-balance:{user.pk}:{nanos}",
                        kind="adjustment")
    assert main(user) == nanos


def realistic(world, *, dialect: str = "max_tokens_only", max_output_tokens: int = 4096):
    key = world.key()
    world.fake.script(key.secret, dialect=dialect, billing="realistic")
    world.fake.set_model_limits(MODEL, max_output_tokens=max_output_tokens, context_window=BIG_CONTEXT)
    ProviderModel.objects.filter(name=MODEL).update(max_output_tokens=max_output_tokens)
    return key


def served(fake, key=None) -> Fraction:
    """What the upstream billed, exactly (no rounding), in nanodollars."""
    return fake.totals(key).cost(INPUT_PRICE, OUTPUT_PRICE)


def usage_cost(billed) -> int:
    return token_cost(billed.prompt_tokens, INPUT_PRICE) + token_cost(billed.completion_tokens, OUTPUT_PRICE)


def _post(world, member, body):
    import httpx

    return httpx.post(f"{world.url}/v1/chat/completions", json={"model": MODEL_ID, **body},
                      headers={"authorization": f"Bearer {member.api_key}"}, timeout=30)


@pytest.fixture
def property_world(world):
    return world


@hypothesis_settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                             HealthCheck.too_slow], deadline=None)
@given(
    body=bodies(),
    dialect=st.sampled_from(DIALECTS),
    n=st.sampled_from([None, None, None, 1, 2, 3, 4, 0, 128]),
    max_completion_tokens=st.one_of(st.none(), st.integers(1, 3000)),
    max_tokens=st.one_of(st.none(), st.integers(1, 3000)),
    balance=st.one_of(st.integers(10_000_000, 50_000_000), st.integers(1_000, 200_000)),
    stream=st.booleans(),
)
def test_whatever_the_body_the_upstream_serves_at_most_what_was_held_and_charged(
    property_world, body, dialect, n, max_completion_tokens, max_tokens, balance, stream,
):
    world = property_world
    if not hasattr(world, "_realistic_key"):
        world._realistic_key = realistic(world, max_output_tokens=2048)
    key = world._realistic_key
    world.fake.script(key.secret, dialect=dialect, billing="realistic")
    member = world.member()
    set_balance(member.user, balance)
    for name, value in (("n", n), ("max_completion_tokens", max_completion_tokens), ("max_tokens", max_tokens)):
        if value is not None:
            body[name] = value
    if stream:
        body["stream"] = True
    before = served(world.fake, key.secret)
    response, held = holds_during(lambda: _post(world, member, body), fake=world.fake, secrets=[key.secret],
                                  delay=0.05)
    served_now = served(world.fake, key.secret) - before
    code = "" if response.status_code == 200 else response.json()["error"]["code"]
    event(f"HTTP {response.status_code} {code} {'big' if balance > 1_000_000 else 'small'}")

    if n is not None and not 1 <= n <= 8:
        assert response.status_code == 400 and response.json()["error"]["param"] == "n"
        assert served_now == 0
        return
    if response.status_code == 402:
        assert served_now == 0 and not held
        assert main(member.user) == balance
        return
    assert response.status_code == 200, response.text
    request_id = response.headers["x-headroom-request-id"]
    hold = held[f"{request_id}:platform"]
    record = RequestRecord.objects.get(request_id=request_id)
    billed = world.fake.requests[-1].billed
    sent = world.fake.requests[-1].json
    # The provider got one cap, in the field it reads, and no larger than the client's.
    assert "max_completion_tokens" not in sent
    client_caps = [v for v in (max_completion_tokens, max_tokens) if v is not None]
    assert 1 <= sent["max_tokens"] <= min(client_caps + [2048])
    assert served_now <= hold <= balance
    assert record.charged == record.cost == usage_cost(billed)
    assert main(member.user) == balance - record.charged
    assert not BalanceHold.objects.filter(request_id__startswith=request_id).exists()


# --- the table, replayed ---------------------------------------------------------------------


def _collected(member, start: int) -> int:
    return start - main(member.user)


def test_n_128_is_refused_and_held_for_when_allowed(world, settings):
    key = realistic(world)
    alice = world.member()
    set_balance(alice.user, 100_000)  # $0.0001
    client = alice.client(world.url)
    with pytest.raises(BadRequestError) as refused:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], n=128)
    assert refused.value.body["param"] == "n"
    settings.HEADROOM_MAX_N = 128  # allowed: each of the 128 completions is held for
    with pytest.raises(APIStatusError) as poor:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], n=128)
    assert poor.value.status_code == 402  # 128 completions of even one token are more than $0.0001 leaves
    answer = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], n=4)
    print(f"\nn=4 on $0.0001: served {float(served(world.fake, key.secret)):.0f} nanos,"
          f" collected {_collected(alice, 100_000)} nanos")
    assert len(answer.choices) == 4
    assert served(world.fake, key.secret) <= _collected(alice, 100_000) <= 100_000
    assert_ledger_clean()


def test_both_max_fields_to_a_max_tokens_only_provider_forward_the_smaller(world):
    key = realistic(world, dialect="max_tokens_only")
    alice = world.member()
    client = alice.client(world.url)
    set_balance(alice.user, 10_000)  # $0.00001: not even the prompt
    with pytest.raises(APIStatusError) as poor:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}],
                                       max_completion_tokens=1, max_tokens=2000)
    assert poor.value.status_code == 402 and world.fake.totals(key.secret).requests == 0
    set_balance_up(alice.user, 1_000_000)
    client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}],
                                   max_completion_tokens=1, max_tokens=2000)
    sent, billed = world.fake.requests[-1].json, world.fake.requests[-1].billed
    assert sent["max_tokens"] == 1 and "max_completion_tokens" not in sent
    assert billed.completion_tokens == 1
    print(f"\nmax_completion_tokens=1 + max_tokens=2000: served {float(served(world.fake, key.secret)):.0f},"
          f" collected {_collected(alice, 1_000_000)} nanos")
    assert served(world.fake, key.secret) <= _collected(alice, 1_000_000)
    assert_ledger_clean()


def set_balance_up(user, nanos: int) -> None:
    """Top a member's main balance up (or down) to exactly `nanos`."""
    from billing.services import account_for_owner, ledger_transfer, platform_account

    account = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    if account.balance < nanos:
        ledger_transfer(source=platform_account(Account.Kind.ADJUSTMENTS), destination=account,
                        amount=nanos - account.balance, idempotency_key=f"test-top-up:{user.pk}:{nanos}",
                        kind="adjustment")
    set_balance(user, nanos)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_no_max_at_all_gets_the_cap_the_balance_affords(world, dialect):
    key = realistic(world, dialect=dialect, max_output_tokens=100_000)
    alice = world.member()
    set_balance(alice.user, 100_000)  # $0.0001
    answer = alice.client(world.url).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "hi"}])
    sent = world.fake.requests[-1].json
    estimate = _prompt_estimate({"messages": [{"role": "user", "content": "hi"}]})
    assert sent["max_tokens"] == (100_000 - token_cost(estimate, INPUT_PRICE)) // 2_000  # $2/M output
    assert answer.usage.completion_tokens == sent["max_tokens"]
    print(f"\nno max, {dialect}: cap {sent['max_tokens']}, served {float(served(world.fake, key.secret)):.0f},"
          f" collected {_collected(alice, 100_000)} nanos")
    assert served(world.fake, key.secret) <= _collected(alice, 100_000) <= 100_000
    assert_ledger_clean()


def test_long_cjk_emoji_tools_prompt_is_held_for_in_full(world):
    key = realistic(world)
    alice = world.member()
    set_balance(alice.user, 2_100_000)  # $0.0021
    body = {
        "messages": [{"role": "system", "content": "你好世界🌏" * 200},
                     {"role": "user", "content": [{"type": "text", "text": "😀🎉" * 100},
                                                  {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "検索する" * 20,
                                                    "parameters": {"type": "object", "properties": {
                                                        "q": {"type": "string", "description": "クエリ"}}}}}],
        "response_format": {"type": "json_object"},
    }
    # The whole prompt is held for: on $0.0021 it does not fit, and nothing is served.
    response = _post(world, alice, body)
    assert response.status_code == 402 and world.fake.totals(key.secret).requests == 0
    set_balance_up(alice.user, 10_000_000)  # $0.01
    response = _post(world, alice, body)
    assert response.status_code == 200, response.text
    billed = world.fake.requests[-1].billed
    print(f"\nCJK/emoji/tools/image prompt: estimate {_prompt_estimate(body)}, billed {billed.prompt_tokens} prompt"
          f" tokens; served {float(served(world.fake, key.secret)):.0f}, collected {_collected(alice, 10_000_000)}"
          " nanos")
    assert _prompt_estimate(body) >= billed.prompt_tokens
    assert served(world.fake, key.secret) <= _collected(alice, 10_000_000) <= 10_000_000
    assert_ledger_clean()


def test_a_small_monthly_limit_still_serves_with_a_small_cap(world):
    key = realistic(world)
    alice = world.member(monthly_limit=1_000_000)  # $0.001: 4,096 tokens held would refuse every request
    client = alice.client(world.url)
    answer = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}])
    assert answer.usage.completion_tokens > 0
    assert RequestRecord.objects.get().charged <= 1_000_000
    assert served(world.fake, key.secret) <= RequestRecord.objects.get().charged


def test_one_request_after_another_stops_at_the_monthly_limit_it_counted_from_the_settled_ones(world):
    realistic(world)
    alice = world.member(monthly_limit=200_000)  # $0.0002 a month; the balance is $2
    client = alice.client(world.url)
    refused = None
    for _ in range(40):
        try:
            client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=20)
        except APIStatusError as error:
            refused = error
            break
    spent = sum(RequestRecord.objects.values_list("charged", flat=True))
    print(f"\nsequential requests under a $0.0002 monthly limit: {RequestRecord.objects.count()} answered,"
          f" spent {spent} nanos before the refusal")
    assert refused is not None and refused.status_code == 402 and refused.body["code"] == "monthly_limit_reached"
    assert 0 < spent <= 200_000
    assert_ledger_clean()


# --- races -------------------------------------------------------------------------------------------


CRAFTED = (
    {"messages": [{"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 1, "max_tokens": 2000},
    {"messages": [{"role": "user", "content": "hi"}], "n": 8},
    {"messages": [{"role": "user", "content": "漢字😀" * 5}], "max_tokens": 2000},
)


def test_fifty_concurrent_crafted_requests_on_a_ten_thousandth_of_a_dollar(world):
    key = realistic(world)
    world.fake.script(key.secret, first_byte_delay=0.5)  # all in flight at once
    alice = world.member()
    set_balance(alice.user, 100_000)  # $0.0001
    results = asyncio.run(burst(alice.api_key, world.url, 50,
                                lambda i: {"model": MODEL_ID, **CRAFTED[i % len(CRAFTED)]}))
    answered = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    collected = 100_000 - main(alice.user)
    upstream = served(world.fake, key.secret)
    print(f"\n50 concurrent crafted requests on $0.0001: {len(answered)} answered, {len(refused)} refused (402),"
          f" upstream served {float(upstream):.0f} nanos (${float(upstream) / 1e9:.7f}),"
          f" collected {collected} nanos")
    assert all(getattr(r, "status_code", None) == 402 for r in refused), refused[:3]
    assert answered
    assert upstream <= collected <= 100_000
    assert not BalanceHold.objects.exists()
    assert_ledger_clean()


def test_forty_concurrent_requests_under_a_ten_thousandth_of_a_dollar_monthly_limit(world):
    key = realistic(world)
    world.fake.script(key.secret, first_byte_delay=0.5)
    alice = world.member(monthly_limit=100_000)  # $0.0001 a month; the balance is $2
    results = asyncio.run(burst(alice.api_key, world.url, 40,
                                lambda i: {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}))
    answered = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    spent = sum(RequestRecord.objects.values_list("charged", flat=True))
    upstream = served(world.fake, key.secret)
    print(f"\n40 concurrent requests under a $0.0001 monthly limit: {len(answered)} answered, {len(refused)} refused,"
          f" spent {spent} nanos (${spent / 1e9:.7f}), upstream served {float(upstream):.0f} nanos")
    assert {(r.status_code, r.body["code"]) for r in refused} == {(402, "monthly_limit_reached")}
    assert answered
    assert upstream <= spent <= 100_000
    assert not BalanceHold.objects.exists()
    assert_ledger_clean()


# --- every route -------------------------------------------------------------------------------------


def test_every_route_forwards_one_cap_in_the_field_the_provider_reads_and_bounds_n(world, settings):
    """Pool and BYOK hold nothing per token, but their requests are shaped the same way: n bounded,
    the model's cap injected when absent, one cap field, the smaller of the client's two."""
    world.fake.set_model_limits(MODEL, max_output_tokens=300, context_window=BIG_CONTEXT)
    ProviderModel.objects.filter(name=MODEL).update(max_output_tokens=300)
    alice, bob = world.member(), world.member()
    world.key(owner=alice.user, donate_to_pool=True)  # alice passes the pool gate
    donated = world.key(owner=bob.user, donate_to_pool=True)
    own = world.key(owner=alice.user, byok=True)
    for key in (donated, own):
        world.fake.script(key.secret, dialect="openai", billing="realistic")
    client = alice.client(world.url)
    prompt = [{"role": "user", "content": "hi"}]
    for model in (f"{PROVIDER}-pool/{MODEL}", MODEL_ID):  # the pool, then alice's own key (BYOK)
        with pytest.raises(BadRequestError):
            client.chat.completions.create(model=model, messages=prompt, n=9)
        client.chat.completions.create(model=model, messages=prompt)
        assert world.fake.requests[-1].json["max_tokens"] == 300
        assert "max_completion_tokens" not in world.fake.requests[-1].json
        client.chat.completions.create(model=model, messages=prompt, max_completion_tokens=5, max_tokens=200, n=2)
        sent, billed = world.fake.requests[-1].json, world.fake.requests[-1].billed
        assert (sent["max_tokens"], "max_completion_tokens" in sent, billed.completion_tokens) == (5, False, 10)
    assert {r.route for r in RequestRecord.objects.all()} == {"pool", "byok"}
    assert main(alice.user) == 2_000_000_000  # neither route charged alice
    assert_ledger_clean()
