"""The measured items, in table order: one module per item.

P1 throughput and CPU per token, P2 direct-client CPU per token, P3 latency,
P4 startup, P5 SIGTERM → exit, P6 idle and loaded RSS, P7 capacity, P8
checksums. :data:`ITEMS` is what the runner (``bench/run.py``) iterates.
"""

from __future__ import annotations

from bench.item import Item
from bench.items.p1_throughput import Throughput
from bench.items.p2_direct import Direct
from bench.items.p3_latency import Latency
from bench.items.p4_startup import Startup
from bench.items.p5_sigterm import Sigterm
from bench.items.p6_memory import Memory
from bench.items.p7_capacity import Capacity
from bench.items.p8_checksum import Checksum

ITEMS: tuple[Item, ...] = (
    Throughput(),
    Direct(),
    Latency(),
    Startup(),
    Sigterm(),
    Memory(),
    Capacity(),
    Checksum(),
)
NAMES: tuple[str, ...] = tuple(i.name for i in ITEMS)
