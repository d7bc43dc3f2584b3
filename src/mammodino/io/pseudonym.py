"""Pseudonymous ids: salted hashes, so no PHI ever reaches an output."""

from __future__ import annotations

import hashlib
import hmac
import os

DEFAULT_SALT_ENV = "MAMMODINO_SALT"


def pseudonymous_id(value: str, salt: str | None = None, length: int = 16) -> str:
    """HMAC-SHA256 of `value` keyed by `salt` (or $MAMMODINO_SALT), as `length` hex digits."""
    key = (salt if salt is not None else os.environ.get(DEFAULT_SALT_ENV, "mammodino")).encode()
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:length]
