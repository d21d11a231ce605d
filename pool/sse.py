"""Splitting a provider's SSE byte stream into events, without re-encoding them.

Why not an SSE client library (httpx-sse, aiohttp-sse-client): they parse
events into objects, and the proxy must pass each event through byte for byte
while only peeking at its `data:` payload (usage, content counts). Framing is
the one thing needed: events end at a blank line (LF LF, or CR LF CR LF).
"""

import orjson

DONE = b"[DONE]"


class EventSplitter:
    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete events (without their terminating blank line) found so far."""
        self._buffer += chunk
        if b"\r" in self._buffer:
            self._buffer = self._buffer.replace(b"\r\n", b"\n")
        *events, self._buffer = self._buffer.split(b"\n\n")
        return [e for e in events if e.strip()]

    @property
    def leftover(self) -> bytes:
        return self._buffer


def event_data(event: bytes) -> bytes | None:
    """The joined `data:` lines of one event, or None for a comment/keep-alive-only event."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the usual shape: one data line
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def encode(payload: dict | bytes) -> bytes:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"
