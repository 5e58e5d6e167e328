"""Canary payloads and verdicts without processes (the stock helper rules, conformance.md §7,
lifecycle.md §8.2)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from dynamo_lite import WorkerConfig
from dynamo_lite.canary import HealthMonitor, HealthSettings, probe_request, resolve_payload
from dynamo_lite.config import parse_health_check_payload_cli as from_config
from dynamo_lite.health_check import (
    HEALTH_CHECK_ENV,
    HEALTH_CHECK_KEY,
    bos_token_id_or,
    build_health_check_payload,
    build_raw_health_check_payload,
    is_probe,
    parse_health_check_payload_cli,
)
from dynamo_lite.stats import EndpointStats
from dynamo_lite.system_server import HealthStatus

pytestmark = pytest.mark.anyio

# --- helpers (mirroring the stock test_health_check.py) ---------------------------------


def test_build_payload_default_extras_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYN_HEALTH_CHECK_PAYLOAD", raising=False)
    assert build_health_check_payload(2, extras={"x": 1}) == {
        "token_ids": [2],
        "stop_conditions": {"max_tokens": 1, "ignore_eos": True},
        "sampling_options": {"temperature": 0.0},
        "x": 1,
        HEALTH_CHECK_KEY: True,
    }
    monkeypatch.setenv("DYN_HEALTH_CHECK_PAYLOAD", "{}")
    assert build_health_check_payload(2, extras={"x": 1}) == {HEALTH_CHECK_KEY: True}
    assert build_raw_health_check_payload({"prompt": "p"}) == {HEALTH_CHECK_KEY: True}


def test_is_probe_is_strict() -> None:
    assert is_probe({HEALTH_CHECK_KEY: True})
    for value in (1, "true", False, None):
        assert not is_probe({HEALTH_CHECK_KEY: value})
    assert not is_probe({})


def test_bos_token_id_or() -> None:
    assert bos_token_id_or(SimpleNamespace(bos_token_id=5)) == 5
    assert bos_token_id_or(SimpleNamespace(tokenizer=SimpleNamespace(bos_token_id=6))) == 6
    assert bos_token_id_or(object()) == 1
    assert bos_token_id_or(object(), default=9) == 9


def test_cli_parser(tmp_path: Path) -> None:
    assert parse_health_check_payload_cli(None) is None
    assert parse_health_check_payload_cli("{not json") is None
    assert parse_health_check_payload_cli("[1, 2]") is None
    assert parse_health_check_payload_cli("@" + str(tmp_path / "missing.json")) is None
    f = tmp_path / "p.json"
    f.write_text('{"token_ids": [3], "_HEALTH_CHECK": false}')
    assert parse_health_check_payload_cli("@" + str(f)) == {
        "token_ids": [3],
        HEALTH_CHECK_KEY: True,
    }
    assert parse_health_check_payload_cli({"a": 1}) == {"a": 1, HEALTH_CHECK_KEY: True}
    # config.py re-exports the same function (one implementation).
    assert from_config is parse_health_check_payload_cli


# --- payload precedence -----------------------------------------------------------------


class PayloadEngine:
    def __init__(self, payload: Any = None, fail: bool = False) -> None:
        self.payload = payload
        self.fail = fail
        self.calls = 0

    async def health_check_payload(self) -> Any:
        self.calls += 1
        if self.fail:
            raise RuntimeError("no payload for you")
        return self.payload


def config(payload: Any = None) -> WorkerConfig:
    return WorkerConfig(namespace="ns", health_check_payload=payload)


async def resolve(engine: PayloadEngine, cfg: WorkerConfig, env: dict[str, str]) -> Any:
    return await resolve_payload(engine, cfg, env.get(HEALTH_CHECK_ENV))  # type: ignore[arg-type]


async def test_precedence_config_then_env_then_engine(tmp_path: Path) -> None:
    engine = PayloadEngine({"token_ids": [1]})
    env = {"DYN_HEALTH_CHECK_PAYLOAD": '{"token_ids": [2]}'}
    assert await resolve(engine, config({"token_ids": [3]}), env) == {
        "token_ids": [3],
        HEALTH_CHECK_KEY: True,
    }
    assert await resolve(engine, config(), env) == {"token_ids": [2], HEALTH_CHECK_KEY: True}
    assert engine.calls == 0  # not called when overridden
    f = tmp_path / "payload.json"
    f.write_text(json.dumps({"token_ids": [4], HEALTH_CHECK_KEY: False}))
    assert await resolve(engine, config(), {"DYN_HEALTH_CHECK_PAYLOAD": f"@{f}"}) == {
        "token_ids": [4],
        HEALTH_CHECK_KEY: True,
    }
    assert await resolve(engine, config(), {}) == {"token_ids": [1], HEALTH_CHECK_KEY: True}
    assert engine.calls == 1


@pytest.mark.parametrize("bad", ["{nope", "[1, 2, 3]", "42", "@/nonexistent/payload.json"])
async def test_invalid_env_warns_and_falls_through(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = PayloadEngine({"token_ids": [1]})
    with caplog.at_level(logging.WARNING):
        got = await resolve(engine, config(), {"DYN_HEALTH_CHECK_PAYLOAD": bad})
    assert got == {"token_ids": [1], HEALTH_CHECK_KEY: True}
    assert engine.calls == 1
    assert "DYN_HEALTH_CHECK_PAYLOAD" in caplog.text


async def test_what_disables_the_canary(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        engine = PayloadEngine({"token_ids": [1]})
        assert await resolve(engine, config([1, 2, 3]), {}) is None
        assert engine.calls == 0
        assert await resolve(PayloadEngine(None), config(), {}) is None
        assert await resolve(PayloadEngine([1]), config(), {}) is None
        assert await resolve(PayloadEngine(fail=True), config(), {}) is None
    assert "canary disabled for this endpoint" in caplog.text
    assert "must return a JSON object" in caplog.text


def test_settings_from_env() -> None:
    assert HealthSettings.from_env({}) == HealthSettings()
    s = HealthSettings.from_env(
        {
            "DYN_HEALTH_CHECK_ENABLED": "True",
            "DYN_CANARY_WAIT_TIME": "0.5",
            "DYN_HEALTH_CHECK_REQUEST_TIMEOUT": "2",
            "DYN_LITE_STALL_TIMEOUT_SECS": "30",
        }
    )
    assert s == HealthSettings(enabled=True, wait=0.5, timeout=2.0, stall_timeout=30.0)
    assert HealthSettings.from_env({"DYN_CANARY_WAIT_TIME": "soon"}).wait == 10.0
    assert HealthSettings.from_env({"DYN_LITE_STALL_TIMEOUT_SECS": "0"}).stall_timeout is None


def test_probe_request_fills_what_stock_fills() -> None:
    payload = {"token_ids": [1], "stop_conditions": {"max_tokens": 1}, HEALTH_CHECK_KEY: True}
    req = probe_request(payload)
    assert req["token_ids"] == [1] and req[HEALTH_CHECK_KEY] is True
    assert req["stop_conditions"]["max_tokens"] == 1
    assert req["stop_conditions"]["ignore_eos"] is None
    assert req["sampling_options"]["temperature"] is None
    assert req["output_options"]["logprobs"] is None
    assert req["model"] == "" and req["eos_token_ids"] == [] and req["annotations"] == []
    assert req["mdc_sum"] is None and req["router_config_override"] is None
    req["stop_conditions"]["max_tokens"] = 99
    assert payload["stop_conditions"] == {"max_tokens": 1}  # a fresh copy every time
    assert probe_request({"prompt": "x"}, raw=True) == {"prompt": "x"}


# --- verdicts ---------------------------------------------------------------------------


class ProbeEngine:
    """generate() behaves as ``mode`` says; records whether the generator was closed."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.closed = 0
        self.requests: list[dict[str, Any]] = []

    def generate(self, request: dict[str, Any], context: Any) -> AsyncGenerator[Any, None]:
        if self.mode == "sync_raise":
            raise ValueError("bad request")
        self.requests.append(request)
        return self._gen(context)

    async def _gen(self, context: Any) -> AsyncGenerator[Any, None]:
        try:
            if self.mode == "raise":
                raise RuntimeError("engine down")
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.mode == "finish_error":
                yield {"token_ids": [], "finish_reason": "error: out of memory"}
            elif self.mode == "malformed":
                yield {"tokens": "nope"}
            elif self.mode == "ok":
                yield {"token_ids": [1]}
                yield {"token_ids": [2], "finish_reason": "length"}
        finally:
            self.closed += 1


def monitor(engine: ProbeEngine, timeout: float = 0.2) -> HealthMonitor:
    endpoint = SimpleNamespace(name="generate", raw=False, stats=EndpointStats(), requests={})
    health = HealthStatus({})
    health.serving = True
    return HealthMonitor(
        engine,  # type: ignore[arg-type]
        endpoint,  # type: ignore[arg-type]
        health,
        HealthSettings(enabled=True, wait=0.1, timeout=timeout),
        {"token_ids": [1], HEALTH_CHECK_KEY: True},
    )


@pytest.mark.parametrize(
    ("mode", "verdict"),
    [("ok", "ok"), ("raise", "error"), ("sync_raise", "error"), ("finish_error", "error"),
     ("malformed", "error"), ("empty", "empty"), ("hang", "timeout")],
)  # fmt: skip
async def test_probe_verdicts(mode: str, verdict: str) -> None:
    engine = ProbeEngine(mode)
    m = monitor(engine)
    assert await m.probe() == verdict
    assert m.probes[verdict] == 1
    assert m.health.endpoints["generate"] == ("ready" if verdict == "ok" else "notready")
    assert m.health.ready is (verdict == "ok")
    if mode != "sync_raise":
        # Every probe generator is closed, a hanging one included (stock leaks it).
        assert engine.closed == 1
        assert engine.requests[0][HEALTH_CHECK_KEY] is True


async def test_stop_cancels_a_probe_in_flight() -> None:
    engine = ProbeEngine("hang")
    m = monitor(engine, timeout=30)
    async with anyio.create_task_group() as tg:
        await m.start(tg)
        with anyio.fail_after(5):
            while not engine.requests:  # past the 0.1 s idle wait: a probe hangs now
                await asyncio.sleep(0.02)
        with anyio.fail_after(5):
            await m.stop()
    assert engine.closed == 1
