"""Mutual TLS across hosts with certificates for the hosts' real addresses.

One CA; each host gets its own certificate whose only subject alternative name
is its cluster address (serverAuth + clientAuth). The frontend verifies the
worker's request-plane certificate against the address the worker advertised,
and the worker verifies the frontend's call-home certificate against the
address the frontend advertised: both detected, nothing pinned. A worker whose
certificate names another address is refused.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.netns import Host
from tests.support.services import make_test_pki

pytestmark = pytest.mark.interop


def _issue(pki_dir: Path, name: str, ip: str) -> tuple[Path, Path]:
    """A certificate for ``ip`` signed by the CA in ``pki_dir``."""
    openssl = shutil.which("openssl")
    assert openssl is not None
    key, csr, pem, ext = (pki_dir / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
    ext.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"],
        ["x509", "-req", "-in", str(csr), "-CA", str(pki_dir / "ca.pem"),
         "-CAkey", str(pki_dir / "ca.key"), "-CAcreateserial", "-days", "2",
         "-extfile", str(ext), "-out", str(pem)],
    ):  # fmt: skip
        res = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    return pem, key


def _tls_env(ca: Path, cert: Path, key: Path) -> dict[str, str | None]:
    # The same pair serves (request plane / call-home server) and identifies the
    # process as a client (mutual TLS).
    return {
        "DYN_TCP_TLS_CERT_PATH": str(cert),
        "DYN_TCP_TLS_KEY_PATH": str(key),
        "DYN_TCP_TLS_CLIENT_CA_CERT_PATH": str(ca),
        "DYN_TCP_TLS_CA_CERT_PATH": str(ca),
        "DYN_TCP_TLS_CLIENT_CERT_PATH": str(cert),
        "DYN_TCP_TLS_CLIENT_KEY_PATH": str(key),
    }


@pytest.mark.parametrize("kind", ["lite", "stock"])
def test_mutual_tls_with_certificates_for_the_real_addresses(
    cluster: Cluster, tmp_path: Path, kind: str
) -> None:
    pki = make_test_pki(tmp_path / "pki")
    ca = pki.ca
    fe_env = _tls_env(ca, *_issue(ca.parent, "frontend", cluster.fe_host.addr))
    good = cluster.worker_host("good")
    bad = cluster.worker_host("bad")

    def start(host: Host, cert_ip: str) -> None:
        env = _tls_env(ca, *_issue(ca.parent, host.name, cert_ip))
        if kind == "lite":
            cluster.start_lite_worker(host, **env)
        else:
            cluster.start_stock_worker(host, **env)

    start(good, good.addr)
    cluster.start_frontend(**fe_env)
    cluster.wait_instances(1)
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")
    for stream in (False, True):
        resp = cluster.chat("hello", max_tokens=4, stream=stream)
        assert resp.status_code == 200, resp.text
        assert '"finish_reason":"length"' in resp.text
    # Its certificate names the good worker's address, not its own: refused.
    start(bad, good.addr)
    cluster.wait_instances(2)
    good_proc = good.procs[-1]
    good_proc.stop()
    cluster.wait_instances(1)
    resp = cluster.chat("hello", max_tokens=4)
    assert resp.status_code == 503, resp.text  # the frontend cannot reach it
