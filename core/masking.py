"""Secrets shown for display: never the secret, only the few characters a person needs to tell keys
apart. Provider keys show their tail ("…a1b2": the prefix is the same for every key of a provider);
gateway API keys their head ("hr-AbCd1234…": stored at creation, as the key itself is only hashed)."""

MASK = "…"
SECRET_TAIL_LENGTH = 4


def secret_tail(secret: str) -> str:
    """What a provider key keeps of its secret for display (stored next to the ciphertext)."""
    return secret[-SECRET_TAIL_LENGTH:]


def masked_tail(tail: str, *, missing: str = MASK) -> str:
    """ "…a1b2" for a stored tail; `missing` when there is none."""
    return f"{MASK}{tail}" if tail else missing


def masked_head(head: str) -> str:
    """ "hr-AbCd1234…" for a stored head."""
    return f"{head}{MASK}"
