"""``python -m dynamo_lite.compat``: stock imports served by dynamo_lite, only when asked.

Each check runs in a child process so the finder never touches this one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.lite import REPO, worker_env
from tests.support.stock import stock_venv_dir


def _run(
    tmp_path: Path, args: list[str], *, pythonpath: tuple[Path, ...] = (), **kw: Any
) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": ":".join(str(p) for p in (REPO, *pythonpath)), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        **kw,
    )  # fmt: skip


IDENTITY = textwrap.dedent(
    """
    import sys
    from unittest.mock import patch

    import dynamo_lite
    import dynamo_lite.run
    import dynamo.common.backend as backend
    import dynamo.common.backend.run as stock_run
    from dynamo._core import Context
    from dynamo.common.backend.engine import EngineConfig, LLMEngine
    from dynamo.common.constants import DisaggregationMode
    from dynamo.common.utils.token_ids import normalize_request_token_ids
    from dynamo.llm import KvEventPublisher, MediaDecoder, MediaFetcher, ModelInput
    from dynamo.llm import ModelRuntimeConfig

    assert backend is dynamo_lite
    assert stock_run is dynamo_lite.run is sys.modules["dynamo.common.backend.run"]
    assert Context is dynamo_lite.Context and LLMEngine is dynamo_lite.LLMEngine
    assert DisaggregationMode is dynamo_lite.DisaggregationMode
    assert ModelInput is dynamo_lite.ModelInput
    with patch("dynamo.common.backend.run.Worker") as fake:
        assert dynamo_lite.run.Worker is fake
    assert dynamo_lite.run.Worker is dynamo_lite.worker.Worker
    # a dynamo_lite module reached under the stock prefix is not loaded twice
    import dynamo.common.backend.config as cfg
    import dynamo_lite.config
    assert cfg is dynamo_lite.config
    try:
        import dynamo.vllm  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("dynamo.vllm must not be found")
    print("ok", sys.argv[1:])
    """
)


def test_stock_imports_are_dynamo_lite_modules(tmp_path: Path) -> None:
    script = tmp_path / "identity.py"
    script.write_text(IDENTITY)
    r = _run(tmp_path, ["-m", "dynamo_lite.compat", str(script), "--flag", "x"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok ['--flag', 'x']"
    (tmp_path / "identity_mod.py").write_text(IDENTITY)
    r = _run(tmp_path, ["-m", "dynamo_lite.compat", "-m", "identity_mod", "a"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok ['a']"


def test_not_active_unless_asked(tmp_path: Path) -> None:
    r = _run(
        tmp_path,
        ["-c", "import dynamo_lite, dynamo_lite.compat, importlib.util as u; "
               "print(u.find_spec('dynamo'))"],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "None"


def test_refuses_to_shadow_a_real_dynamo(tmp_path: Path) -> None:
    fake = tmp_path / "site"
    (fake / "dynamo").mkdir(parents=True)
    (fake / "dynamo" / "__init__.py").write_text("")
    script = tmp_path / "s.py"
    script.write_text("print('ran')\n")
    r = _run(tmp_path, ["-m", "dynamo_lite.compat", str(script)], pythonpath=(fake,))
    assert r.returncode == 2
    assert "ran" not in r.stdout
    assert "refusing" in r.stderr and str(fake / "dynamo") in r.stderr


def test_usage(tmp_path: Path) -> None:
    r = _run(tmp_path, ["-m", "dynamo_lite.compat"])
    assert r.returncode == 2 and "usage" in r.stderr


def _stock_backend_dir() -> Path:
    found = sorted(stock_venv_dir().glob("lib/python3*/site-packages/dynamo/common/backend"))
    if not found:
        pytest.skip("stock ai-dynamo is not installed")
    return found[-1]


RUN_STOCK_SAMPLE = textwrap.dedent(
    """
    # Load the stock sample engine source, unmodified, as a module of the
    # (compat-served) dynamo.common.backend package and run it.
    import importlib.util, sys
    path, argv = sys.argv[1], sys.argv[2:]
    spec = importlib.util.spec_from_file_location("dynamo.common.backend.stock_sample", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    from dynamo.common.backend.run import run
    run(module.SampleLLMEngine, argv)
    """
)


@pytest.mark.interop
def test_unmodified_stock_sample_engine_serves_the_stock_frontend(
    tmp_path: Path, tiny_model: Path, file_kv: Path, spawn: Any, stock_frontend: Any
) -> None:
    stock_sample = _stock_backend_dir() / "sample_engine.py"
    fe = stock_frontend(discovery="file", file_kv=file_kv)
    runner = tmp_path / "run_stock_sample.py"
    runner.write_text(RUN_STOCK_SAMPLE)
    argv = [
        sys.executable, "-m", "dynamo_lite.compat", str(runner), str(stock_sample),
        "--model-name", str(tiny_model), "--discovery-backend", "file", "--delay", "0",
    ]  # fmt: skip
    spawn(argv, env=worker_env(file_kv=file_kv), name="stock-sample-on-lite")
    fe.wait_model(str(tiny_model), timeout=30)
    r = httpx.post(
        fe.url("/v1/chat/completions"),
        timeout=30,
        json={
            "model": str(tiny_model),
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4,
            "logprobs": True,
            "top_logprobs": 2,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert len(body["choices"][0]["logprobs"]["content"]) == 4


def test_stock_entry_modules_run_as_main(tmp_path: Path) -> None:
    for module in ("dynamo.common.backend.sample_main", "dynamo.common.backend.sample_engine"):
        r = _run(tmp_path, ["-m", "dynamo_lite.compat", "-m", module, "--help"])
        assert r.returncode == 0, r.stderr
        assert "--disaggregation-mode" in r.stdout
