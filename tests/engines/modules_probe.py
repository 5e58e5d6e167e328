"""Run an engine script and write down what it has imported once it serves.

    python modules_probe.py OUT SCRIPT [ARGS...]

Runs ``SCRIPT`` as ``__main__`` with ``ARGS`` (compiled and executed as
``python SCRIPT`` would, without runpy, which would load pkgutil); a daemon thread waits for the
worker's model record in the file store (``$DYN_FILE_KV/v1/mdc``), lets it
idle for ``MODULES_PROBE_IDLE`` seconds (default 1), then writes
``sorted(sys.modules)`` to ``OUT`` (one name a line, via a rename so a reader
never sees part of it). The probe itself imports only ``threading``, which
the runtime imports anyway.
"""

from __future__ import annotations

import os
import sys
import threading
import time


def _watch(out: str) -> None:
    mdc = os.path.join(os.environ["DYN_FILE_KV"], "v1", "mdc")
    while True:
        try:
            if any(not name.startswith(".") for name in os.listdir(mdc)):
                break
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    time.sleep(float(os.environ.get("MODULES_PROBE_IDLE", "1")))
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(sorted(sys.modules)) + "\n")
    os.replace(tmp, out)


def main() -> None:
    out, script, *args = sys.argv[1:]
    threading.Thread(target=_watch, args=(out,), daemon=True, name="modules-probe").start()
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    with open(script, "rb") as f:
        code = compile(f.read(), script, "exec")
    # A fresh __main__ for the script; this module lives on as _modules_probe.
    main = type(sys)("__main__")
    main.__file__ = script
    main.__builtins__ = __builtins__
    sys.modules["_modules_probe"] = sys.modules["__main__"]
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


if __name__ == "__main__":
    main()
