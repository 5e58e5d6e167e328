"""Bridging the global Prometheus registry when metrics are multi-process.

Engines such as vLLM keep their metrics in ``PROMETHEUS_MULTIPROC_DIR``
(``.db`` files written by every process) and read that variable on every
registry access, so it has to be set before the engine starts and stay set:
:func:`ensure_prometheus_multiproc_dir` does that (a temporary directory the
caller owns, unless an operator set one).

:func:`bridge_global_registry` is the body of ``register_global_registry``:
with a usable multi-process directory it puts a ``MultiProcessCollector`` on
the global ``REGISTRY`` and bridges it. When one is already there (Kubernetes
deployments set the variable up front and the engine registered it), adding
a second raises ``ValueError``; then ``REGISTRY`` already covers the engine's
own prefix and only the multi-process-only prefixes (``lmcache:``…) need a
separate registry, filtered so nothing is exported twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tempfile

__all__ = ["bridge_global_registry", "ensure_prometheus_multiproc_dir"]

logger = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"

#: ``register_engine_registry(metrics, registry, prefix_filters=, exclude_prefixes=)``.
Register = Callable[..., None]


def ensure_prometheus_multiproc_dir(prefix: str) -> tempfile.TemporaryDirectory[str] | None:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at a directory for the engine's lifetime.

    Returns the new temporary directory (the caller cleans it up), or None
    when the operator set the variable (a missing directory is created).
    """
    preset = os.environ.get(ENV)
    if preset:
        if not os.path.isdir(preset):
            logger.warning("%s=%s does not exist, recreating", ENV, preset)
            os.makedirs(preset, exist_ok=True)
        return None
    import tempfile  # here: it loads shutil, random, bz2 and lzma

    owned = tempfile.TemporaryDirectory(prefix=prefix)
    os.environ[ENV] = owned.name
    logger.debug("Created %s at: %s", ENV, owned.name)
    return owned


def bridge_global_registry(
    metrics: Any,
    register: Register,
    *,
    engine_prefix: str,
    multiproc_only_prefixes: Sequence[str] | None,
    exclude_prefixes: Sequence[str] | None,
) -> None:
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    extra = list(multiproc_only_prefixes or ())
    every = [engine_prefix, *extra]
    directory = os.environ.get(ENV)
    if directory and os.path.isdir(directory):
        try:
            multiprocess.MultiProcessCollector(REGISTRY)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            logger.debug("MultiProcessCollector already on REGISTRY (%s); splitting", exc)
            register(
                metrics, REGISTRY, prefix_filters=[engine_prefix], exclude_prefixes=exclude_prefixes
            )
            if extra:
                separate = CollectorRegistry()
                multiprocess.MultiProcessCollector(separate)  # type: ignore[no-untyped-call]
                register(metrics, separate, prefix_filters=extra, exclude_prefixes=exclude_prefixes)
            return
    elif directory:
        logger.warning(
            "%s=%s is not a valid directory; falling back to single-process metrics",
            ENV,
            directory,
        )
    register(metrics, REGISTRY, prefix_filters=every, exclude_prefixes=exclude_prefixes)
