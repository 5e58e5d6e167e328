"""The configuration layer: one place reads the environment, with one set of
parsers, and every variable it reads is listed in ``config.ENV_VARS`` and
documented in the README's tables."""

from __future__ import annotations

import ast
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamo_lite import config, envparse
from dynamo_lite.config import ENV_VARS, RuntimeSettings, Settings, as_settings

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "dynamo_lite"

#: Modules allowed to touch ``os.environ``: the configuration layer, the CLI
#: (it builds a child's environment), the stock stand-ins (they mimic stock
#: modules) and the conformance kit (a test tool).
ENV_OWNERS = ("config.py", "cli.py", "compat/", "conformance/")
#: module → why it still touches the process environment.
ENV_EXCEPTIONS = {
    # Stock behaviour: an engine's prometheus_client reads the variable on
    # every registry access, so it is set in the process environment for it.
    "multiproc.py": "writes PROMETHEUS_MULTIPROC_DIR for the engine's prometheus_client",
}
#: In ENV_VARS without a literal in the code: msgpack reads it itself at import.
READ_BY_LIBRARIES = {"MSGPACK_PUREPYTHON"}

VAR_NAME = re.compile(r"^(DYN|ETCD|NATS|OTEL|PROMETHEUS|XDG|MSGPACK)_[A-Z0-9_]+$")


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("compat/", "conformance/")):
            continue
        yield rel, ast.parse(path.read_text(), filename=str(path))


def _env_uses(tree: ast.Module) -> list[int]:
    """Lines that name ``environ`` or ``getenv`` (attribute, name or import)."""
    lines = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Name):
            name = node.id
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(a.name in ("environ", "getenv", "environb") for a in node.names)
        ):
            name = "environ"
        if name in ("environ", "environb", "getenv", "putenv", "unsetenv"):
            lines.append(getattr(node, "lineno", 0))
    return lines


def test_no_module_below_the_configuration_layer_reads_the_environment() -> None:
    found = {}
    for rel, tree in _modules():
        if rel.startswith(ENV_OWNERS) or rel in ENV_EXCEPTIONS:
            continue
        lines = _env_uses(tree)
        if lines:
            found[rel] = lines
    assert not found, f"os.environ/getenv outside dynamo_lite.config: {found}"
    for rel in ENV_EXCEPTIONS:
        assert _env_uses(ast.parse((PACKAGE / rel).read_text())), f"{rel} no longer needs it"


def _env_var_literals() -> dict[str, set[str]]:
    """Every string literal shaped like a variable name, by module, outside
    the ENV_VARS list itself."""
    found: dict[str, set[str]] = {}
    for rel, tree in _modules():
        skip: set[int] = set()
        if rel == "config.py":
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "ENV_VARS" for t in node.targets
                ):
                    skip |= {id(n) for n in ast.walk(node.value)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
                and VAR_NAME.match(node.value)
            ):
                found.setdefault(node.value, set()).add(rel)
    return found


def test_every_variable_named_in_the_code_is_listed_and_vice_versa() -> None:
    literals = _env_var_literals()
    unlisted = {name: sorted(where) for name, where in literals.items() if name not in ENV_VARS}
    assert not unlisted, f"add to config.ENV_VARS (and the README): {unlisted}"
    unused = ENV_VARS - literals.keys() - READ_BY_LIBRARIES
    assert not unused, f"listed in config.ENV_VARS but read nowhere: {sorted(unused)}"


class _Recording(dict[str, str]):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def test_settings_read_exactly_the_listed_variables() -> None:
    env = _Recording()
    Settings.from_env(env)
    assert env.read <= ENV_VARS, env.read - ENV_VARS
    # Not read into Settings: multiproc's own variable and msgpack's.
    assert ENV_VARS - env.read == {"PROMETHEUS_MULTIPROC_DIR", "MSGPACK_PUREPYTHON"}


def _readme_variables() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for name in re.findall(r"`([^`]+)`", first):
            assert VAR_NAME.match(name), f"README: {name!r} is not a full variable name"
            names.add(name)
    return names


def test_the_readme_tables_list_exactly_the_variables_read() -> None:
    documented = _readme_variables()
    assert documented - ENV_VARS == set(), "documented but not read"
    assert ENV_VARS - documented == set(), "read but not in the README's Configuration tables"


def test_settings_accepts_every_form_the_worker_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_TCP_TLS_INSECURE", "1")
    monkeypatch.setenv("DYN_SYSTEM_PORT", "9345")
    runtime = RuntimeSettings(tcp_host="127.0.0.1")
    s = as_settings(runtime)
    assert s.runtime is runtime  # the older API: the rest comes from the process
    assert s.tcp_tls.insecure
    assert as_settings(None).runtime.system_port == 9345
    plain = as_settings({"DYN_SELF_HOST_METADATA": "0"})
    assert not plain.self_host_metadata and not plain.tcp_tls.insecure
    assert as_settings(plain) is plain


def test_settings_parts() -> None:
    s = Settings.from_env(
        {
            "DYN_EVENT_PLANE": "nats",
            "DYN_EVENT_PLANE_HOST": "10.1.2.3",
            "DYN_LITE_STREAM_DEBUG": "yes",
            "DYN_LITE_UVLOOP": "0",
            "DYN_LITE_PURE_BLAKE3": "anything",
            "DYN_LITE_CHECKSUM_CACHE": "off",
            "DYN_ENGINE_REQUEST_LIMIT": "4",
            "DYN_SYSTEM_LIVE_PATH": "/alive",
            "NATS_SERVER": "nats://a:1, nats://b:2,",
            "OTEL_EXPORT_ENABLED": "on",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "ETCD_AUTH_USERNAME": "root",
            "DYN_LITE_ETCD_CLIENT": " GRPC ",
        }
    )
    assert (s.event_plane, s.event_plane_host) == ("nats", "10.1.2.3")
    sw = s.switches
    assert sw.stream_debug and not sw.uvloop and sw.pure_blake3 and not sw.pure_xxh3
    assert sw.checksum_cache is None
    assert s.engine_limits.limit == 4 and s.engine_limits.queue_limit is None
    assert s.system.live_path == "/alive" and s.system.health_path == "/health"
    assert s.nats.servers == ("nats://a:1", "nats://b:2")
    assert s.otel.enabled and s.otel.traces_protocol == s.otel.metrics_protocol == "http/protobuf"
    assert s.otel.metric_interval == 0.5
    assert (s.discovery.username, s.discovery.etcd_client) == ("root", "grpc")
    assert s.self_host_metadata and s.health_check_payload is None


def test_historical_boolean_spellings_are_kept() -> None:
    def switches(**env: str) -> config.ProcessSwitches:
        return config.ProcessSwitches.from_env(env)

    # The pure-hash switches are on for anything but "0" (even "false").
    assert switches(DYN_LITE_PURE_XXH3="false").pure_xxh3
    assert not switches(DYN_LITE_PURE_XXH3="0").pure_xxh3
    # uvloop knows no "off"; the stream debug switch no "on".
    assert switches(DYN_LITE_UVLOOP="off").uvloop
    assert not switches(DYN_LITE_STREAM_DEBUG="on").stream_debug
    # Self-hosting is off only for "0"/"false".
    assert Settings.from_env({"DYN_SELF_HOST_METADATA": "no"}).self_host_metadata
    assert not Settings.from_env({"DYN_SELF_HOST_METADATA": "FALSE"}).self_host_metadata


def test_settings_import_is_cheap() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import dynamo_lite.config as c; c.Settings.from_env({}); "
        "heavy = {'nats', 'httpx', 'prometheus_client', 'structlog', 'h11'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.strip()
    assert out == "[]"


# --- the parsers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        (" on ", True),
        ("Yes", True),
        ("0", False),
        ("false", False),
        ("OFF", False),
        ("no", False),
    ],
)
def test_parse_bool_stock_spellings(raw: str, expected: bool) -> None:
    assert envparse.parse_bool({"X": raw}, "X", not expected) is expected


def test_parse_bool_unset_blank_and_garbage(caplog: pytest.LogCaptureFixture) -> None:
    assert envparse.parse_bool({}, "X", True) is True
    assert envparse.parse_bool({"X": "  "}, "X", False) is False
    with caplog.at_level(logging.WARNING, logger="dynamo_lite.envparse"):
        assert envparse.parse_bool({"X_FLAG": "maybe"}, "X_FLAG", True) is True
    assert "X_FLAG" in caplog.text


def test_parse_port() -> None:
    port = envparse.parse_port
    assert port({}, "P", None) is None
    assert port({"P": "0"}, "P", None) == 0
    assert port({"P": "65535"}, "P", None) == 65535
    assert port({"P": "-1"}, "P", None) is None  # stock's "off"
    assert port({"P": "65536"}, "P", None) is None
    assert port({"P": "http"}, "P", 7) == 7


def test_parse_list() -> None:
    assert envparse.parse_list({"L": " a, ,b ,, c"}, "L", ("d",)) == ("a", "b", "c")
    assert envparse.parse_list({"L": " , "}, "L", ("d",)) == ("d",)
    assert envparse.parse_list({}, "L", ()) == ()


def test_parse_float_rules(caplog: pytest.LogCaptureFixture) -> None:
    f = envparse.parse_float
    assert f({"F": "2.5"}, "F", 1.0) == 2.5
    assert f({"F": "0"}, "F", 1.0) == 0.0
    assert f({"F": "0"}, "F", 1.0, allow_zero=False) == 1.0
    assert f({"F": "-3"}, "F", 1.0) == 1.0
    assert f({"F": "-3"}, "F", 1.0, clamp_negative=True) == 0.0
    with caplog.at_level(logging.WARNING, logger="dynamo_lite.envparse"):
        for bad in ("inf", "nan", "soon"):
            assert f({"MY_SECS": bad}, "MY_SECS", None) is None
    assert caplog.text.count("MY_SECS") == 3


def test_parse_int_and_choice() -> None:
    assert envparse.parse_int({"I": " 42 "}, "I", 0) == 42
    assert envparse.parse_int({"I": "4.2"}, "I", 0) == 0
    assert envparse.parse_int({"I": "-1"}, "I", 9, minimum=0) == 9
    assert envparse.parse_choice({"C": " JSON"}, "C", "msgpack", ("msgpack", "json")) == "json"
    assert envparse.parse_choice({"C": "xml"}, "C", "msgpack", ("msgpack", "json")) == "msgpack"


@given(st.text(max_size=12))
def test_parsers_never_raise(raw: str) -> None:
    env = {"V": raw}
    assert isinstance(envparse.parse_bool(env, "V", False), bool)
    value = envparse.parse_float(env, "V", 1.0)
    assert math.isfinite(value) and value >= 0
    assert isinstance(envparse.parse_int(env, "V", 0), int)
    port = envparse.parse_port(env, "V", None)
    assert port is None or 0 <= port <= 65535
    assert all(item and item == item.strip() for item in envparse.parse_list(env, "V", ()))


@given(st.integers(min_value=0, max_value=65535), st.sampled_from(["", " ", "\t"]))
def test_parse_port_accepts_every_port(value: int, pad: str) -> None:
    assert envparse.parse_port({"P": f"{pad}{value}{pad}"}, "P", None) == value


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_parse_float_round_trips(value: float) -> None:
    assert envparse.parse_float({"F": repr(value)}, "F", -1.0) == value


def test_pinned_switches_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_LITE_PURE_BLAKE3", "1")
    assert config.process_switches().pure_blake3
    config.pin_process_switches(config.ProcessSwitches(pure_blake3=False))
    try:
        assert not config.process_switches().pure_blake3
    finally:
        config.pin_process_switches(None)
    assert config.process_switches().pure_blake3
