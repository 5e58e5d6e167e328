#!/usr/bin/env python3
"""Benchmark dynamo_lite against the stock Dynamo 1.6.1 worker (the one runner).

    python bench/run.py [options]       # or: python -m bench.run [options]

The runner itself is :mod:`bench.runner`; this file keeps the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the ``bench`` package importable from the checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
