"""Canary (sends the health_check.py payload when idle) + stall detector; both set HealthStatus.

Active health checks: the canary probe (stock) and the stall detector
(dynamo_lite). The payload is built by :mod:`dynamo_lite.health_check`;
their verdicts go into :class:`dynamo_lite.system_server.HealthStatus`,
the status ``/health`` and ``/live`` serve.

Theory of operation
-------------------
Both run as services in the worker's task group, started by
:class:`HealthMonitor` once the endpoint is registered and stopped (cancelled
and awaited, bounded) when shutdown begins. Neither touches the request path: they wake on a
short tick and read counters the endpoint keeps anyway.

Canary — on when ``DYN_HEALTH_CHECK_ENABLED`` is true and a payload exists
(:func:`resolve_payload`: ``WorkerConfig.health_check_payload`` >
``DYN_HEALTH_CHECK_PAYLOAD`` > ``engine.health_check_payload()``, marked
``"_HEALTH_CHECK": true``). While it is on, the endpoint starts *not ready*.
Every tick it compares the endpoint's response-byte counter with the last
one it saw: a change means a real response chunk was streamed successfully,
which marks the endpoint ready and restarts the idle timer. After
``DYN_CANARY_WAIT_TIME`` seconds (default 10) without one, it sends the
payload through ``engine.generate()`` directly — filled in the way stock
deserialises a canary into a preprocessed request — and judges the *first*
item alone: a chunk → ready; an error item, a ``finish_reason`` error, an
exception, an empty stream or nothing within
``DYN_HEALTH_CHECK_REQUEST_TIMEOUT`` seconds (default 3) → not ready, which
turns ``/health`` and ``/live`` into 503. The rest of a good stream is
drained (bounded); a probe that timed out or failed is killed and its
generator closed, where stock leaves it hanging.

Stall detector — on when ``DYN_LITE_STALL_TIMEOUT_SECS`` is set to a
positive number (off by default, so probes behave exactly as stock's). Every
tick it reads, for each in-flight request, how many chunks its stream
validator has seen; a request whose count has not moved for the bound
(counting from when it was first seen, so one stuck before its first chunk
is caught too) vetoes the endpoint's readiness until every such request has
progressed or ended. Requests already cancelled, cut or past their terminal
chunk (waiting for the frontend to close) do not count.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .context import Context
from .envparse import parse_bool, parse_duration
from .errors import WireError, classify
from .health_check import parse_health_check_value, stamp_marker
from .stats import EndpointStats, RequestProgress
from .stream import StreamValidator
from .tasks import Service, start_service

if TYPE_CHECKING:
    import anyio.abc

    from .config import WorkerConfig
    from .engine import BaseEngine
    from .system_server import HealthStatus

logger = logging.getLogger(__name__)

__all__ = ["HealthMonitor", "HealthSettings", "probe_request", "resolve_payload"]

#: How long a finished probe's generator gets to close, and a stopped monitor to exit.
CLOSE_BOUND = 1.0
STALL_VETO = "stalled-requests"
MIN_WAIT = 0.1


@dataclass(frozen=True)
class HealthSettings:
    """The canary's and the stall detector's settings
    (``DYN_HEALTH_CHECK_*``, ``DYN_CANARY_WAIT_TIME``)."""

    enabled: bool = False
    wait: float = 10.0
    timeout: float = 3.0
    #: None: the stall detector is off.
    stall_timeout: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HealthSettings:
        stall = parse_duration(env, "DYN_LITE_STALL_TIMEOUT_SECS", None)
        return cls(
            enabled=parse_bool(env, "DYN_HEALTH_CHECK_ENABLED", False),
            # A zero wait would probe in a tight loop.
            wait=max(parse_duration(env, "DYN_CANARY_WAIT_TIME", 10.0), MIN_WAIT),
            timeout=parse_duration(env, "DYN_HEALTH_CHECK_REQUEST_TIMEOUT", 3.0),
            stall_timeout=stall if stall else None,
        )


async def resolve_payload(
    engine: BaseEngine, config: WorkerConfig, env_payload: str | None
) -> dict[str, Any] | None:
    """The canary payload, marked, or None (canary off).

    ``WorkerConfig.health_check_payload`` wins (a non-object there disables
    the canary); then ``DYN_HEALTH_CHECK_PAYLOAD`` (``env_payload``, its raw
    value; invalid or non-object: warned about and skipped); then
    ``engine.health_check_payload()``, called only when neither override is
    set (None, a non-object or an exception disable the canary).
    """
    override: Any = config.health_check_payload
    if override is not None:
        if isinstance(override, Mapping):
            return stamp_marker(override)
        logger.warning(
            "WorkerConfig.health_check_payload must be a JSON object (dict), not %s; "
            "canary disabled",
            type(override).__name__,
        )
        return None
    from_env = parse_health_check_value(env_payload)
    if from_env is not None:
        return stamp_marker(from_env)
    try:
        payload = await engine.health_check_payload()
    except Exception as exc:
        logger.warning(
            "engine.health_check_payload() failed; canary disabled for this endpoint error=%s",
            exc,
        )
        return None
    if payload is None:
        return None
    if not isinstance(payload, Mapping):
        logger.warning(
            "health_check_payload must return a JSON object (dict) or None, not %s; "
            "canary disabled",
            type(payload).__name__,
        )
        return None
    return stamp_marker(payload)


_STOP_KEYS = (
    "max_tokens", "stop", "stop_token_ids", "stop_token_ids_visible", "stop_token_ids_hidden",
    "min_tokens", "ignore_eos", "max_thinking_tokens",
)  # fmt: skip
_SAMPLING_KEYS = (
    "n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "temperature", "top_p", "min_p", "length_penalty", "top_k", "use_beam_search", "seed",
    "include_stop_str_in_output", "guided_decoding",
)  # fmt: skip
_OUTPUT_KEYS = (
    "logprobs", "prompt_logprobs", "skip_special_tokens", "formatted_prompt",
    "return_tokens_as_token_ids",
)  # fmt: skip


def probe_request(payload: Mapping[str, Any], *, raw: bool = False) -> dict[str, Any]:
    """What ``generate()`` receives for ``payload``: for token engines, a
    preprocessed request with the fields stock's deserialisation fills in."""
    request: dict[str, Any] = copy.deepcopy(dict(payload))
    if raw:
        return request
    for key, names in (
        ("stop_conditions", _STOP_KEYS),
        ("sampling_options", _SAMPLING_KEYS),
        ("output_options", _OUTPUT_KEYS),
    ):
        given = request.get(key)
        request[key] = {**dict.fromkeys(names), **(given if isinstance(given, dict) else {})}
    request.setdefault("model", "")
    request.setdefault("token_ids", [])
    request.setdefault("eos_token_ids", [])
    request.setdefault("mdc_sum", None)
    request.setdefault("annotations", [])
    request.setdefault("router_config_override", None)
    return request


class MonitoredEndpoint(Protocol):
    """What the monitor reads of the endpoint (the endpoint satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def raw(self) -> bool: ...
    @property
    def stats(self) -> EndpointStats: ...
    @property
    def requests(self) -> Mapping[str, RequestProgress]: ...


class HealthMonitor:
    """The canary and the stall detector for one endpoint; see the module docstring."""

    def __init__(
        self,
        engine: BaseEngine,
        endpoint: MonitoredEndpoint,
        health: HealthStatus,
        settings: HealthSettings,
        payload: Mapping[str, Any] | None,
    ) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self.health = health
        self.settings = settings
        self.payload = payload
        self.name = endpoint.name
        #: Probe verdicts so far (exported as ``dynamo_lite_health_check_probes_total``).
        self.probes = {"ok": 0, "error": 0, "empty": 0, "timeout": 0}
        #: In-flight requests currently considered stalled.
        self.stalled = 0
        self._services: list[Service] = []

    @property
    def canary_active(self) -> bool:
        return self.settings.enabled and self.payload is not None

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the canary and the stall detector (each if enabled) in ``tg``."""
        if self.canary_active:
            logger.info(
                "canary health check on for %s (idle %gs, timeout %gs)",
                self.name,
                self.settings.wait,
                self.settings.timeout,
            )
            self._services.append(await start_service(tg, self._canary, name="canary"))
        if self.settings.stall_timeout:
            self._services.append(
                await start_service(
                    tg, self._stalls, self.settings.stall_timeout, name="stall detector"
                )
            )

    async def stop(self) -> None:
        """Stop both loops (an in-flight probe is cancelled and its generator closed)."""
        services, self._services = self._services, []
        for service in services:
            await service.stop(CLOSE_BOUND * 2)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; True when the worker is shutting down."""
        await anyio.sleep(seconds)
        return self.health.shutting_down

    # --- canary ------------------------------------------------------------------
    async def _canary(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        stats = self.endpoint.stats
        wait = self.settings.wait
        tick = min(0.25, max(wait / 4, 0.01))
        seen = stats.response_bytes
        idle_since = time.monotonic()
        while not await self._sleep(tick):
            if stats.response_bytes != seen:
                seen = stats.response_bytes
                idle_since = time.monotonic()
                if self.health.endpoints.get(self.name) != "ready":
                    logger.info("%s served a request successfully; ready", self.name)
                    self.health.set_endpoint(self.name, True)
                continue
            if time.monotonic() - idle_since >= wait:
                await self.probe()
                # Only traffic after the verdict may overrule it.
                seen = stats.response_bytes
                idle_since = time.monotonic()

    async def probe(self) -> str:
        """Send one canary and apply its verdict: ``ok``, ``error``, ``empty`` or ``timeout``."""
        assert self.payload is not None
        verdict, detail = await self._first_item(probe_request(self.payload, raw=self.endpoint.raw))
        self.probes[verdict] += 1
        if verdict == "ok":
            logger.debug("Health check for %s passed", self.name)
        elif verdict == "timeout":
            logger.warning("Health check timeout for %s", self.name)
        elif verdict == "empty":
            logger.warning("Health check for %s returned no response", self.name)
        else:
            logger.warning("Health check error response from %s: %s", self.name, detail)
        if not self.health.shutting_down:
            self.health.set_endpoint(self.name, verdict == "ok")
        return verdict

    async def _first_item(self, request: dict[str, Any]) -> tuple[str, str]:
        import uuid

        ctx = Context(f"health-check-{uuid.uuid4()}")
        try:
            agen: AsyncGenerator[Any, None] = self.engine.generate(request, ctx)  # type: ignore[attr-defined]
        except Exception as exc:
            return "error", str(classify(exc).message)
        finished = False
        try:
            try:
                async with asyncio.timeout(self.settings.timeout):
                    first = await anext(agen)
            except TimeoutError:
                return "timeout", ""
            except StopAsyncIteration:
                finished = True
                return "empty", ""
            except Exception as exc:
                finished = True
                return "error", classify(exc).message
            error = self._judge(first)
            if error is not None:
                return "error", error
            finished = await self._drain(agen)
            return "ok", ""
        finally:
            if not finished:
                ctx.kill()
            await _close(agen)

    def _judge(self, item: Any) -> str | None:
        """None for a good first item, else what was wrong with it."""
        if self.endpoint.raw:
            return None
        out = StreamValidator(strict=False).accept(item)
        if isinstance(out, WireError):
            return out.message
        reason = out.get("finish_reason") if isinstance(out, dict) else None
        if isinstance(reason, dict) and "error" in reason:
            return f"finish_reason error: {reason['error']}"
        return None

    async def _drain(self, agen: AsyncGenerator[Any, None]) -> bool:
        """Consume the rest of a good probe (bounded); True if it ended on its own."""
        try:
            async with asyncio.timeout(max(self.settings.timeout, CLOSE_BOUND)):
                async for _ in agen:
                    pass
        except Exception:
            return False
        return True

    # --- stall detector --------------------------------------------------------------
    async def _stalls(self, bound: float, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        tick = min(1.0, max(bound / 4, 0.01))
        progress: dict[str, tuple[int, float]] = {}
        while not await self._sleep(tick):
            now = time.monotonic()
            current: dict[str, tuple[int, float]] = {}
            stalled: list[str] = []
            for rid, req in list(self.endpoint.requests.items()):
                if req.cancelled or req.terminal:
                    continue
                count = req.chunks
                seen = progress.get(rid)
                since = seen[1] if seen is not None and seen[0] == count else now
                current[rid] = (count, since)
                if now - since >= bound:
                    stalled.append(rid)
            progress = current
            self.stalled = len(stalled)
            vetoed = STALL_VETO in self.health.vetoes
            if stalled and not vetoed:
                logger.warning(
                    "%d request(s) produced no chunk for %gs (%s); reporting not ready",
                    len(stalled),
                    bound,
                    ", ".join(stalled[:5]),
                )
                self.health.veto(STALL_VETO, f"{len(stalled)} stalled request(s)", self.name)
            elif not stalled and vetoed:
                logger.info("stalled requests progressed or ended; ready again")
                self.health.lift(STALL_VETO)


async def _close(agen: AsyncGenerator[Any, None]) -> None:
    # Shielded: a probe cancelled by stop() must still close its generator.
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_BOUND):
        try:
            await agen.aclose()
        except Exception as exc:
            logger.debug("closing a health-check generator failed: %r", exc)
