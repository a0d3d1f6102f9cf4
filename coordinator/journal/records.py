"""What the journal takes (records a writer submits) and gives back (rows, statistics), as plain values."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.saga.errors import JournalUnavailable
from coordinator.saga.model import SagaState
from coordinator.saga.record import Event, SagaRecord


@dataclass(frozen=True, slots=True)
class NewSaga:
    saga: SagaRecord


@dataclass(frozen=True, slots=True)
class StateChange:
    """A guarded row update: applies only if the saga is in `expected` (built by transitions.records_for)."""

    saga_id: str
    expected: SagaState
    new: SagaState
    last_error: str
    parked_note: str
    at_epoch_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetterOpen:
    saga_id: str
    order_id: str
    step: int
    last_error: str
    attempts: int
    at_epoch_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetterClose:
    saga_id: str
    note: str
    at_epoch_ms: int


Record = NewSaga | Event | StateChange | DeadLetterOpen | DeadLetterClose


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    id: int
    saga_id: str
    order_id: str
    step: int
    last_error: str
    attempts: int
    parked_at_epoch_ms: int
    closed_at_epoch_ms: int | None
    closed_note: str
    definition_hash: str = ""
    """The definition of its saga ('' once retention removed the saga's row)."""


@dataclass(frozen=True, slots=True)
class DedupRecord:
    """What stays of a removed saga: enough to answer a PlaceOrder retry and to say the order exists."""

    order_id: str
    payload_hash: str
    state: SagaState
    message: str
    saga_id: str
    created_at_epoch_ms: int
    finished_at_epoch_ms: int
    definition_hash: str = ""

    def as_saga(self) -> SagaRecord:
        """The minimal saga view: outcome, saga id and message; no request, steps or events (they were removed)."""
        return SagaRecord(
            saga_id=self.saga_id,
            order_id=self.order_id,
            user_id="",
            request=b"",
            payment_sealed=b"",
            payload_hash=self.payload_hash,
            state=self.state,
            created_at_epoch_ms=self.created_at_epoch_ms,
            updated_at_epoch_ms=self.finished_at_epoch_ms,
            deadline_epoch_ms=self.finished_at_epoch_ms,
            last_error=self.message,
            steps={},
            definition_hash=self.definition_hash,
            retained_only=True,
        )


@dataclass(frozen=True, slots=True)
class ArchivedSaga:
    """A finished saga as retention reads it before removing it (the sealed payment blob is left out)."""

    saga: SagaRecord
    events: list[Event]
    dead_letters: list[DeadLetterRow]


@dataclass(frozen=True, slots=True)
class Checkpointed:
    """PRAGMA wal_checkpoint's answer: busy (a reader kept it from finishing), WAL frames, frames copied back."""

    busy: bool
    wal_frames: int
    checkpointed_frames: int


@dataclass(frozen=True, slots=True)
class FileStats:
    file_bytes: int
    wal_bytes: int
    free_pages: int
    page_size: int
    rows: dict[str, int]
    oldest_epoch_ms: dict[str, int]
    """Per table, the time of its oldest row (created, parked, finished); absent when the table is empty."""


@dataclass(slots=True)
class JournalStats:
    commits: int = 0
    records: int = 0
    failed_commits: int = 0
    upkeep_jobs: int = 0
    last_upkeep_s: float = 0.0
    longest_upkeep_s: float = 0.0
    """The longest the writer spent on one upkeep job (a retention batch, a checkpoint, a vacuum step): the longest
    any saga commit waited behind upkeep."""


class TransitionConflict(JournalUnavailable):
    """A guarded state change found the saga in another state than expected: a bug, surfaced loudly."""
