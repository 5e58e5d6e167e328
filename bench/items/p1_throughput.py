"""P1: throughput through the frontend, and the worker's CPU per token."""

from __future__ import annotations

from bench.item import Item, row
from bench.measure import alternate
from bench.phases import Steady, per_token_us
from bench.report import Row
from bench.results import Results
from bench.settings import Layout


def _at_least_1_2(stock: float, lite: float) -> bool:
    return lite >= 1.2 * stock


class Throughput(Item):
    name = "P1"
    measures = (
        "closed loop through the frontend, concurrency 1, 8, 32, 128 by 16, 64, 256 tokens, "
        "--delay 0: tokens/s (requests/s = tokens/s ÷ N) and worker CPU per token in the "
        "same window; every flavour at c=32, stock and lite at the other levels"
    )
    target = "≥ 1.2x stock"  # at c=32
    steady_order = 0

    def round(self, run: Steady, rnd: int) -> None:
        s, res = run.s, run.res
        for c in s.concurrencies:
            for n in s.token_counts:
                for kind in alternate(run.kinds if c == 32 else run.base, rnd):
                    out = run.closed(kind, c, n, s.duration, s.warmup)
                    tok = out["tokens_in_window"]
                    res.add(f"p1:{c}:{n}:tok_s", kind.name, out["tokens_per_s"])
                    res.add(f"p1:{c}:{n}:errors", kind.name, out["errors"])
                    cpu = out["cpu"]
                    res.add(f"p1:{c}:{n}:worker_us", kind.name, per_token_us(cpu[kind.name], tok))
                    res.add(
                        f"p1:{c}:{n}:frontend_us", kind.name, per_token_us(cpu["frontend"], tok)
                    )

    def rows(self, lay: Layout, res: Results) -> list[Row]:
        out: list[Row] = []
        for c in lay.concurrencies:
            for n in lay.token_counts:
                tgt = c == 32
                out += row(
                    res,
                    self.name,
                    f"stream c={c}, {n} tok",
                    f"p1:{c}:{n}:tok_s",
                    "k",
                    self.target if tgt else "",
                    _at_least_1_2 if tgt else None,
                    per_request=n,
                )
        for n in lay.token_counts:
            out += row(
                res, self.name, f"worker CPU/token c=32, {n} tok", f"p1:32:{n}:worker_us", "us"
            )
        for v in lay.variants:
            for n in lay.token_counts:
                out += row(
                    res,
                    self.name,
                    f"stream c=32, {n} tok",
                    f"p1:32:{n}:tok_s",
                    "k",
                    self.target,
                    _at_least_1_2,
                    lite_kind=v,
                    per_request=n,
                )
        return out

    def notes(self, lay: Layout, res: Results) -> list[str]:
        out = []
        for kind in ["stock", "lite", *lay.variants]:
            errs = sum(sum(v.get(kind, [])) for k, v in res.values.items() if k.endswith(":errors"))
            if errs:
                out.append(f"- P1 {kind}: {int(errs)} failed requests")
        return out
