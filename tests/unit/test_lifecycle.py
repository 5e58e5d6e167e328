"""The lifecycle state machine: pure transitions, then the worker under any event order."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dynamo_lite import (
    Context,
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    LLMEngine,
    RuntimeSettings,
    Worker,
    WorkerConfig,
)
from dynamo_lite.discovery import MemoryStore
from dynamo_lite.lifecycle import (
    TRANSITIONS,
    IllegalTransition,
    Lifecycle,
    Reason,
    State,
)
from dynamo_lite.tiny_model import write_tiny_model

# --- the pure machine -------------------------------------------------------------


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lc = Lifecycle()
        self.claims = 0

    @rule(reason=st.sampled_from(list(Reason)))
    def event(self, reason: Reason) -> None:
        before = self.lc.state
        target = TRANSITIONS[before].get(reason)
        if target is not None:
            assert self.lc.handle(reason) is target
            assert self.lc.state is target
        else:
            with pytest.raises(IllegalTransition):
                self.lc.handle(reason)
            assert self.lc.state is before

    @precondition(lambda self: self.lc.state is State.CLEANING)
    @rule()
    def claim(self) -> None:
        owed = self.lc.cleanup_owed
        got = self.lc.claim_cleanup()
        assert got == owed
        self.claims += got

    @rule(second=st.booleans())
    def shutdown(self, second: bool) -> None:
        was_requested = self.lc.shutdown_requested
        first = self.lc.request_shutdown(Reason.SIGTERM)
        assert first == (not was_requested)
        assert self.lc.shutdown_requested
        if second:
            assert not self.lc.request_shutdown(Reason.SIGINT)
        assert self.lc.hurried == (self.lc.signals > 1)

    @invariant()
    def cleanup_at_most_once_and_only_after_start(self) -> None:
        assert self.claims <= 1
        if self.claims:
            assert State.STARTING in self.lc.visited

    @invariant()
    def cleaning_only_after_start_finished(self) -> None:
        history = self.lc.history
        for i, t in enumerate(history):
            if t.target is State.CLEANING:
                assert history[i - 1].target is not State.STARTING

    @invariant()
    def stopped_is_terminal(self) -> None:
        if self.lc.state is State.STOPPED:
            assert not TRANSITIONS[State.STOPPED]


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def _drawn_arrows(text: str) -> dict[tuple[str, str], set[str]]:
    """``A --> B : ev1, ev2`` lines of a Mermaid state diagram, merged per arrow."""
    arrows: dict[tuple[str, str], set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\w+) --> (\w+) : (.+)$", line)
        if m:
            events = {e.strip() for e in m.group(3).split(",")}
            arrows.setdefault((m.group(1), m.group(2)), set()).update(events)
    return arrows


def _table_arrows() -> dict[tuple[str, str], set[str]]:
    arrows: dict[tuple[str, str], set[str]] = {}
    for state, row in TRANSITIONS.items():
        for reason, target in row.items():
            key = (state.name, target.name)
            arrows.setdefault(key, set()).add(reason.value)
    return arrows


def test_the_docstring_diagram_is_the_table() -> None:
    import dynamo_lite.lifecycle as lifecycle

    assert lifecycle.__doc__ is not None
    assert _drawn_arrows(lifecycle.__doc__) == _table_arrows()


def test_the_lifecycle_module_does_no_io() -> None:
    import dynamo_lite.lifecycle as lifecycle

    source = Path(lifecycle.__file__).read_text()
    for module in ("asyncio", "anyio", "socket", "os", "signal"):
        assert not re.search(rf"^\s*(import|from) {module}\b", source, re.M), module


def test_every_state_is_reachable_and_can_stop() -> None:
    seen = {State.CREATED}
    frontier = [State.CREATED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()].values():
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(State)
    # From every state there is a path to STOPPED.
    for state in State:
        reach, todo = {state}, [state]
        while todo:
            for nxt in TRANSITIONS[todo.pop()].values():
                if nxt not in reach:
                    reach.add(nxt)
                    todo.append(nxt)
        assert State.STOPPED in reach


# --- the worker under generated scenarios ---------------------------------------------

SIGNAL_POINTS = ["never", "connect", "start", "register", "serving", "grace", "drain"]


class ScenarioEngine(LLMEngine):
    def __init__(self, plan: dict[str, Any], model: str) -> None:
        self.plan = plan
        self.model = model
        self.worker: Worker | None = None
        self.log: list[str] = []
        self.in_start = False

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[ScenarioEngine, WorkerConfig]:
        raise NotImplementedError

    def _maybe_signal(self, point: str) -> None:
        assert self.worker is not None
        if self.plan["signal"] == point:
            self.worker.request_shutdown()
        if self.plan["second"] == point:
            self.worker.request_shutdown()

    async def start(self, worker_id: int) -> EngineConfig:
        self.in_start = True
        self.log.append("start")
        self._maybe_signal("start")
        await asyncio.sleep(0.005)
        self.in_start = False
        if self.plan["start"] == "raise":
            raise RuntimeError("start failed")
        return EngineConfig(model=self.model)

    async def on_endpoint_ready(self, endpoint: Any) -> None:
        self._maybe_signal("register")
        if self.plan["setup"] == "raise":
            raise RuntimeError("setup failed")

    async def drain(self) -> None:
        self.log.append("drain")

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        yield {"token_ids": [1], "index": 0, "finish_reason": "stop"}

    async def cleanup(self) -> None:
        assert not self.in_start, "cleanup() overlapped start()"
        self.log.append("cleanup")
        if self.plan["cleanup"] == "raise":
            raise RuntimeError("cleanup failed")


class SlowStore(MemoryStore):
    def __init__(self, space: str, engine: ScenarioEngine) -> None:
        super().__init__(space)
        self.engine = engine

    async def open(self) -> int:
        self.engine._maybe_signal("connect")
        await asyncio.sleep(0.005)
        return await super().open()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("scenario") / "tiny")


@settings(max_examples=60, deadline=None)
@given(
    plan=st.fixed_dictionaries(
        {
            # The first request can only come while the worker runs; a second one
            # may also land in the grace period or the drain.
            "signal": st.sampled_from(SIGNAL_POINTS[:5]),
            "second": st.sampled_from(["none", *SIGNAL_POINTS[1:]]),
            "start": st.sampled_from(["ok", "raise"]),
            "setup": st.sampled_from(["ok", "ok", "raise"]),
            "cleanup": st.sampled_from(["ok", "raise"]),
        }
    )
)
def test_worker_invariants_under_any_event_order(model_dir: Path, plan: dict[str, Any]) -> None:
    async def scenario() -> tuple[int, ScenarioEngine, Worker, MemoryStore]:
        engine = ScenarioEngine(plan, str(model_dir))
        space = uuid.uuid4().hex
        store = SlowStore(space, engine)
        config = WorkerConfig(
            namespace="ns", component="c", model_name=str(model_dir), discovery_backend="mem"
        )
        worker = Worker(
            engine,
            config,
            handle_signals=False,
            store=store,
            settings=RuntimeSettings(tcp_host="127.0.0.1", grace_period=0.02),
        )
        engine.worker = worker
        run = asyncio.create_task(worker.run())

        async def later_signals() -> None:
            targets = {"serving": State.SERVING, "grace": State.GRACE, "drain": State.DRAINING}
            for point in (plan["signal"], plan["second"]):
                if point in targets and (point == "serving" or worker.lifecycle.shutdown_requested):
                    while worker.lifecycle.state is not targets[point] and not run.done():
                        await asyncio.sleep(0.001)
                    if not run.done():
                        worker.request_shutdown()

        helper = asyncio.create_task(later_signals())
        if plan["signal"] == "never":
            # Nothing else asks it to stop: do so once it serves (or ended).
            while worker.lifecycle.state is not State.SERVING and not run.done():
                await asyncio.sleep(0.001)
            worker.request_shutdown()
        code = await asyncio.wait_for(run, 10)
        helper.cancel()
        return code, engine, worker, MemoryStore(space)

    code, engine, worker, view = asyncio.run(scenario())
    started = "start" in engine.log
    cleanups = engine.log.count("cleanup")
    assert worker.lifecycle.state is State.STOPPED
    assert cleanups == (1 if started else 0)
    if started:
        assert engine.log.index("cleanup") > engine.log.index("start")
    early = {"connect", "start"} & {plan["signal"], plan["second"]}
    registered = started and plan["start"] == "ok" and not early
    assert (State.REGISTERING in worker.lifecycle.visited) == registered
    failed = started and (plan["start"] == "raise" or (registered and plan["setup"] == "raise"))
    assert code == (1 if failed else 0)
    assert asyncio.run(view.list("v1/")) == {}
