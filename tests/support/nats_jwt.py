"""A throwaway NATS operator → account → user chain for ``.creds`` authentication tests.

nats-server in operator mode trusts the operator JWT, learns the account from
a preloaded memory resolver and admits a user that signs the server's nonce
with the seed in its ``.creds`` file. Everything is self-made with ``nkeys``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[bytes, Any, str]:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(seed)
    return seed, pair, pair.public_key.decode()


def _jwt(claims: dict[str, Any], signer: Any) -> str:
    claims = {**claims, "iat": int(time.time())}
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = {"typ": "JWT", "alg": "ed25519-nkey"}
    body = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    return body + "." + _b64(signer.sign(body.encode()))


@dataclass(frozen=True)
class NatsOperator:
    server_conf: Path
    creds: Path


def make_operator_setup(directory: Path, host: str, port: int) -> NatsOperator:
    import nkeys

    directory.mkdir(parents=True, exist_ok=True)
    _, op, op_pub = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, acc, acc_pub = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, _, user_pub = _keypair(nkeys.PREFIX_BYTE_USER)
    unlimited = {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": -1,
        "leaf": -1,
    }
    op_jwt = _jwt(
        {
            "iss": op_pub,
            "sub": op_pub,
            "name": "test-operator",
            "nats": {"type": "operator", "version": 2},
        },
        op,
    )
    acc_jwt = _jwt(
        {
            "iss": op_pub,
            "sub": acc_pub,
            "name": "test-account",
            "nats": {"limits": unlimited, "type": "account", "version": 2},
        },
        op,
    )
    user_jwt = _jwt(
        {
            "iss": acc_pub,
            "sub": user_pub,
            "name": "test-user",
            "nats": {
                "pub": {},
                "sub": {},
                "subs": -1,
                "data": -1,
                "payload": -1,
                "type": "user",
                "version": 2,
            },
        },
        acc,
    )
    conf = directory / "operator.conf"
    conf.write_text(
        f'listen: "{host}:{port}"\noperator: "{op_jwt}"\nresolver: MEMORY\n'
        f'resolver_preload: {{\n  {acc_pub}: "{acc_jwt}"\n}}\n'
    )
    creds = directory / "user.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return NatsOperator(conf, creds)
