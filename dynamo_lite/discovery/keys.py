"""Discovery key layout and record values (shared by every backend, sans-IO).

Both the etcd and the file backend store the same four buckets of compact
JSON values; keys are relative to the store root:

* ``v1/instances/{ns}/{component}/{endpoint}/{id:x}`` → ``Endpoint`` record:
  where to send requests (``transport.tcp = "HOST:PORT/{id:x}/{ns}/{component}/{endpoint}"``).
* ``v1/mdc/{ns}/{component}/{endpoint}/{id:x}`` → ``Model`` record: the model
  card the frontend needs to tokenize and template.

``{id:x}`` is the instance id in lowercase hex. The file backend names each
file after the key below its bucket with every byte outside ``[A-Za-z0-9]``
percent-encoded in upper-case hex.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

INSTANCES = "v1/instances"
MDC = "v1/mdc"
BUCKETS = (INSTANCES, MDC, "v1/event_channels", "v1/event_sources")


def check_name(kind: str, value: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"{kind} {value!r} must be non-empty and contain no '/'")
    return value


@dataclass(frozen=True, slots=True)
class EndpointId:
    """``namespace/component/endpoint``: the name an instance is served under."""

    namespace: str
    component: str
    endpoint: str

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)
        check_name("component", self.component)
        check_name("endpoint", self.endpoint)

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.component}/{self.endpoint}"

    def instance_key(self, instance_id: int) -> str:
        return f"{INSTANCES}/{self.path}/{instance_id:x}"

    def mdc_key(self, instance_id: int) -> str:
        return f"{MDC}/{self.path}/{instance_id:x}"

    def instance_prefix(self) -> str:
        return f"{INSTANCES}/{self.path}/"

    def endpoint_path(self, instance_id: int) -> str:
        """The path the frontend puts in every request frame to this endpoint."""
        return f"{instance_id:x}/{self.path}"

    def __str__(self) -> str:
        return f"{self.namespace}.{self.component}.{self.endpoint}"


def instance_record(
    ep: EndpointId, instance_id: int, transport: dict[str, str], codec: str | None = "msgpack"
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "Endpoint",
        "component": ep.component,
        "endpoint": ep.endpoint,
        "namespace": ep.namespace,
        "instance_id": instance_id,
        "transport": transport,
        # The stock worker writes "cuda" even on CPU-only hosts; matching it keeps
        # our instances interchangeable with stock ones in one worker set.
        "device_type": "cuda",
    }
    if codec is not None:
        record["request_plane_codec"] = codec
    return record


def tcp_transport(host: str, port: int, ep: EndpointId, instance_id: int) -> dict[str, str]:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return {"tcp": f"{host}:{port}/{ep.endpoint_path(instance_id)}"}


def mdc_record(ep: EndpointId, instance_id: int, card: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "Model",
        "namespace": ep.namespace,
        "component": ep.component,
        "endpoint": ep.endpoint,
        "instance_id": instance_id,
        "card_json": card,
    }


def dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- file backend names ------------------------------------------------------

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def encode_file_name(key_below_bucket: str) -> str:
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in key_below_bucket.encode())


def decode_file_name(name: str) -> str:
    out = bytearray()
    i = 0
    raw = name.encode()
    while i < len(raw):
        if raw[i] == 0x25 and i + 3 <= len(raw):
            try:
                out.append(int(raw[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return out.decode(errors="replace")


def split_bucket(key: str) -> tuple[str, str]:
    """``v1/instances/a/b/c/1f`` → (``v1/instances``, ``a/b/c/1f``)."""
    for bucket in BUCKETS:
        if key.startswith(bucket + "/"):
            return bucket, key[len(bucket) + 1 :]
    raise ValueError(f"key {key!r} is not in a known discovery bucket")
