"""Payment details are sealed before they reach the journal, so the SQLite file never holds them in clear.

Blob (format v2): b"SJv2" | len(kid) (1 byte) | kid (ASCII) | nonce (12 bytes) | AES-256-GCM ciphertext and tag.
The associated data is the header and the saga id: a blob copied into another saga's row does not open.

Keys live in a key file (a Kubernetes Secret, a systemd credential, or by default `<journal>.keys` beside the journal):

    # comments and blank lines are ignored
    hash=<base64 of 32 bytes>     keys the payload hash; never changes
    k1=<base64 of 32 bytes>       sealing keys, oldest first: the last one seals, every one opens
    k2=<base64 of 32 bytes>

The payload hash (sagas.payload_hash) compares a retried PlaceOrder with the original. It is keyed, so the journal alone
does not let anyone test guesses of a card token against it, and its key is its own entry that rotation never touches:
a client retrying after a rotation must get the same hash, or its order would be refused as "a different payload".
The journal records a fingerprint of that key (journal v3), so a start with another key file (another shard's: each
shard has a hash key of its own) is refused, and so is a restore (coordinator/operations/restore.py).

Blobs written before key rings (an HMAC keystream under one secret: SAGA_JOURNAL_KEY, else `<journal>.key`) still open
with that secret; a start reseals them, and a migrated key file takes its hash key from that secret, so stored hashes
keep matching.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from loguru import logger

from coordinator.config import ShardConfig
from coordinator.journal import Journal
from coordinator.saga.model import SagaState

MAGIC = b"SJv2"
LEGACY = "legacy"
"""The name `key_usage` gives to blobs in the pre-v2 format."""
HASH_ENTRY = "hash"
_KEY_BYTES = 32
_NONCE = 12
_KID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_UNFINISHED = frozenset({SagaState.RUNNING, SagaState.COMPENSATING, SagaState.DEAD_LETTERED})
FINGERPRINT_PURPOSE = "payload_hash"
"""What the journal's key_fingerprints row of the hash key is named."""


class KeyFileError(Exception):
    """A key file is missing, malformed, too widely readable, or lacks a key the journal needs. The message names the
    file and never holds key material; a shard start that raises it exits with status 2."""


class SealError(ValueError):
    """A sealed blob was tampered with, belongs to another saga, or was sealed under a key this shard does not hold."""


@dataclass(frozen=True)
class KeyRing:
    path: str
    hash_key: bytes = field(repr=False)
    seal_keys: tuple[tuple[str, bytes], ...] = field(repr=False)
    """Oldest first; the last one seals."""

    @property
    def newest(self) -> str:
        return self.seal_keys[-1][0]

    def key(self, kid: str) -> bytes | None:
        return next((k for name, k in self.seal_keys if name == kid), None)


def read_key_file(path: str) -> KeyRing:
    """Parses a key file, refusing one that others may read or the group may change (stat follows a Kubernetes Secret's
    symlink). Group read is allowed: Kubernetes hands a Secret to a non-root container only through its fsGroup (0440);
    the group is then the pod's own."""
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"key file {path} cannot be read: {type(e).__name__}") from None
    if mode & 0o037:
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(mode):04o}: others must not read it, nor the group change it "
            f"(chmod 600 {path}; in Kubernetes, defaultMode: 0440 with the pod's fsGroup)"
        )
    hash_key: bytes | None = None
    seal_keys: list[tuple[str, bytes]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _KID.fullmatch(name):
            raise KeyFileError(
                f"key file {path} line {n}: expected <name>=<base64 key>, name of [A-Za-z0-9_.-]{{1,32}}"
            )
        try:
            key = base64.b64decode(value.strip(), validate=True)
        except binascii.Error:
            key = b""
        if len(key) != _KEY_BYTES:
            raise KeyFileError(f"key file {path} line {n}: {name} is not the base64 of {_KEY_BYTES} bytes")
        if name == HASH_ENTRY:
            if hash_key is not None:
                raise KeyFileError(f"key file {path} line {n}: a second {HASH_ENTRY} entry")
            hash_key = key
        elif any(name == kid for kid, _ in seal_keys):
            raise KeyFileError(f"key file {path} line {n}: key id {name} appears twice")
        else:
            seal_keys.append((name, key))
    if hash_key is None or not seal_keys:
        raise KeyFileError(f"key file {path} needs a {HASH_ENTRY}= entry and at least one sealing key")
    return KeyRing(path, hash_key, tuple(seal_keys))


def write_key_file(ring: KeyRing) -> None:
    """Writes the ring atomically (temporary file, fsync, rename), mode 0600."""
    lines = [
        "# Saga journal keys (coordinator/security/sealing.py). Mode 0600; back this file up apart from the journal:",
        "# without it the payment details of unfinished sagas are lost.",
        f"# {HASH_ENTRY}= keys the payload hash and never changes; the other lines seal: the last one seals new blobs,",
        "# every one opens. `python -m coordinator keys rotate` appends a key.",
        f"{HASH_ENTRY}={base64.b64encode(ring.hash_key).decode()}",
        *(f"{kid}={base64.b64encode(key).decode()}" for kid, key in ring.seal_keys),
    ]
    path = Path(ring.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover temporary file
        os.write(fd, ("\n".join(lines) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def new_key_ring(path: str, hash_key: bytes | None = None) -> KeyRing:
    return KeyRing(path, hash_key or secrets.token_bytes(_KEY_BYTES), (("k1", secrets.token_bytes(_KEY_BYTES)),))


def legacy_hash_key(secret: bytes) -> bytes:
    """The payload-hash key of builds before key files, derived from their one secret."""
    return _LegacyOpener(secret).hash_key


def rotate_key_file(path: str) -> KeyRing:
    """Appends a new sealing key (k<n+1>) to the file; it seals from the next start of each shard."""
    ring = read_key_file(path)
    numbers = [int(kid[1:]) for kid, _ in ring.seal_keys if re.fullmatch(r"k\d+", kid)]
    kid = f"k{max(numbers, default=0) + 1}"
    ring = KeyRing(path, ring.hash_key, (*ring.seal_keys, (kid, secrets.token_bytes(_KEY_BYTES))))
    write_key_file(ring)
    return ring


class _LegacyOpener:
    """Opens blobs of the pre-v2 format: an HMAC-SHA256 keystream under a 16-byte nonce, then HMAC-SHA256 over nonce
    and ciphertext, both keys derived from one secret. Kept only to read old journals; nothing seals this way."""

    _NONCE = 16
    _TAG = 32

    def __init__(self, secret: bytes) -> None:
        self._enc_key = hmac.new(secret, b"saga-journal-enc", hashlib.sha256).digest()
        self._mac_key = hmac.new(secret, b"saga-journal-mac", hashlib.sha256).digest()
        self.hash_key = hmac.new(secret, b"saga-payload-hash", hashlib.sha256).digest()

    def open(self, blob: bytes) -> bytes:
        if len(blob) < self._NONCE + self._TAG:
            raise SealError("sealed blob too short")
        nonce, ct, tag = blob[: self._NONCE], blob[self._NONCE : -self._TAG], blob[-self._TAG :]
        if not hmac.compare_digest(tag, hmac.new(self._mac_key, nonce + ct, hashlib.sha256).digest()):
            raise SealError("sealed blob failed authentication (wrong key or tampered)")
        stream = b"".join(
            hmac.new(self._enc_key, nonce + i.to_bytes(8, "big"), hashlib.sha256).digest()
            for i in range((len(ct) + 31) // 32)
        )
        return bytes(a ^ b for a, b in zip(ct, stream[: len(ct)], strict=True))


def blob_kid(blob: bytes) -> str | None:
    """The key id a v2 blob names, or None for a blob in the pre-v2 format."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 1:
        return None
    n = blob[len(MAGIC)]
    kid = blob[len(MAGIC) + 1 : len(MAGIC) + 1 + n]
    if len(kid) != n or not _KID.fullmatch(kid.decode("ascii", "replace")):
        return None
    return kid.decode("ascii")


@dataclass
class Sealer:
    """Seals under the ring's newest key, opens under any key of the ring (re-reading the key file when a blob names a
    key it does not hold: `keys reseal` may have used a key added after this shard started)."""

    ring: KeyRing
    legacy_secret: bytes | None = field(default=None, repr=False)
    _legacy: _LegacyOpener | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.legacy_secret is not None:
            self._legacy = _LegacyOpener(self.legacy_secret)

    def seal(self, saga_id: str, plaintext: bytes) -> bytes:
        kid, key = self.ring.seal_keys[-1]
        header = MAGIC + bytes([len(kid)]) + kid.encode("ascii")
        nonce = secrets.token_bytes(_NONCE)
        return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header + saga_id.encode())

    def open(self, saga_id: str, blob: bytes) -> bytes:
        kid = blob_kid(blob)
        if kid is None:
            if self._legacy is None:
                raise SealError("blob is in the pre-v2 format and no legacy secret is configured")
            return self._legacy.open(blob)
        key = self.ring.key(kid) or self._reload_for(kid)
        header_len = len(MAGIC) + 1 + len(kid)
        header, nonce, ct = blob[:header_len], blob[header_len : header_len + _NONCE], blob[header_len + _NONCE :]
        try:
            return AESGCM(key).decrypt(nonce, ct, header + saga_id.encode())
        except (InvalidTag, ValueError):
            if self._legacy is not None:  # a pre-v2 blob whose random nonce happens to start like a v2 header
                try:
                    return self._legacy.open(blob)
                except SealError:
                    pass
            raise SealError(
                f"sealed blob failed authentication under key {kid} (tampered, or another saga's)"
            ) from None

    def _reload_for(self, kid: str) -> bytes:
        try:
            ring = read_key_file(self.ring.path)
        except KeyFileError as e:
            raise SealError(
                f"blob sealed under key {kid}, not in this shard's ring; re-reading it failed: {e}"
            ) from None
        if ring.hash_key != self.ring.hash_key:
            raise SealError(f"key file {ring.path} now holds another {HASH_ENTRY} key; restart the shard to see why")
        key = ring.key(kid)
        if key is None:
            raise SealError(f"blob sealed under key {kid}, which key file {ring.path} does not hold")
        self.ring = ring  # its newest key seals from now on, as it would after a restart
        logger.info("key file {} re-read: it holds key {} (newest {})", ring.path, kid, ring.newest)
        return key

    def needs_reseal(self, blob: bytes) -> bool:
        return blob_kid(blob) != self.ring.newest

    def payload_hash(self, data: bytes) -> str:
        return hmac.new(self.ring.hash_key, data, hashlib.sha256).hexdigest()

    def saga_id(self, order_id: str, payload_hash: str) -> str:
        """The saga id of an order: a keyed hash of the order id and its payload hash, so the same request always gets
        the same id, and so the same idempotency keys (<saga_id>/<step>/<action>), even after the journal that held
        its saga was lost: the services then answer with what they already did instead of doing it again. The hash
        key never rotates (rotation adds sealing keys only), so neither does an order's saga id; without the key, an
        id says nothing about the order or its payment."""
        data = b"saga-id\0" + order_id.encode() + b"\0" + payload_hash.encode()
        return hmac.new(self.ring.hash_key, data, hashlib.sha256).hexdigest()[:32]

    def hash_key_fingerprint(self) -> str:
        return hmac.new(self.ring.hash_key, b"saga-journal hash-key fingerprint", hashlib.sha256).hexdigest()[:32]


# ---- a shard's keys, checked against its journal ---------------------------------------------------------------------


def check_key_file(path: str, ring: KeyRing, journal_path: str, stored: str | None) -> None:
    """Raises KeyFileError, naming both files, if the journal holds the fingerprint of another hash key than the key
    file's (stored: the journal's fingerprint, None if it holds none yet). Each shard has a hash key of its own, so
    another shard's key file, or a fresh one, is refused: its saga ids, so its idempotency keys, would differ from the
    ones the services already saw, and the journal's sealed payment details would not open."""
    mine = Sealer(ring).hash_key_fingerprint()
    if stored is None or stored == mine:
        return
    raise KeyFileError(
        f"key file {path} holds another {HASH_ENTRY} key than journal {journal_path} was written with (fingerprints "
        f"{mine} and {stored}): another shard's key file, or a new one in place of this journal's own? With it, "
        "retried orders would get other saga ids, so other idempotency keys (the services would apply them again), "
        "and payment details sealed in the journal would not open. Put this journal's own key file in its place (from "
        "its backup; `python -m coordinator keys status` prints a key file's fingerprint beside the journal's), then "
        "start again"
    )


def key_file_path(cfg: ShardConfig) -> str:
    return cfg.journal_key_file or cfg.journal_path + ".keys"


def legacy_secret(cfg: ShardConfig) -> bytes | None:
    """The pre-v2 secret: SAGA_JOURNAL_KEY / journal_key, else the `<journal>.key` older builds created."""
    if cfg.journal_key:
        return cfg.journal_key.encode()
    path = cfg.journal_path + ".key"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    if mode & 0o077:
        raise KeyFileError(f"legacy key file {path} has mode {stat.S_IMODE(mode):04o}: chmod 600 {path}")
    return Path(path).read_bytes()


@dataclass(frozen=True)
class KeyUsage:
    """How many sagas hold a blob under each key id (LEGACY: the pre-v2 format), all and unfinished ones."""

    all: Counter[str]
    unfinished: Counter[str]


async def key_usage(journal: Journal, page: int = 500) -> KeyUsage:
    usage = KeyUsage(Counter(), Counter())
    after = ""
    while rows := await journal.sealed_page(after, page):
        for _, state, blob in rows:
            kid = blob_kid(blob) or LEGACY
            usage.all[kid] += 1
            if state in _UNFINISHED:
                usage.unfinished[kid] += 1
        after = rows[-1][0]
    return usage


async def reseal(journal: Journal, sealer: Sealer, page: int = 200) -> int:
    """Re-seals, under the newest key, every blob sealed under another key or in the pre-v2 format, in every state
    (finished sagas too, so that no row of the journal needs a retired key); returns how many it re-sealed.

    Safe beside a running shard on the same journal: each page is its own short transaction on its own connection,
    a blob is swapped only if the row still holds the blob that was read, and a shard that later meets a blob under
    a key it did not load at start re-reads its key file."""
    done = 0
    after = ""
    while rows := await journal.sealed_page(after, page):
        swaps = [
            (sid, blob, sealer.seal(sid, sealer.open(sid, blob))) for sid, _, blob in rows if sealer.needs_reseal(blob)
        ]
        done += await journal.replace_sealed(swaps)
        after = rows[-1][0]
    return done


async def open_sealer(cfg: ShardConfig, journal: Journal) -> Sealer:
    """A shard's sealer, checked against its (open) journal before any saga resumes: raises KeyFileError, naming the
    file, if the key file is missing while the journal holds sealed blobs, too widely readable, malformed, holds
    another hash key than the journal was written with, or lacks a key an unfinished saga needs. Creates the default
    key file (mode 0600) for a new journal, or when migrating one written before key rings (keeping its hash key),
    and re-seals pre-v2 blobs."""
    path = key_file_path(cfg)
    legacy = legacy_secret(cfg)
    # Counted in SQLite and read for unfinished sagas only: start-up must not grow with the finished sagas a journal
    # keeps (a full scan of their blobs took 1.2 s at 200,000 sagas). `keys status` reports every key's use.
    total, legacy_blobs = await journal.sealed_counts(MAGIC)
    unfinished: Counter[str] = Counter(
        blob_kid(blob) or LEGACY for _, _, blob in await journal.sealed_of_states(sorted(_UNFINISHED))
    )
    stored = await journal.stored_key_fingerprint(FINGERPRINT_PURPOSE)
    if Path(path).exists():  # noqa: ASYNC240 - one stat at start-up, before anything is served
        ring = read_key_file(path)
    elif cfg.journal_key_file:
        raise KeyFileError(f"key file {path} does not exist (it is configured, so it is not created: check the path)")
    elif total > legacy_blobs or (total and legacy is None):
        raise KeyFileError(
            f"key file {path} does not exist, and journal {cfg.journal_path} holds {total} sealed payment blobs: "
            "restore the key file from its backup (deploy/README.md, 'Keys and data at rest')"
        )
    else:
        ring = new_key_ring(path, legacy_hash_key(legacy) if legacy is not None else None)
        if stored is not None and stored != Sealer(ring).hash_key_fingerprint():
            # A journal a key file has opened before (a restored one, say), even with no sealed blob left: a new key
            # would give every retried order another saga id, so other idempotency keys (a second charge).
            raise KeyFileError(
                f"key file {path} does not exist, and journal {cfg.journal_path} was written with one (it holds the "
                f"fingerprint {stored} of its {HASH_ENTRY} key): restore the key file from its backup "
                "(deploy/README.md, 'Keys and data at rest'); a new one would give retried orders new saga ids and "
                "idempotency keys"
            )
        write_key_file(ring)
        logger.warning("created key file {} (mode 0600): back it up apart from the journal", path)
    sealer = Sealer(ring, legacy)
    if legacy_blobs and legacy is not None and ring.hash_key != legacy_hash_key(legacy):
        raise KeyFileError(
            f"key file {path} holds another {HASH_ENTRY} key than the one derived from the legacy secret that sealed "
            f"journal {cfg.journal_path}: create it with `python -m coordinator keys init` next to that secret"
        )
    check_key_file(path, ring, cfg.journal_path, stored)
    fingerprint = sealer.hash_key_fingerprint()
    # Records it if the journal holds none yet (a new journal); another process may have recorded one meanwhile.
    check_key_file(path, ring, cfg.journal_path, await journal.key_fingerprint(FINGERPRINT_PURPOSE, fingerprint))
    missing = sorted(kid for kid in unfinished if kid != LEGACY and ring.key(kid) is None)
    if missing:
        raise KeyFileError(
            f"key file {path} lacks key(s) {', '.join(missing)}, under which unfinished sagas in {cfg.journal_path} "
            "were sealed: restore them from the key file's backup"
        )
    if unfinished[LEGACY] and legacy is None:
        raise KeyFileError(
            f"journal {cfg.journal_path} holds {unfinished[LEGACY]} unfinished sagas sealed in the pre-v2 "
            f"format, and neither SAGA_JOURNAL_KEY nor {cfg.journal_path}.key holds their secret"
        )
    if legacy_blobs and legacy is not None:
        n = await reseal(journal, sealer)
        logger.info("re-sealed {} payment blobs (pre-v2 format) under key {}", n, ring.newest)
    return sealer
