"""Payment details are sealed before they reach the journal, so the SQLite file never holds them in clear.

The cipher is built only from the standard library (no extra dependency): an HMAC-SHA256 keystream in counter mode under
a random 16-byte nonce, then encrypt-then-MAC with a separate HMAC-SHA256 key. Both keys derive from one shard secret.
The payload hash used to compare a retried PlaceOrder with the original is keyed too, so it cannot be brute-forced from
the journal alone.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

_NONCE = 16
_TAG = 32


class SealError(ValueError):
    """A sealed blob was tampered with or sealed under another key."""


class Sealer:
    def __init__(self, secret: bytes) -> None:
        self._enc_key = hmac.new(secret, b"saga-journal-enc", hashlib.sha256).digest()
        self._mac_key = hmac.new(secret, b"saga-journal-mac", hashlib.sha256).digest()
        self._hash_key = hmac.new(secret, b"saga-payload-hash", hashlib.sha256).digest()

    def _keystream(self, nonce: bytes, n: int) -> bytes:
        blocks = []
        for counter in range((n + 31) // 32):
            blocks.append(hmac.new(self._enc_key, nonce + counter.to_bytes(8, "big"), hashlib.sha256).digest())
        return b"".join(blocks)[:n]

    def seal(self, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        ct = bytes(a ^ b for a, b in zip(plaintext, self._keystream(nonce, len(plaintext)), strict=True))
        tag = hmac.new(self._mac_key, nonce + ct, hashlib.sha256).digest()
        return nonce + ct + tag

    def open(self, blob: bytes) -> bytes:
        if len(blob) < _NONCE + _TAG:
            raise SealError("sealed blob too short")
        nonce, ct, tag = blob[:_NONCE], blob[_NONCE:-_TAG], blob[-_TAG:]
        if not hmac.compare_digest(tag, hmac.new(self._mac_key, nonce + ct, hashlib.sha256).digest()):
            raise SealError("sealed blob failed authentication (wrong key or tampered)")
        return bytes(a ^ b for a, b in zip(ct, self._keystream(nonce, len(ct)), strict=True))

    def payload_hash(self, data: bytes) -> str:
        return hmac.new(self._hash_key, data, hashlib.sha256).hexdigest()


def load_secret(configured: str, journal_path: str) -> bytes:
    """The configured secret, else the one kept beside the journal (created on first start, mode 0600)."""
    if configured:
        return configured.encode()
    key_path = Path(journal_path + ".key")
    if key_path.exists():
        return key_path.read_bytes()
    key_path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    tmp = key_path.with_suffix(".key.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, key_path)
    return secret
