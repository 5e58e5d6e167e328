"""``/engine/control/<name>`` and ``/engine/update/<name>`` on the system port, as the 1.6.1 worker.

Theory of operation
-------------------
At start-up, after ``on_endpoint_ready`` and the model card, the worker asks
the engine for ``supported_controls()`` and ``supported_updates()``; each
name becomes one route, plus the built-in ``/engine/update/model_taints``.
Any method is accepted (stock routes every method alike). A request goes
through these steps, in stock's order, and the first that answers wins:

1. the body is parsed as JSON (empty means ``{}``): not JSON → 400
   ``{"error":"Invalid JSON",…}``;
2. the route must exist: → 404 ``{"error":"Route not found",…}`` (bare
   ``/engine/control``, trailing slashes and unadvertised names included);
3. ``model_taints`` is handled here and now: the card's
   ``runtime_config.taints`` is rewritten in discovery;
4. a body that is not an object → 200 ``{"status":"error","message":
   "engine control request body must be a JSON object"}`` (``update`` for
   updates), without calling the engine;
5. before serving starts and from the first moment of shutdown → 200
   ``{"status":"error","message":"engine administrative routes are
   unavailable while the worker is starting|shutting down"}``;
6. a control that takes the worker out of service (``pause_generation``,
   ``sleep``, ``release_memory_occupation``) first unregisters the serving
   instance from discovery and marks the endpoint not ready; when it is
   already out of service that fails and the engine is not called;
7. the engine's answer is returned as JSON, whatever its shape; an exception
   is 500 ``{"error":"Handler error","message":"<Kind>: <Type>: <text>"}``;
8. after a control that puts it back (``resume_generation``, ``wake_up``,
   ``resume_memory_occupation``) the instance is re-registered and the
   endpoint made ready again, unless the answer says ``"status": "error"``
   or ``"is_sleeping": true`` (or the engine raised). A pause whose engine
   call fails leaves the worker out of service, as in stock.

Every answer is ``text/plain; charset=utf-8`` with compact JSON, as stock's.

Taking the instance out of discovery and back is :class:`InstanceSwitch`'s
job, shared with the :class:`ServingEndpoint` the engine receives in
``on_endpoint_ready`` (stock's ``unregister_endpoint_instance`` /
``register_endpoint_instance``): unregistering twice fails, registering is
idempotent, and neither touches readiness (the controls above do).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .config import WorkerConfig
from .discovery import EndpointId, KvStore
from .engine import BaseEngine
from .metrics import EngineMetrics
from .registration import Registration
from .system_server import HealthStatus, Response

__all__ = [
    "MODEL_TAINTS",
    "PAUSE_CONTROLS",
    "RESUME_CONTROLS",
    "EngineRoutes",
    "InstanceSwitch",
    "ServingEndpoint",
    "before_routes",
]

logger = logging.getLogger(__name__)

PREFIX = "/engine/"
MODEL_TAINTS = "model_taints"
RESERVED_TAINT_PREFIX = "dynamo.topology/"
PAUSE_CONTROLS = frozenset({"pause_generation", "sleep", "release_memory_occupation"})
RESUME_CONTROLS = frozenset({"resume_generation", "wake_up", "resume_memory_occupation"})
#: The veto that keeps the endpoint not ready while a control holds it out of service.
VETO = "engine-control"

Kind = Literal["control", "update"]


class WorkerView(Protocol):
    """What the routes read from the worker (attributes of :class:`dynamo_lite.worker.Worker`)."""

    @property
    def health(self) -> HealthStatus: ...
    @property
    def config(self) -> WorkerConfig: ...
    @property
    def store(self) -> KvStore: ...
    @property
    def endpoint_id(self) -> EndpointId: ...
    @property
    def instance_id(self) -> int | None: ...
    @property
    def registration(self) -> Registration | None: ...


UNREGISTER_FAILED = (
    "Unable to unregister endpoint instance from discovery. Check discovery service status"
)


class InstanceSwitch:
    """Takes the serving instance record out of discovery and puts it back."""

    def __init__(self, worker: WorkerView) -> None:
        self.worker = worker
        #: The record taken out, to put back.
        self._parked: tuple[str, bytes] | None = None

    @property
    def out_of_service(self) -> bool:
        return self._parked is not None

    async def unregister(self) -> None:
        """Remove the instance record; raises when it is not registered (already out, say)."""
        registration = self.worker.registration
        key = registration.instance_key if registration is not None else None
        if self._parked is not None or key is None:
            raise Exception(UNREGISTER_FAILED)  # stock raises a plain Exception
        store = self.worker.store
        try:
            record = (await store.list(key)).get(key)
            if record is None:
                raise LookupError(key)
            await store.delete(key)
        except Exception as exc:
            logger.warning("unregister endpoint instance failed: %s", exc)
            raise Exception(UNREGISTER_FAILED) from exc  # stock: a plain Exception
        self._parked = (key, record)
        logger.info(
            "Successfully unregistered endpoint instance from discovery - "
            "worker removed from routing pool instance_id=%x",
            self.worker.instance_id or 0,
        )

    async def register(self) -> None:
        """Put the record back; nothing to do when it is registered (or shutdown began)."""
        parked, self._parked = self._parked, None
        if parked is None or self.worker.health.shutting_down:
            return  # a leaving worker's records go with it
        key, record = parked
        try:
            await self.worker.store.put(key, record)
        except Exception:
            self._parked = parked
            raise
        logger.info(
            "Successfully re-registered endpoint instance to discovery - "
            "worker added back to routing pool instance_id=%x",
            self.worker.instance_id or 0,
        )


@dataclass(frozen=True)
class ServingEndpoint:
    """What ``on_endpoint_ready`` receives: the served endpoint, with stock's methods."""

    namespace: str
    component: str
    name: str
    instance_id: int
    switch: InstanceSwitch | None = field(default=None, compare=False, repr=False)

    @property
    def path(self) -> str:
        return f"{self.namespace}.{self.component}.{self.name}"

    def connection_id(self) -> int:
        """The worker's discovery instance id."""
        return self.instance_id

    async def client(self, router_mode: Any = None) -> Any:
        """A client for this endpoint with stock's API (:mod:`dynamo_lite.endpoint_client`)."""
        from .endpoint_client import open_client

        worker = getattr(self.switch, "worker", None)
        if worker is None:
            raise RuntimeError("client() needs the endpoint of a running worker")
        return await open_client(worker)

    @property
    def metrics(self) -> EngineMetrics:
        """Stock's ``RuntimeMetrics`` helper: exposition callbacks registered here
        are appended to ``/metrics`` (the handle ``register_prometheus`` gets)."""
        worker_metrics = getattr(getattr(self.switch, "worker", None), "metrics", None)
        if worker_metrics is None:
            return EngineMetrics({})
        handle: EngineMetrics = worker_metrics.engine_metrics()
        return handle

    async def unregister_endpoint_instance(self) -> None:
        """Stop being routed to (the instance leaves discovery); raises when already out."""
        if self.switch is None:
            raise Exception(UNREGISTER_FAILED)  # stock raises a plain Exception
        await self.switch.unregister()

    async def register_endpoint_instance(self) -> None:
        """Be routed to again; idempotent."""
        if self.switch is not None:
            await self.switch.register()


def _json(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _route_not_found(path: str) -> Response:
    return _json({"error": "Route not found", "message": f"Route {path} not found"}, 404)


def _handler_error(message: str) -> Response:
    return _json({"error": "Handler error", "message": message}, 500)


def _status_error(message: str) -> Response:
    return _json({"status": "error", "message": message})


# Python's JSON error texts in the spelling of stock's parser, where they differ.
_JSON_ERRORS = (
    ("Expecting value", "expected value"),
    ("Extra data", "trailing characters"),
    ("Unterminated string", "EOF while parsing a string"),
    ("Expecting ',' delimiter", "expected `,` or `}`"),
    ("Expecting ':' delimiter", "expected `:`"),
)


def _invalid_json(exc: json.JSONDecodeError) -> Response:
    text = exc.msg
    for ours, theirs in _JSON_ERRORS:
        if text.startswith(ours):
            text = theirs
            break
    message = f"{text} at line {exc.lineno} column {exc.colno}"
    return _json({"error": "Invalid JSON", "message": message}, 400)


def error_kind(exc: BaseException) -> str:
    """The error kind stock's admin routes put before an engine exception."""
    if isinstance(exc, ValueError | TypeError):
        return "InvalidRequest"
    if isinstance(exc, TimeoutError):
        return "DeadlineExceeded"
    if isinstance(exc, ConnectionError):
        return "Unavailable"
    return "Internal"


def _parse(body: bytes) -> tuple[Any, Response | None]:
    """The JSON body (empty means ``{}``), or the 400 answer when it is not JSON."""
    try:
        return (json.loads(body) if body else {}), None
    except json.JSONDecodeError as exc:
        return None, _invalid_json(exc)
    except UnicodeDecodeError as exc:
        return None, _json({"error": "Invalid JSON", "message": str(exc)}, 400)


async def before_routes(method: str, path: str, body: bytes) -> Response:
    """``/engine/*`` until the engine's routes exist (while it starts): as stock, the body is
    still parsed first, then nothing is found."""
    del method
    _, invalid = _parse(body)
    return invalid or _route_not_found(path)


class EngineRoutes:
    """The engine's admin routes for one worker; :meth:`handle` serves ``/engine/*``."""

    def __init__(
        self, worker: WorkerView, engine: BaseEngine, switch: InstanceSwitch | None = None
    ) -> None:
        self.worker = worker
        self.engine = engine
        self.switch = switch if switch is not None else InstanceSwitch(worker)
        self.controls = frozenset(engine.supported_controls())
        self.updates = frozenset(engine.supported_updates())
        if MODEL_TAINTS in self.updates:
            raise ValueError(
                f"engine update '{MODEL_TAINTS}' is reserved for the built-in taint route"
            )
        if self.controls:
            logger.info(
                "registered engine management controls control_count=%d", len(self.controls)
            )
        else:
            logger.debug("engine returned no management controls")
        if self.updates:
            logger.info("registered engine management updates update_count=%d", len(self.updates))
        else:
            logger.debug("engine returned no management updates")

    async def handle(self, method: str, path: str, body: bytes) -> Response:
        del method  # every method is routed alike
        payload, invalid = _parse(body)
        if invalid is not None:
            return invalid
        kind, _, name = path[len(PREFIX) :].partition("/")
        if kind == "update" and name == MODEL_TAINTS:
            return await self._model_taints(path, payload)
        if (kind, name) not in {("control", n) for n in self.controls} | {
            ("update", n) for n in self.updates
        }:
            return _route_not_found(path)
        assert kind in ("control", "update")
        if not isinstance(payload, dict):
            return _status_error(f"engine {kind} request body must be a JSON object")
        health = self.worker.health
        if health.shutting_down:
            return _status_error(
                "engine administrative routes are unavailable while the worker is shutting down"
            )
        if not health.serving:
            return _status_error(
                "engine administrative routes are unavailable while the worker is starting"
            )
        if kind == "update":
            return await self._call_update(path, name, payload)
        if name in PAUSE_CONTROLS:
            problem = await self._take_out_of_service(name)
            if problem is not None:
                return _status_error(f"failed to unregister endpoint before {path}: {problem}")
        response, result = await self._call_control(name, payload)
        if name in RESUME_CONTROLS and result is not None and self._back_in_service(result):
            await self._put_back_in_service(name)
        return response

    async def _call_update(self, path: str, name: str, body: dict[str, Any]) -> Response:
        try:
            result = await self.engine.engine_update(name, body)
        except Exception as exc:
            logger.error("Engine route handler error for %s: %s", path, exc)
            return _handler_error(f"{error_kind(exc)}: {type(exc).__name__}: {exc}")
        return _json(result)

    async def _call_control(
        self, name: str, body: dict[str, Any]
    ) -> tuple[Response, Mapping[str, Any] | list[Any] | Any | None]:
        try:
            result = await self.engine.engine_control(name, body)
        except Exception as exc:
            logger.error("Engine route handler error for /engine/control/%s: %s", name, exc)
            return _handler_error(f"{error_kind(exc)}: {type(exc).__name__}: {exc}"), None
        return _json(result), result

    @staticmethod
    def _back_in_service(result: Any) -> bool:
        if not isinstance(result, Mapping):
            return True
        return result.get("status") != "error" and result.get("is_sleeping") is not True

    async def _take_out_of_service(self, name: str) -> str | None:
        """Unregister the serving instance and mark it not ready; why it failed, or None."""
        try:
            await self.switch.unregister()
        except Exception as exc:
            return str(exc)
        self.worker.health.veto(VETO, f"/engine/control/{name}", self.worker.config.endpoint)
        return None

    async def _put_back_in_service(self, name: str) -> None:
        try:
            await self.switch.register()
        except Exception as exc:
            logger.warning("re-register after /engine/control/%s failed: %s", name, exc)
            return
        self.worker.health.lift(VETO)

    async def _model_taints(self, path: str, body: Any) -> Response:
        try:
            taints = _taints(body)
            await self._publish_taints(taints)
        except Exception as exc:
            logger.error("Engine route handler error for %s: %s", path, exc)
            return _handler_error(str(exc))
        return _json({"status": "ok", "taints": taints})

    async def _publish_taints(self, taints: list[str]) -> None:
        registration = self.worker.registration
        card = registration.card if registration is not None else None
        if registration is None or card is None or registration.card_key is None:
            raise RuntimeError("the model card is not registered")
        runtime = card.setdefault("runtime_config", {})
        if taints:
            runtime["taints"] = taints
        else:
            runtime.pop("taints", None)
        await registration.publish_card(card)


def _taints(body: Any) -> list[str]:
    """The sorted, de-duplicated taints of a ``model_taints`` body (ValueError when malformed)."""
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    taints = body.get("taints")
    if not isinstance(taints, list) or not all(isinstance(t, str) for t in taints):
        raise ValueError("'taints' must be a JSON array of strings")
    for taint in taints:
        if taint.startswith(RESERVED_TAINT_PREFIX):
            raise ValueError(f"taint '{taint}' uses reserved prefix '{RESERVED_TAINT_PREFIX}'")
    return sorted(set(taints))
