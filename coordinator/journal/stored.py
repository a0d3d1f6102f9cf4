"""What the journal keeps besides sagas: the sealed payment blobs' bookkeeping (coordinator/security/sealing.py decides
what they hold), the key fingerprints, and the ring history routers showed this shard with the mark a restore leaves
(coordinator/ring/ownership.py decides what they mean)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from coordinator.journal.writer import JournalWriter
from coordinator.saga.model import SagaState


class JournalStore(JournalWriter):
    async def sealed_page(self, after_saga_id: str, limit: int) -> list[tuple[str, SagaState, bytes]]:
        """(saga_id, state, payment_sealed) of every saga, by saga_id, `limit` at a time after `after_saga_id`."""
        async with self._reader.execute(
            "SELECT saga_id, state, payment_sealed FROM sagas WHERE saga_id > ? ORDER BY saga_id LIMIT ?",
            (after_saga_id, limit),
        ) as cur:
            return [(str(r[0]), SagaState(int(r[1])), bytes(r[2])) for r in await cur.fetchall()]

    async def sealed_of_states(self, states: Sequence[SagaState]) -> list[tuple[str, SagaState, bytes]]:
        """(saga_id, state, payment_sealed) of the sagas in `states` (through the state index: unfinished sagas are
        few, however many finished ones the journal holds)."""
        marks = ",".join("?" * len(states))
        async with self._reader.execute(
            f"SELECT saga_id, state, payment_sealed FROM sagas WHERE state IN ({marks})", tuple(int(s) for s in states)
        ) as cur:
            return [(str(r[0]), SagaState(int(r[1])), bytes(r[2])) for r in await cur.fetchall()]

    async def sealed_counts(self, header: bytes) -> tuple[int, int]:
        """(sealed blobs, those not starting with `header`): counted inside SQLite, no blob crosses into Python."""
        async with self._reader.execute(
            "SELECT count(*), coalesce(sum(substr(payment_sealed, 1, ?) != ?), 0) FROM sagas "
            "WHERE length(payment_sealed) > 0",
            (len(header), header),
        ) as cur:
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def replace_sealed(self, rows: Sequence[tuple[str, bytes, bytes]]) -> int:
        """Swaps (saga_id, old blob, new blob) where the saga still holds the old blob; returns how many swapped.

        Its own short transaction on its own connection: it never interleaves with the writer task's batches, and is
        safe beside a shard process writing the same file (SQLite serialises writers; the old blob is the guard)."""
        if not rows:
            return 0
        async with aiosqlite.connect(self.path, isolation_level=None) as db:
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("BEGIN IMMEDIATE")
            try:
                swapped = 0
                for saga_id, old, new in rows:
                    cur = await db.execute(
                        "UPDATE sagas SET payment_sealed = ? WHERE saga_id = ? AND payment_sealed = ?",
                        (new, saga_id, old),
                    )
                    swapped += cur.rowcount
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return swapped

    async def key_fingerprint(self, purpose: str, fingerprint: str) -> str:
        """The fingerprint the journal holds for `purpose`, recording `fingerprint` first if it holds none."""
        async with aiosqlite.connect(self.path, isolation_level=None) as db:
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute(
                "INSERT INTO key_fingerprints (purpose, fingerprint) VALUES (?, ?) ON CONFLICT (purpose) DO NOTHING",
                (purpose, fingerprint),
            )
            async with db.execute("SELECT fingerprint FROM key_fingerprints WHERE purpose = ?", (purpose,)) as cur:
                row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    async def stored_key_fingerprint(self, purpose: str) -> str | None:
        """The fingerprint the journal holds for `purpose`, or None (a journal no key file has opened yet)."""
        sql = "SELECT fingerprint FROM key_fingerprints WHERE purpose = ?"
        async with self._reader.execute(sql, (purpose,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def ring_history(self) -> str | None:
        """The ring history (JSON) save_ring_history last stored, or None."""
        async with self._reader.execute("SELECT history FROM ring_history WHERE id = 1") as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def save_ring_history(self, epoch: int, history: str, caught_up: bool = False) -> None:
        """Replaces the stored ring history; durable (one fsynced commit) when this returns. caught_up: in the same
        commit, clear the mark a restore left (mark_restored)."""

        async def run(db: aiosqlite.Connection) -> None:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(
                    "INSERT INTO ring_history (id, epoch, history) VALUES (1, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, history = excluded.history",
                    (epoch, history),
                )
                if caught_up:
                    await db.execute("DELETE FROM ring_catch_up")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

        await self.run_alone("ring", run)

    async def mark_restored(self, now_epoch_ms: int) -> None:
        """Records that this journal was rebuilt from a replica: its ring history may be older than the one the shard
        had acknowledged (coordinator.ring.ownership catches up before it creates a saga)."""

        async def run(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO ring_catch_up (id, restored_at_epoch_ms) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET restored_at_epoch_ms = excluded.restored_at_epoch_ms",
                (now_epoch_ms,),
            )

        await self.run_alone("ring", run)

    async def restored_at(self) -> int | None:
        """When mark_restored marked the journal (wall-clock epoch ms), or None if it holds no such mark."""
        async with self._reader.execute("SELECT restored_at_epoch_ms FROM ring_catch_up WHERE id = 1") as cur:
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    # ---- saga definitions (common.definitions; the shard's DefinitionBook decides what they mean) -----------------

    async def stored_definitions(self) -> list[StoredDefinition]:
        """Every definition this journal accepted, oldest first."""
        async with self._reader.execute(
            "SELECT hash, name, version, document, accepted_at_epoch_ms FROM definitions ORDER BY accepted_at_epoch_ms"
        ) as cur:
            return [
                StoredDefinition(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4])) for r in await cur.fetchall()
            ]

    async def definition_aliases(self) -> dict[str, tuple[str, int]]:
        """Alias name -> (definition hash, version of the definitions history that set it)."""
        async with self._reader.execute("SELECT name, hash, history_version FROM definition_aliases") as cur:
            return {str(r[0]): (str(r[1]), int(r[2])) for r in await cur.fetchall()}

    async def save_definitions(
        self,
        definitions: Sequence[StoredDefinition],
        aliases: dict[str, tuple[str, int]],
        now_epoch_ms: int,
        adopt_unnamed: str = "",
    ) -> None:
        """Stores definitions (a hash already stored is kept as it is: a version never changes) and sets the aliases,
        in one durable commit. adopt_unnamed: the hash that sagas journaled before definitions existed run (their
        '' becomes it), in the same commit."""

        async def run(db: aiosqlite.Connection) -> None:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.executemany(
                    "INSERT OR IGNORE INTO definitions (hash, name, version, document, accepted_at_epoch_ms) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (d.hash, d.name, d.version, d.document, d.accepted_at_epoch_ms or now_epoch_ms)
                        for d in definitions
                    ],
                )
                await db.executemany(
                    "INSERT INTO definition_aliases (name, hash, history_version, set_at_epoch_ms) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET hash = excluded.hash,"
                    " history_version = excluded.history_version, set_at_epoch_ms = excluded.set_at_epoch_ms",
                    [(name, h, v, now_epoch_ms) for name, (h, v) in aliases.items()],
                )
                if adopt_unnamed:
                    await db.execute(
                        "UPDATE sagas SET definition_hash = ? WHERE definition_hash = ''", (adopt_unnamed,)
                    )
                    await db.execute(
                        "UPDATE order_dedup SET definition_hash = ? WHERE definition_hash = ''", (adopt_unnamed,)
                    )
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

        await self.run_alone("definitions", run)

    async def forget_definitions(self, hashes: Sequence[str]) -> None:
        """Removes stored definitions (the caller checked that no saga and no alias needs them)."""

        async def run(db: aiosqlite.Connection) -> None:
            await db.executemany("DELETE FROM definitions WHERE hash = ?", [(h,) for h in hashes])
            await db.commit()

        await self.run_alone("definitions", run)

    async def definition_users(self, definition_hash: str, limit: int = 5) -> tuple[int, list[str]]:
        """How many sagas still need this definition (unfinished, dead-lettered, or finished and retained, including
        what retention kept of them), and the keys of up to `limit` of them."""
        sql = (
            "SELECT order_id FROM sagas WHERE definition_hash = ? UNION ALL "
            "SELECT order_id FROM order_dedup WHERE definition_hash = ?"
        )
        async with self._reader.execute(f"SELECT count(*) FROM ({sql})", (definition_hash, definition_hash)) as cur:
            row = await cur.fetchone()
        async with self._reader.execute(f"{sql} LIMIT ?", (definition_hash, definition_hash, limit)) as cur:
            keys = [str(r[0]) for r in await cur.fetchall()]
        return (int(row[0]) if row else 0), keys


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    hash: str
    name: str
    version: str
    document: str
    """The normalised document, as JSON."""
    accepted_at_epoch_ms: int = 0
