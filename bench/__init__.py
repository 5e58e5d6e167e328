"""The benchmark against the stock Dynamo 1.6.1 worker: measured items and one runner.

``python bench/run.py`` (or ``python -m bench.run``) runs it; bench/README.md
says what each item measures. Layout:

* ``items/`` — one module per measured item (P1 … P8): its definition, its
  measuring hooks, its rows and target;
* ``item.py`` — the item interface; ``phases.py`` — the phases items share
  (the steady session, the start → listed → idle → stop trials);
* ``settings.py`` — command line and flavours; ``workers.py`` — starting the
  frontend, workers and helpers; ``measure.py`` — alternation and noisy
  windows; ``results.py`` — values and the results file; ``report.py`` — the
  table; ``runner.py`` — the runner;
* ``procs.py`` — process plumbing, also imported by the helper processes
  ``loadgen.py``, ``direct.py`` and ``checksum_probe.py``, which run as
  scripts under other interpreters (the stock venv's) and stay standalone.
"""
