"""The definitions a shard runs: every version it ever accepted, by hash (a saga runs the one it started on, for its
whole life), and the aliases that say which version new sagas of each type get.

All of it is in the journal (JournalStore.save_definitions), so a restored journal still holds the versions its sagas
need. At the first start on a journal the shipped order flow becomes the "order" alias's target, and every saga
journaled before definitions existed is given its hash (those sagas are the order flow's first version). A later
build that ships a changed order.yaml does not move the alias: versions change by `saga-router defs commit`, never by
a deploy of the coordinator.

Accepting a definition checks what only a shard can: every service it names has an address in [services], and its
policies laid over the shard's configuration are in range. Compiled once here; the engine reads the compiled form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace

import grpc
from loguru import logger

from common.definitions.check import from_document, order_flow
from common.definitions.model import Definition
from common.definitions.problems import DefinitionError
from coordinator.clock import Clock
from coordinator.config import ConfigError, ShardConfig
from coordinator.journal import Journal, StoredDefinition
from coordinator.saga.errors import SagaError
from coordinator.saga.inputs import ORDER_TYPE
from coordinator.saga.policies import Policies


class UnknownSagaType(SagaError):
    status = grpc.StatusCode.NOT_FOUND


class DefinitionRefused(SagaError):
    """A definition this shard cannot run (a service with no address, a policy out of range, a type it lacks)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True, slots=True)
class Offered:
    """A definition as the router's history holds it: its hash and normalised document."""

    hash: str
    document: dict[str, object]


class DefinitionBook:
    def __init__(self, cfg: ShardConfig, journal: Journal, clock: Clock, policies: Policies) -> None:
        self._cfg = cfg
        self._journal = journal
        self._clock = clock
        self._policies = policies
        self._by_hash: dict[str, Definition] = {}
        self._aliases: dict[str, tuple[str, int]] = {}

    # ---- reading ----------------------------------------------------------------------------------------------------

    def of(self, definition_hash: str) -> Definition:
        """The version a saga runs. KeyError if this shard does not hold it (a journal from elsewhere)."""
        return self._by_hash[definition_hash]

    def for_new(self, saga_type: str) -> Definition:
        """The version new sagas of `saga_type` start on: its alias's target."""
        alias = self._aliases.get(saga_type)
        if alias is None:
            known = ", ".join(sorted(self._aliases)) or "none"
            raise UnknownSagaType(f"no saga type {saga_type!r} is defined (defined: {known})")
        return self._by_hash[alias[0]]

    def aliases(self) -> dict[str, tuple[str, int]]:
        return dict(self._aliases)

    def definitions(self) -> list[Definition]:
        return list(self._by_hash.values())

    @property
    def history_version(self) -> int:
        """The newest definitions history version the aliases were set from (0: only the shipped order flow)."""
        return max((v for _, v in self._aliases.values()), default=0)

    # ---- loading and accepting --------------------------------------------------------------------------------------

    async def load(self) -> None:
        """Compiles every stored definition; on a journal with none, stores the shipped order flow as the "order"
        alias's target and gives it every saga journaled before."""
        for stored in await self._journal.stored_definitions():
            try:
                self._by_hash[stored.hash] = self._compile(stored.hash, json.loads(stored.document), stored.name)
            except (DefinitionError, DefinitionRefused) as e:
                # Its sagas cannot run here until the types or services it needs are back: loud, never silent.
                logger.error("stored definition {} ({}) cannot run on this shard: {}", stored.name, stored.hash, e)
        self._aliases = await self._journal.definition_aliases()
        if ORDER_TYPE not in self._aliases:
            # The first start on this journal since definitions exist (sagas before it are adopted in the same commit).
            shipped = order_flow()
            self.accept(shipped)
            self._by_hash[shipped.hash] = shipped
            aliases = {ORDER_TYPE: (shipped.hash, 0)}
            await self._journal.save_definitions(
                [_stored(shipped)], aliases, self._clock.now_epoch_ms(), adopt_unnamed=shipped.hash
            )
            self._aliases.update(aliases)
            logger.info("definition order {} ({}) is the order flow", shipped.version, shipped.hash)

    def accept(self, definition: Definition) -> None:
        """DefinitionRefused unless this shard can run it: every service has an address, every policy is in range."""
        missing = sorted({s.endpoint for s in definition.steps if self._cfg.services.address(s.endpoint) is None})
        if missing:
            raise DefinitionRefused(
                f"definition {definition.name} ({definition.hash}) names services with no address in this shard's"
                f" [services]: {', '.join(missing)}"
            )
        try:
            self._policies.check(definition)
        except ConfigError as e:
            raise DefinitionRefused(str(e)) from e

    def _compile(self, definition_hash: str, document: dict[str, object], source: str) -> Definition:
        definition = from_document(document, source)
        if definition.hash != definition_hash:
            # The message types it uses changed shape since it was accepted (fields added): it still runs by what it
            # says; its identity stays the hash its sagas hold.
            definition = replace(definition, hash=definition_hash)
        self.accept(definition)
        return definition

    async def usage(self) -> dict[str, tuple[int, list[str]]]:
        """Per held version: how many sagas still need it and some of their keys."""
        return {h: await self._journal.definition_users(h) for h in self._by_hash}

    async def install(
        self, offered: Iterable[Offered], aliases: dict[str, str], history_version: int, drop: Iterable[str] = ()
    ) -> None:
        """Stores the offered definitions (checked and accepted first: all or none) and points the aliases at them,
        durably; a history older than the one the aliases came from changes nothing. `drop`: versions to forget,
        refused while a saga or an alias needs one."""
        if history_version < self.history_version:
            return
        await self._drop(list(drop), aliases)
        compiled = []
        for o in offered:
            if o.hash in self._by_hash:
                continue
            definition = self._compile(o.hash, o.document, f"definition {o.hash}")
            compiled.append(definition)
        known = {d.hash for d in compiled} | set(self._by_hash)
        for name, target in aliases.items():
            if target not in known:
                raise DefinitionRefused(f"alias {name} points at {target}, which was not offered")
        await self._journal.save_definitions(
            [_stored(d) for d in compiled],
            {name: (target, history_version) for name, target in aliases.items()},
            self._clock.now_epoch_ms(),
        )
        for d in compiled:
            self._by_hash[d.hash] = d
        self._aliases.update({name: (target, history_version) for name, target in aliases.items()})

    async def _drop(self, hashes: list[str], aliases: dict[str, str]) -> None:
        if not hashes:
            return
        targets = {h for h, _ in self._aliases.values()} | set(aliases.values())
        for h in hashes:
            if h in targets:
                raise DefinitionRefused(f"definition {h} is the target of an alias: point the alias elsewhere first")
            count, keys = await self._journal.definition_users(h)
            if count:
                raise DefinitionRefused(
                    f"definition {h} is still needed by {count} saga(s) of shard {self._cfg.shard_id},"
                    f" e.g. {', '.join(keys)}: unfinished, dead-lettered or retained"
                )
        await self._journal.forget_definitions(hashes)
        for h in hashes:
            self._by_hash.pop(h, None)


def _stored(d: Definition) -> StoredDefinition:
    return StoredDefinition(d.hash, d.name, d.version, json.dumps(d.document, sort_keys=True))
