"""P2: the worker driven directly (no frontend), worker CPU per token, with either client."""

from __future__ import annotations

from bench.item import Item, variant_rows
from bench.measure import alternate, log, measured
from bench.phases import Steady, per_token_us
from bench.report import Row
from bench.results import Results
from bench.settings import Layout
from bench.workers import start_direct

CLIENTS = ("stock", "lite")


class Direct(Item):
    name = "P2"
    measures = (
        "bench/direct.py with the stock runtime's client or dynamo_lite.client.Client, no "
        "frontend: 32 concurrent streams of 64 tokens; worker CPU ÷ items received"
    )
    target = "≤ 0.8x stock"
    steady_order = 2  # after P3 in each round, as before the items were split

    def setup(self, run: Steady) -> None:
        for client in CLIENTS:
            run.helpers[f"direct-{client}"] = start_direct(run.s, client, run.kv)

    def round(self, run: Steady, rnd: int) -> None:
        s, res = run.s, run.res
        for client in CLIENTS:
            helper = run.helpers[f"direct-{client}"]
            for kind in alternate(run.kinds, rnd):
                out = measured(
                    lambda helper=helper, kind=kind: helper.call(  # type: ignore[misc]
                        op="closed",
                        component=kind.component,
                        concurrency=s.p2_concurrency,
                        tokens=s.p2_tokens,
                        warmup=s.warmup,
                        duration=s.duration,
                        pids=run.pids,
                    ),
                    f"P2 {client}→{kind.name}",
                    s.attempts,
                )
                res.note_machine(out)
                tok = out["tokens_in_window"]
                if out["errors"]:
                    log(f"  P2 {client}→{kind.name}: {out['errors']} errors {out['error_samples']}")
                res.add(
                    f"p2:{client}:worker_us", kind.name, per_token_us(out["cpu"][kind.name], tok)
                )
                res.add(f"p2:{client}:tok_s", kind.name, out["tokens_per_s"])
                res.add(
                    f"p2:{client}:client_us", kind.name, per_token_us(out["cpu"]["client"], tok)
                )

    def rows(self, lay: Layout, res: Results) -> list[Row]:
        out: list[Row] = []
        for client in CLIENTS:
            out += variant_rows(
                lay,
                res,
                self.name,
                f"worker CPU/token, {client} client",
                f"p2:{client}:worker_us",
                "us",
                self.target,
                lambda a, b: b <= 0.8 * a,
            )
        return out
