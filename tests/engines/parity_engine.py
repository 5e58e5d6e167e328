"""An engine written against the *stock* SDK, for side-by-side parity checks.

Runs on the stock worker (stock venv) and, unmodified, on dynamo_lite through
``python -m dynamo_lite.compat``. The request's ``annotations`` choose the
behaviour (``mode:<name>``); every step the engine observes is appended to
``$PARITY_EVENTS`` as a JSON line with the request id and a wall-clock
timestamp ``t``, so a test can compare the order of events on both runtimes.

Modes:
  ``tokens``       yield ``max_tokens`` tokens, then ``length``.
  ``self_stop``    yield one token, call ``context.stop_generating()``, then hold.
  ``hold_deaf``    yield one token, then hold for ``PARITY_HOLD`` seconds whatever happens.
  ``hold_first``   hold before the first token (a decode worker waiting for its KV)
                   until killed, then end with an empty ``cancelled`` terminal.
  ``hold_first_ignore``  the same, then yield a token without looking at the context.
  ``hold_first_notify``  the same, but call ``context.notify_first_token()`` first.
  ``raise_early``  raise from ``generate()`` before returning a stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator
from typing import Any

from dynamo.common.backend.run import run
from dynamo.common.backend.sample_engine import SampleLLMEngine

HOLD = float(os.environ.get("PARITY_HOLD", "2.0"))


def record(event: str, context: Any, **fields: Any) -> None:
    path = os.environ.get("PARITY_EVENTS")
    if path:
        line = {"event": event, "id": context.id(), "t": time.time(), **fields}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def _mode(request: dict[str, Any]) -> str:
    for note in request.get("annotations") or ():
        if isinstance(note, str) and note.startswith("mode:"):
            return note[5:]
    return "tokens"


class ParityEngine(SampleLLMEngine):  # type: ignore[misc]
    async def abort(self, context: Any) -> None:
        record("abort", context)

    def generate(self, request: dict[str, Any], context: Any) -> AsyncGenerator[Any, None]:
        mode = _mode(request)
        record("generate", context, mode=mode)
        if mode == "raise_early":
            raise ValueError("refused before streaming")
        return self._stream(mode, request, context)

    async def _stream(
        self, mode: str, request: dict[str, Any], context: Any
    ) -> AsyncGenerator[Any, None]:
        max_tokens = int((request.get("stop_conditions") or {}).get("max_tokens") or 4)
        try:
            if mode.startswith("hold_first"):
                await self._hold(context, until_killed=True)
                if mode == "hold_first_notify":
                    context.notify_first_token()
                if mode != "hold_first_ignore" and context.is_stopped():
                    record("terminal", context)
                    yield {"token_ids": [], "finish_reason": "cancelled"}
                    return
            for i in range(max_tokens):
                record("yield", context, i=i)
                last = i + 1 == max_tokens
                yield {"token_ids": [i + 1], **({"finish_reason": "length"} if last else {})}
                if i == 0 and mode == "self_stop":
                    context.stop_generating()
                    record("stop_generating", context)
                if i == 0 and mode in ("self_stop", "hold_deaf"):
                    await self._hold(context, until_killed=False)
                else:
                    await asyncio.sleep(0.005)
            record("end", context)
        except GeneratorExit:
            record("generator_exit", context)
            raise
        except asyncio.CancelledError:
            record("cancelled", context)
            raise

    async def _hold(self, context: Any, *, until_killed: bool) -> None:
        record("hold", context)
        deadline = time.monotonic() + HOLD
        while time.monotonic() < deadline and not (until_killed and context.is_killed()):
            await asyncio.sleep(0.005)
        record("held", context, killed=context.is_killed(), stopped=context.is_stopped())


if __name__ == "__main__":
    run(ParityEngine)
