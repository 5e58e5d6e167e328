"""DisaggregationMode → registration, exactly as the stock 1.6.1 worker registers it.

``tests/vectors/discovery/stock_mdc_modes/`` holds the model cards the stock
sample worker wrote for each ``--disaggregation-mode`` (and
``--route-to-encoder``). Our card must agree field by field (file locations
and checksums aside), and the stock frontend must treat our worker in each
role as it treats the stock one: the same worker group, the same listing in
``/v1/models``, the same answer to a request, and prefill/decode pairs that
serve — ours with ours, and ours with stock.

``runtime_config.enable_local_indexer`` agrees too: the sample engine declares
a KV event source (except for encode), so the worker serves the local
indexer's query endpoint as stock does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo_lite import DisaggregationMode, EngineConfig, LlmRegistration, WorkerConfig
from dynamo_lite.card import ModelFiles, build_card, needs, slugify
from tests.support.lite import events_of, read_events, wait_until, worker_argv, worker_env
from tests.support.services import ManagedProcess
from tests.support.stock import StockFrontend, loopback_env

VECTORS = Path(__file__).parents[1] / "vectors" / "discovery" / "stock_mdc_modes"
FILE_FIELDS = ("model_info", "tokenizer", "prompt_formatter", "gen_config")

#: case → (flags for the stock sample worker and our probe engine, mode, route_to_encoder)
CASES: dict[str, tuple[list[str], DisaggregationMode, bool]] = {
    "agg": ([], DisaggregationMode.AGGREGATED, False),
    "prefill": (["--disaggregation-mode", "prefill"], DisaggregationMode.PREFILL, False),
    "decode": (["--disaggregation-mode", "decode"], DisaggregationMode.DECODE, False),
    "encode": (["--disaggregation-mode", "encode"], DisaggregationMode.ENCODE, False),
    "agg-route-to-encoder": (["--route-to-encoder"], DisaggregationMode.AGGREGATED, True),
    "prefill-route-to-encoder": (
        ["--disaggregation-mode", "prefill", "--route-to-encoder"],
        DisaggregationMode.PREFILL,
        True,
    ),
}


def stock_card(case: str, model_dir: Path) -> dict[str, Any]:
    """The captured stock record, placeholders filled in for ``model_dir``."""
    text = (VECTORS / f"{case}.json").read_text()
    text = text.replace("{MODEL_DIR}", str(model_dir)).replace(
        "{MODEL_SLUG}", slugify(str(model_dir))
    )
    record: dict[str, Any] = json.loads(text)
    return record


def comparable(card: dict[str, Any]) -> dict[str, Any]:
    """``card`` with file locations, checksums and sizes blanked, keeping its shape."""
    out = dict(card)
    for name in FILE_FIELDS:
        if name in out:
            out[name] = {variant: sorted(entry) for variant, entry in out[name].items()}
    return out


def ordered(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, ordered(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [ordered(v) for v in value]
    return value


def assert_same_card(ours: dict[str, Any], stock: dict[str, Any]) -> None:
    ours, stock = comparable(ours), comparable(stock)
    # runtime_data is a hash map on the stock side: its key order varies per run.
    ours_rt, stock_rt = dict(ours["runtime_config"]), dict(stock["runtime_config"])
    assert ours_rt.pop("runtime_data", None) == stock_rt.pop("runtime_data", None)
    assert ordered(ours_rt) == ordered(stock_rt)
    rest = {k: v for k, v in ours.items() if k != "runtime_config"}
    assert ordered(rest) == ordered({k: v for k, v in stock.items() if k != "runtime_config"})


# --- the card builder against every capture (no processes) ----------------------------


def sample_worker_config(model: Path, mode: DisaggregationMode, rte: bool) -> WorkerConfig:
    """What the stock sample engine's ``from_args`` builds."""
    return WorkerConfig(
        namespace="dynamo",
        component="sample",
        model_name=str(model),
        served_model_name=str(model),
        discovery_backend="file",
        disaggregation_mode=mode,
        route_to_encoder=rte,
        enable_kv_routing=False,
    )


def sample_engine_config(model: Path, **llm: Any) -> EngineConfig:
    return EngineConfig(
        model=str(model),
        served_model_name=str(model),
        llm=LlmRegistration(
            context_length=2048,
            kv_cache_block_size=16,
            total_kv_blocks=1000,
            max_num_seqs=64,
            max_num_batched_tokens=2048,
            **llm,
        ),
    )


@pytest.mark.parametrize("case", list(CASES))
def test_build_card_matches_stock(case: str, tiny_model: Path) -> None:
    _, mode, rte = CASES[case]
    files = ModelFiles.scan(tiny_model)
    worker = sample_worker_config(tiny_model, mode, rte)
    ours = build_card(files, worker, sample_engine_config(tiny_model), enable_local_indexer=True)
    assert_same_card(ours, stock_card(case, tiny_model)["card_json"])


def test_build_card_runtime_data_and_bootstrap(tiny_model: Path) -> None:
    worker = sample_worker_config(tiny_model, DisaggregationMode.PREFILL, False)
    engine = sample_engine_config(tiny_model, bootstrap_host="10.1.2.3", bootstrap_port=7777)
    engine.runtime_data = {"zeta": 1, "alpha": {"x": [1, 2]}, "encoder_result_handoff": False}
    ours = build_card(ModelFiles.scan(tiny_model), worker, engine, enable_local_indexer=True)
    stock = stock_card("prefill-runtime-data-bootstrap", tiny_model)["card_json"]
    assert_same_card(ours, stock)
    # Route-to-encoder overrides the engine's own flag.
    worker.route_to_encoder = True
    ours = build_card(ModelFiles.scan(tiny_model), worker, engine)
    assert ours["runtime_config"]["runtime_data"]["encoder_result_handoff"] is True
    assert ours["needs"] == [["decode", "encode"]]


def test_model_type_strings(tiny_model: Path) -> None:
    files = ModelFiles.scan(tiny_model)
    engine = sample_engine_config(tiny_model)
    for endpoint_types, expected in [
        ("chat,completions", "Chat | Completions"),
        ("completions,chat", "Chat | Completions"),
        ("completions", "Completions"),
        ("chat", "Chat"),
    ]:
        worker = sample_worker_config(tiny_model, DisaggregationMode.DECODE, False)
        worker.endpoint_types = endpoint_types
        assert build_card(files, worker, engine)["model_type"] == expected
        # Prefill ignores the endpoint types: the legacy marker alone.
        worker.disaggregation_mode = DisaggregationMode.PREFILL
        assert build_card(files, worker, engine)["model_type"] == "Prefill"
        worker.disaggregation_mode = DisaggregationMode.ENCODE
        assert build_card(files, worker, engine)["model_type"] == ""


def test_needs_table() -> None:
    assert needs(DisaggregationMode.AGGREGATED) == []
    assert needs(DisaggregationMode.AGGREGATED, route_to_encoder=True) == [["encode"]]
    assert needs(DisaggregationMode.PREFILL) == [["decode"]]
    assert needs(DisaggregationMode.PREFILL, route_to_encoder=True) == [["decode", "encode"]]
    assert needs(DisaggregationMode.DECODE) == [["prefill"]]
    assert needs(DisaggregationMode.ENCODE) == [["prefill", "decode"], ["aggregated"]]


# --- live workers behind the stock frontend ----------------------------------------------

_STR = r'"((?:[^"\\]|\\.)*)"'  # a JSON string in the log line, escapes and all
_GROUP = re.compile(rf"Committed discovered model group model_name={_STR} group=\[{_STR},{_STR}\]")


def committed_groups(frontend: StockFrontend) -> list[list[str]]:
    """Worker groups the frontend committed: [namespace, component, endpoint, model
    type, worker type] each."""
    found = _GROUP.finditer(frontend.log_text())
    # The key is a JSON list inside a JSON string: unquote, then parse.
    return [json.loads(json.loads(f'"{m.group(3)}"')) for m in found]


def not_ready(model: str) -> dict[str, Any]:
    return {
        "message": f"Model `{model}` is not ready to serve requests yet. The deployment may "
        "still be starting up or is not fully provisioned. Please retry shortly.",
        "type": "Service Unavailable",
        "code": 503,
    }


Launch = Callable[..., ManagedProcess]


@pytest.fixture
def launch(spawn: Any, stock_python_path: Path, file_kv: Path, tiny_model: Path) -> Launch:
    """``launch(impl, flags, events=None)``: the stock sample worker or our probe engine."""

    def _launch(impl: str, flags: list[str], events: Path | None = None) -> ManagedProcess:
        if impl == "stock":
            argv = [
                stock_python_path, "-m", "dynamo.common.backend.sample_main",
                "--model-name", tiny_model, "--namespace", "dynamo",
                "--discovery-backend", "file", "--disable-kv-routing", *flags,
            ]  # fmt: skip
            env = loopback_env(
                DYN_FILE_KV=file_kv,
                DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0",
                # The stock sample engine never reports quiescence: no prefill drain wait.
                DYN_PREFILL_DRAIN_TIMEOUT_S="0",
            )
        else:
            argv = worker_argv(tiny_model, extra=flags)
            env = worker_env(file_kv=file_kv, events=events)
        proc: ManagedProcess = spawn(argv, env=env, name=f"{impl}-{'-'.join(flags) or 'agg'}")
        return proc

    return _launch


def mdc_record(file_kv: Path) -> dict[str, Any]:
    def read() -> dict[str, Any] | None:
        for path in (file_kv / "v1" / "mdc").glob("*"):
            try:
                record: dict[str, Any] = json.loads(path.read_text())
                return record
            except (ValueError, FileNotFoundError):  # caught mid-write / a renamed temp file
                return None
        return None

    found: dict[str, Any] = wait_until(read, timeout=20, what="the model card")
    return found


#: role alone → (worker group the frontend commits: model type, worker type),
#: whether /v1/models lists it, and the completion status.
ALONE: dict[str, tuple[list[str], int]] = {
    "prefill": (["prefill", "prefill"], 404),
    "decode": (["chat|completions", "decode"], 503),
    "encode": (["", "encode"], 404),
    "agg-route-to-encoder": (["chat|completions", "aggregated"], 503),
    "prefill-route-to-encoder": (["prefill", "prefill"], 404),
}
ALONE_CASES = [("lite", case) for case in ALONE] + [
    ("stock", case) for case in ("prefill", "decode", "encode")
]


@pytest.mark.interop
@pytest.mark.parametrize(("impl", "case"), ALONE_CASES, ids=[f"{i}-{c}" for i, c in ALONE_CASES])
def test_role_alone(
    impl: str,
    case: str,
    launch: Launch,
    stock_frontend_file: StockFrontend,
    file_kv: Path,
    tiny_model: Path,
) -> None:
    """A role that needs peers registers, is grouped like stock's, and is not served."""
    fe = stock_frontend_file
    flags, _mode, _ = CASES[case]
    launch(impl, flags)
    record = mdc_record(file_kv)
    stock = stock_card(case, tiny_model)
    assert {k: v for k, v in record.items() if k != "card_json" and k != "instance_id"} == {
        k: v for k, v in stock.items() if k != "card_json" and k != "instance_id"
    }
    card = record["card_json"]
    assert_same_card(card, stock["card_json"])

    group, status = ALONE[case]
    wait_until(lambda: committed_groups(fe), timeout=20, what="the frontend's worker group")
    assert committed_groups(fe) == [["dynamo", "sample", "generate", *group]]
    assert fe.models() == []
    r = httpx.post(
        fe.url("/v1/completions"),
        json={"model": str(tiny_model), "prompt": "hi", "max_tokens": 3},
        timeout=10,
    )
    assert r.status_code == status
    if status == 503:
        assert r.json() == not_ready(str(tiny_model))
    else:
        assert r.content == b""


PAIRS = [
    (("lite", "prefill"), ("lite", "decode")),
    (("stock", "prefill"), ("lite", "decode")),
    (("lite", "prefill"), ("stock", "decode")),
    (("lite", "encode"), ("lite", "agg-route-to-encoder")),
]


@pytest.mark.interop
@pytest.mark.parametrize(
    ("first", "second"), PAIRS, ids=[f"{a[0]}-{a[1]}+{b[0]}-{b[1]}" for a, b in PAIRS]
)
def test_roles_together_serve(
    first: tuple[str, str],
    second: tuple[str, str],
    launch: Launch,
    stock_frontend_file: StockFrontend,
    tmp_path: Path,
    tiny_model: Path,
) -> None:
    fe = stock_frontend_file
    events: dict[str, Path] = {}
    for impl, case in (first, second):
        events[case] = tmp_path / f"{case}.jsonl"
        launch(impl, CASES[case][0], events=events[case])
    fe.wait_model(str(tiny_model), timeout=30)
    r = httpx.post(
        fe.url("/v1/completions"),
        json={"model": str(tiny_model), "prompt": "hi", "max_tokens": 3},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"
    if ("lite", "prefill") in (first, second):
        # Our prefill worker ran the request as a one-token prefill ...
        (run,) = events_of(events["prefill"], "generate", mode="prefill")
        assert (run["max_tokens"], run["prefill_result"]) == (1, None)
    if ("lite", "decode") in (first, second):
        # ... and our decode worker resumed from the handoff the prefill peer produced.
        (run,) = events_of(events["decode"], "generate", mode="decode")
        params = run["prefill_result"]["disaggregated_params"]
        if first[0] == "stock":
            assert set(params) == {"sample_handle", "completed_tokens"}
        else:
            assert set(params) == {"probe_handle", "completed_tokens"}
    if first == ("lite", "encode"):
        assert read_events(events["agg-route-to-encoder"])
