"""The Loyalty service: awards points to users for orders and revokes them."""

from __future__ import annotations

import grpc

from protos.shop.v1 import common_pb2, loyalty_pb2
from service_stubs.errors import InvalidArgument
from service_stubs.faults import FaultInjector
from service_stubs.idempotency import Decision, ShopService
from service_stubs.keys import Answer, KeyRecord, derived_id
from service_stubs.lro_rules import LroRules, field_rules
from service_stubs.operations import OperationSettings
from service_stubs.stats import CallStats
from service_stubs.store import Loaded, Store
from service_stubs.validation import require_id

BANNED_PREFIX = "banned-"
"""Test fixture: users whose id starts with this may not collect points (FAILED_PRECONDITION)."""
MAX_POINTS = 10**12
"""Bound on the points of one award (shop.v1 AwardPointsRequest.points)."""
MAX_BALANCE = 2**63 - 1
"""A balance is an int64 on the wire: an award that would pass it is refused rather than fail to serialize."""


class LoyaltyService(ShopService[loyalty_pb2.AwardPointsRequest]):
    """Balances are derived from the key records (applied awards not revoked), never stored apart from them, so they
    cannot disagree with what was applied; a revoke takes back exactly its award's points, so none goes negative."""

    name = "loyalty"
    grpc_service = "shop.v1.LoyaltyService"
    forward_method = "AwardPoints"
    compensation_method = "RevokePoints"
    forward_request = loyalty_pb2.AwardPointsRequest
    forward_response = loyalty_pb2.AwardPointsResponse

    def __init__(
        self,
        store: Store,
        loaded: Loaded,
        faults: FaultInjector,
        stats: CallStats,
        operations: OperationSettings | None = None,
    ) -> None:
        self._balances: dict[str, int] = {}
        """Points per user id; users at zero are omitted."""
        super().__init__(store, loaded, faults, stats, operations)

    async def AwardPoints(
        self, request: loyalty_pb2.AwardPointsRequest, context: grpc.aio.ServicerContext
    ) -> loyalty_pb2.AwardPointsResponse:
        return await self.forward(request, request.order_id, context, loyalty_pb2.AwardPointsResponse)

    async def RevokePoints(
        self, request: common_pb2.CompensationRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompensationResponse:
        return await self.compensate(request, context)

    def restore(self, loaded: Loaded) -> None:
        for record in self.keys:
            if record.method == self.forward_method and record.applied and record.undone_by is None:
                self._adjust(record, +1)

    def balance(self, user_id: str) -> int:
        """Points `user_id` holds now."""
        return self._balances.get(user_id, 0)

    def validate(self, request: loyalty_pb2.AwardPointsRequest) -> None:
        require_id(request.order_id, "order_id")
        require_id(request.user_id, "user_id")
        if not 1 <= request.points <= MAX_POINTS:
            raise InvalidArgument("points", f"must be between 1 and {MAX_POINTS}, got {request.points}")

    def lro_rules(self, request: loyalty_pb2.AwardPointsRequest) -> LroRules:
        return field_rules("user_id", request.user_id, "award", "revoke")

    def apply(self, key: str, request: loyalty_pb2.AwardPointsRequest) -> Decision:
        user_id = request.user_id
        if user_id.startswith(BANNED_PREFIX):
            message = f"user {user_id} may not collect loyalty points"
            return Decision(Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message))
        balance = self.balance(user_id) + request.points
        if balance > MAX_BALANCE:
            message = f"user {user_id} would hold more than {MAX_BALANCE} points"
            return Decision(Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message))
        self._balances[user_id] = balance
        response = loyalty_pb2.AwardPointsResponse(award_id=derived_id("pts", key), balance=balance)
        return Decision(Answer.success(response), effect={user_id: request.points})

    def undo(self, record: KeyRecord) -> list[tuple[str, int]]:
        self._adjust(record, -1)
        return []

    def _adjust(self, record: KeyRecord, sign: int) -> None:
        for user_id, points in record.effect.items():
            balance = self.balance(user_id) + sign * points
            assert balance >= 0, f"balance of {user_id} would go negative"
            if balance:
                self._balances[user_id] = balance
            else:
                self._balances.pop(user_id, None)
