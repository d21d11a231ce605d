"""Write a `.env` with fresh random development secrets, once.

`make run` calls this so that the embedded default starts with no manual
step, yet no secret is hard-coded in the settings. An existing `.env` is
left as it is (sessions and encrypted provider keys depend on its values).
"""

import os
import secrets
import sys
from pathlib import Path

from cryptography.fernet import Fernet

# The file the settings read (config/env.py): `.env` at the project root unless DJANGO_ENV_FILE names another.
ENV_FILE = Path(os.environ.get("DJANGO_ENV_FILE", Path(__file__).resolve().parent.parent / ".env"))


def main() -> int:
    if ENV_FILE.exists():
        return 0
    ENV_FILE.write_text(
        "# Written by `make run` for local development. Never commit this file.\n"
        "DJANGO_DEBUG=true\n"
        f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n"
        f"HEADROOM_FIELD_ENCRYPTION_KEYS={Fernet.generate_key().decode()}\n"
    )
    ENV_FILE.chmod(0o600)
    print(f"wrote {ENV_FILE} with fresh development secrets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
