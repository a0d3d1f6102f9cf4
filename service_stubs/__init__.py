"""Development stubs of the saga's downstream services: Order, Inventory, Payment and Shipping, and of Loyalty, over
gRPC, with durable state, the idempotency-key and tombstone contracts, business rejections and seeded fault injection
(StubControl).

    server = await service_stubs.start(data_dir=tmp_path)      # in-process, port picked for you
    ... server.address ...
    await server.stop()

`python -m service_stubs --help` runs them as a process.
"""

from common.metadata import IDEMPOTENCY_KEY
from service_stubs.config import ALL_SERVICES, SHOP_SERVICES, StubConfig, default_data_dir
from service_stubs.errors import TOMBSTONED_MESSAGE
from service_stubs.faults import FaultPlan, FaultRule
from service_stubs.inventory import SOLD_OUT_PREFIX
from service_stubs.loyalty import BANNED_PREFIX, MAX_POINTS
from service_stubs.payment import DECLINED_MESSAGE, TOKEN_DECLINED, TOKEN_HANG, TOKEN_SLOW
from service_stubs.server import StubServer, serve, start
from service_stubs.shipping import UNSHIPPABLE_PREFIX

__all__ = [
    "ALL_SERVICES",
    "BANNED_PREFIX",
    "DECLINED_MESSAGE",
    "IDEMPOTENCY_KEY",
    "MAX_POINTS",
    "SHOP_SERVICES",
    "SOLD_OUT_PREFIX",
    "TOKEN_DECLINED",
    "TOKEN_HANG",
    "TOKEN_SLOW",
    "TOMBSTONED_MESSAGE",
    "UNSHIPPABLE_PREFIX",
    "FaultPlan",
    "FaultRule",
    "StubConfig",
    "StubServer",
    "default_data_dir",
    "serve",
    "start",
]
