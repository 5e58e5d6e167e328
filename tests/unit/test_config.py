"""Environment parsing with the stock rules, and the WorkerConfig / EngineConfig surface."""

from __future__ import annotations

import enum
from types import SimpleNamespace

import pytest

from dynamo_lite import DisaggregationMode, EngineConfig, LlmRegistration, WorkerConfig
from dynamo_lite.config import RuntimeSettings, parse_grace_period, parse_shutdown_timeout


@pytest.mark.parametrize(
    ("raw", "grace"),
    [
        (None, 5.0),
        ("", 5.0),
        ("  ", 5.0),
        ("2.5", 2.5),
        ("0.5", 0.5),
        ("0", 0.0),
        ("-1", 0.0),
        ("not-a-number", 5.0),
        ("nan", 5.0),
        ("inf", 5.0),
    ],
)
def test_grace_period_parsing_follows_stock(raw: str | None, grace: float) -> None:
    assert parse_grace_period(raw) == grace


@pytest.mark.parametrize(
    ("raw", "timeout"), [(None, 30), ("", 30), ("garbage", 30), ("42", 42), (" 7 ", 7), ("-3", 30)]
)
def test_shutdown_timeout_parsing_follows_stock(raw: str | None, timeout: int) -> None:
    assert parse_shutdown_timeout(raw) == timeout


def test_drain_budgets() -> None:
    s = RuntimeSettings.from_env({})
    assert s.drain_budget() == 25.0  # watchdog 30 s less 5 s for cleanup
    assert s.prefill_drain_budget() == 25.0  # min(30, 30 - 5), as stock
    s = RuntimeSettings.from_env(
        {"DYN_LITE_DRAIN_TIMEOUT_SECS": "3", "DYN_PREFILL_DRAIN_TIMEOUT_S": "2"}
    )
    assert (s.drain_budget(), s.prefill_drain_budget()) == (3.0, 2.0)
    s = RuntimeSettings.from_env(
        {"DYN_LITE_DRAIN_TIMEOUT_SECS": "100", "DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT": "10"}
    )
    assert s.drain_budget() == 10.0  # never beyond the watchdog


def test_runtime_settings_read_the_stock_variables() -> None:
    s = RuntimeSettings.from_env(
        {
            "ETCD_ENDPOINTS": "http://a:1, http://b:2",
            "ETCD_LEASE_TTL": "12",
            "DYN_FILE_KV": "/tmp/x",
            "DYN_TCP_RPC_HOST": "10.0.0.1",
            "DYN_TCP_RPC_PORT": "4567",
            "DYN_SYSTEM_PORT": "40000",
            "DYN_REQUEST_PLANE_CODEC": "json",
        }
    )
    assert s.etcd_endpoints == ("http://a:1", "http://b:2")
    assert s.etcd_lease_ttl == 12
    assert str(s.file_kv) == "/tmp/x"
    assert (s.tcp_host, s.tcp_port) == ("10.0.0.1", 4567)
    assert s.system_port == 40000  # stock refuses ports above 32767; we do not
    assert s.request_codec == "json"
    assert RuntimeSettings.from_env({}).system_port is None


def test_engine_config_accepts_both_spellings_with_one_meaning() -> None:
    flat = EngineConfig(
        model="m",
        context_length=8192,
        kv_cache_block_size=16,
        total_kv_blocks=1024,
        max_num_seqs=64,
        max_num_batched_tokens=8192,
    )
    nested = EngineConfig(
        model="m",
        llm=LlmRegistration(
            context_length=8192,
            kv_cache_block_size=16,
            total_kv_blocks=1024,
            max_num_seqs=64,
            max_num_batched_tokens=8192,
        ),
    )
    assert flat == nested
    assert flat.llm is not None and flat.llm.context_length == 8192
    assert nested.context_length == 8192  # type: ignore[attr-defined]
    assert EngineConfig(model="m").llm is None
    with pytest.raises(ValueError, match="conflicts"):
        EngineConfig(model="m", llm=LlmRegistration(context_length=1), context_length=2)
    # Positional order of 1.6.1: model, served_model_name, runtime_data, llm, model_aliases.
    cfg = EngineConfig("m", "served", {"k": 1}, LlmRegistration(), ["alias"])
    assert (cfg.served_model_name, cfg.runtime_data, cfg.model_aliases) == (
        "served",
        {"k": 1},
        ["alias"],
    )


def test_worker_config_from_runtime_config() -> None:
    class Foreign(enum.Enum):
        PREFILL = "p"

    runtime = SimpleNamespace(
        namespace="ns",
        component=None,
        endpoint="gen",
        discovery_backend="file",
        request_plane="tcp",
        event_plane=None,
        dyn_tool_call_parser="hermes",
        disaggregation_mode=Foreign.PREFILL,
        health_check_payload='{"token_ids":[1]}',
    )
    cfg = WorkerConfig.from_runtime_config(runtime, model_name="/m", served_model_name="s")
    assert (cfg.namespace, cfg.component, cfg.endpoint) == ("ns", "backend", "gen")
    assert cfg.tool_call_parser == "hermes"
    assert cfg.disaggregation_mode is DisaggregationMode.PREFILL
    assert cfg.health_check_payload == {"token_ids": [1], "_HEALTH_CHECK": True}
    with pytest.raises(TypeError):
        WorkerConfig.from_runtime_config(
            SimpleNamespace(
                namespace="n",
                discovery_backend="etcd",
                request_plane="tcp",
                event_plane=None,
                disaggregation_mode="prefill",
            ),
            model_name="m",
        )
