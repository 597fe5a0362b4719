"""Signed, expiring output URLs: an HMAC over the object key and the expiry time.

The API serves ``/v2/openapi/outputs/<key>?expires=<unix>&signature=<hex>``; anyone holding
the URL may fetch it until it expires, with or without an ``Authorization`` header (the
official SDK sends one to the file host). The secret lives in the database, so every API
replica signs and verifies alike.

Expiry times are rounded up to a step of a tenth of the lifetime, so a client that polls a task
sees the same URL for a while (its browser or CDN can cache the image) and every URL stays
valid for at least the configured lifetime.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode


class UrlSigner:
    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret.encode()
        self.ttl_s = ttl_s
        self._step_s = max(1, ttl_s // 10)

    def _signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, base_url: str, key: str, now: float | None = None) -> str:
        earliest = (time.time() if now is None else now) + self.ttl_s
        expires = -(-int(earliest) // self._step_s) * self._step_s
        if expires < earliest:
            expires += self._step_s
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"{base_url.rstrip('/')}/v2/openapi/outputs/{quote(key)}?{query}"

    def sign_upload(
        self, base_url: str, account_id: str, token: str, ttl_s: int, now: float | None = None
    ) -> str:
        """A presigned ``PUT`` URL for one upload (v3 ``/files/presign``). Its signed key
        starts with ``upload:``, which no output key does, so neither URL opens the other."""
        expires = int((time.time() if now is None else now) + ttl_s)
        signature = self._signature(upload_key(account_id, token), expires)
        query = urlencode({"expires": expires, "signature": signature})
        return f"{base_url.rstrip('/')}/v3/files/upload/{account_id}/{token}?{query}"

    def verify(self, key: str, expires: int, signature: str, now: float | None = None) -> bool:
        if expires < (time.time() if now is None else now):
            return False
        # compare_digest refuses non-ASCII str (TypeError): such a signature is simply wrong.
        return signature.isascii() and hmac.compare_digest(self._signature(key, expires), signature)


def upload_key(account_id: str, token: str) -> str:
    """What a presigned upload URL signs."""
    return f"upload:{account_id}/{token}"
