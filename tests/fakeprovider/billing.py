"""How the fake bills a chat request when a key is scripted with ``billing="realistic"``.

Why a separate module: this rule is the contract the gateway's hold estimate (issue 12) must be
proven against — for every request body, ``estimate(body) >= prompt_tokens(body)`` and
``held completion cap >= what the fake generates``. Keeping the rule small, pure and documented here
lets a property test import it and compare it with the gateway's estimate directly.

The rule is deliberately at the *high end* of what any real provider bills, never below it:

**Text: one token per UTF-8 byte.** Every byte-level BPE tokenizer (OpenAI o200k/cl100k, Llama 3,
Mistral Tekken, DeepSeek, Qwen ...) emits tokens that each cover at least one byte of the input, and
SentencePiece tokenizers with byte fallback do the same, so no text can ever cost more tokens than it
has UTF-8 bytes. CJK (3 bytes a character) and emoji (4 bytes, more with modifiers) are counted at
that full weight.

**Prompt tokens** of a chat request =

- ``REPLY_PRIMING`` (3): the tokens that prime the assistant's reply (OpenAI's documented
  "every reply is primed with <|start|>assistant<|message|>");
- for every message: ``PER_MESSAGE`` (3, OpenAI's documented per-message overhead) plus
    - ``content``: a string counts its bytes; a list of content parts counts each part — a ``text``
      part its text's bytes, an ``image_url`` part by the image rule below, any other part (audio,
      files ...) the bytes of its compact JSON;
    - ``name``: its bytes plus ``PER_NAME`` (1, OpenAI's documented extra token for a name);
    - every other field (``role``, ``tool_call_id``, ``refusal``, ``reasoning_content`` ...): a string
      counts its bytes; ``tool_calls``, ``function_call`` and any other non-string value count the
      bytes of their compact JSON (``json.dumps(v, ensure_ascii=False, separators=(",", ":"))``);
- the request-level fields that reach the model: ``tools``, ``functions``, ``tool_choice`` and
  ``response_format`` (a ``json_schema`` with its whole schema), each by the bytes of its compact JSON
  (a string ``tool_choice`` such as ``"auto"`` by its bytes), plus ``TOOLS_OVERHEAD`` (16) once when
  ``tools`` or ``functions`` is a non-empty list (the preamble a provider wraps the definitions in:
  OpenAI renders them as a TypeScript-like namespace, whose text is shorter than the definitions' JSON
  apart from that fixed wrapper, and tokenizes to far fewer tokens than bytes).

Fields that do not reach the model (``model``, ``stream``, ``temperature``, ``max_tokens`` ...) are not
counted. Not modelled: predicted outputs (``prediction``) and audio output.

**Images** (OpenAI, https://platform.openai.com/docs/guides/images-vision#calculating-costs, the
gpt-4o/gpt-4.1 tile rule): ``detail: "low"`` costs 85 tokens; ``high`` or ``auto`` costs 85 + 170 per
512-px tile after the image is scaled to fit in 2048×2048 and then its shortest side to 768 px.
The fake cannot see an image's size behind a URL (or decode a data URL), so it bills every non-low
image at the worst case of that rule: at most 2048×768 after scaling, ceil(2048/512) × ceil(768/512)
= 8 tiles, 85 + 8 × 170 = **1445 tokens** (``IMAGE_HIGH_TOKENS``). The base64 of a data URL is never
counted as text. Other model families bill images differently (gpt-4o-mini multiplies tiles so that
images cost what gpt-4o charges; the patch-based gpt-4.1-mini/nano rule caps at 1536 patches × a
per-model multiplier): a test that needs them sets ``FakeProvider.image_low_tokens`` /
``image_high_tokens``.

**Completion tokens**: one per streamed delta event (``content``, ``reasoning_content``, a piece of
``tool_calls`` arguments, ``refusal``), summed over the ``n`` choices. A realistic key without any cap
in the field its dialect reads generates until the model's ``max_output_tokens`` (absent caps are
expensive), and with a cap it uses all of it: the fake is a model that always talks to its limit.
"""

from __future__ import annotations

import json
from typing import Any

REPLY_PRIMING = 3
PER_MESSAGE = 3
PER_NAME = 1
TOOLS_OVERHEAD = 16
IMAGE_LOW_TOKENS = 85
IMAGE_TILE_TOKENS = 170
IMAGE_MAX_TILES = 8  # 2048×768 after OpenAI's scaling: 4 × 2 tiles of 512 px
IMAGE_HIGH_TOKENS = IMAGE_LOW_TOKENS + IMAGE_TILE_TOKENS * IMAGE_MAX_TILES  # 1445

# Request fields that reach the model besides ``messages``.
PROMPT_FIELDS = ("tools", "functions", "tool_choice", "response_format")

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def text_tokens(text: str) -> int:
    """One token per UTF-8 byte: an upper bound for every byte-level tokenizer."""
    return len(text.encode("utf-8", "surrogatepass"))


def json_tokens(value: Any) -> int:
    """A string counts its bytes; anything else the bytes of its compact JSON (ensure_ascii off)."""
    if isinstance(value, str):
        return text_tokens(value)
    if value is None:
        return 0
    return text_tokens(_COMPACT(value))


def image_tokens(part: dict, *, low: int = IMAGE_LOW_TOKENS, high: int = IMAGE_HIGH_TOKENS) -> int:
    image = part.get("image_url")
    detail = image.get("detail") if isinstance(image, dict) else None
    return low if detail == "low" else high


def content_tokens(content: Any, *, low: int = IMAGE_LOW_TOKENS, high: int = IMAGE_HIGH_TOKENS) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                total += text_tokens(part["text"])
            elif isinstance(part, dict) and part.get("type") == "image_url":
                total += image_tokens(part, low=low, high=high)
            else:
                total += json_tokens(part)
        return total
    return json_tokens(content)


def message_tokens(message: Any, *, low: int = IMAGE_LOW_TOKENS, high: int = IMAGE_HIGH_TOKENS) -> int:
    if not isinstance(message, dict):
        return PER_MESSAGE + json_tokens(message)
    total = PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            total += content_tokens(value, low=low, high=high)
        elif key == "name":
            total += PER_NAME + json_tokens(value)
        else:
            total += json_tokens(value)
    return total


def prompt_tokens(body: dict, *, low: int = IMAGE_LOW_TOKENS, high: int = IMAGE_HIGH_TOKENS) -> int:
    """Prompt tokens a realistic key bills for a chat request ``body`` (see the module docstring)."""
    messages = body.get("messages")
    total = REPLY_PRIMING
    if isinstance(messages, list):
        total += sum(message_tokens(m, low=low, high=high) for m in messages)
    for field in PROMPT_FIELDS:
        total += json_tokens(body.get(field))
    if any(isinstance(body.get(f), list) and body.get(f) for f in ("tools", "functions")):
        total += TOOLS_OVERHEAD
    return total

