"""``python -m dynamo_lite.compat SCRIPT [args]`` or ``… -m MODULE [args]``.

Runs a program written for ``dynamo.common.backend`` with its ``dynamo.*``
imports served by dynamo_lite (see :mod:`dynamo_lite.compat`).
"""

from __future__ import annotations

import os
import runpy
import sys

from . import RealDynamoInstalled, install, main_target

USAGE = (
    "usage: python -m dynamo_lite.compat SCRIPT [args...]\n"
    "       python -m dynamo_lite.compat -m MODULE [args...]\n"
)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        return 0 if args else 2
    try:
        install()
    except RealDynamoInstalled as exc:
        sys.stderr.write(f"dynamo_lite.compat: refusing to run: {exc}\n")
        return 2
    if args[0] == "-m":
        if len(args) < 2:
            sys.stderr.write(USAGE)
            return 2
        module, rest = args[1], args[2:]
        sys.argv = [module, *rest]
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        kind, target = main_target(module)
        if kind == "path":
            sys.argv[0] = target
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        return 0
    script, rest = args[0], args[1:]
    sys.argv = [script, *rest]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
