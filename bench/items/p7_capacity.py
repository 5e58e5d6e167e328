"""P7: how many concurrent 5 s streams each flavour holds through the frontend."""

from __future__ import annotations

import time

from bench.item import Item, lite_kinds, variant_rows
from bench.measure import alternate, log
from bench.procs import LOOPBACK
from bench.report import Row, median
from bench.results import Results
from bench.settings import Kind, Layout, Settings
from bench.workers import broken, model_dir, pids, session, start_loadgen

IDEAL = 5.0  # 100 tokens at 50 ms
BOUND = 1.2


class Capacity(Item):
    name = "P7"
    measures = (
        "--delay 0.05 and 100 tokens (an ideal stream lasts 5 s): C streams started evenly "
        "over 1 s through the frontend; a level passes with 0 errors (a stream over 15 s is "
        "one) and a median stream ≤ 6 s; levels 500, 750, 1000, 1250, 1500, 2000 until a "
        "flavour fails, then one level halfway between its last pass and first failure"
    )
    target = "≥ 1.5x stock"
    runs_alone = True

    def run(self, s: Settings, res: Results) -> None:
        kinds = s.kinds + s.variants
        with session(s, kinds, "capacity", delay=0.05, max_tokens=100) as (fe, workers, _):
            assert fe is not None
            lg = start_loadgen(s)
            res.info["loadgen"] = lg.ready
            watched = pids(workers, fe)
            for kind in list(kinds):
                out = lg.call(op="closed", host=LOOPBACK, port=fe.port,
                              model=str(model_dir(s, kind)), concurrency=4, tokens=2,
                              warmup=0.0, duration=0.3)  # fmt: skip
                if broken(res, kind, out, workers[kind.name]):
                    kinds.remove(kind)
            passed: dict[str, int] = {k.name: 0 for k in kinds}
            failed: dict[str, int] = {}

            def trial(kind: Kind, level: int) -> bool:
                out = lg.call(
                    timeout=300,
                    op="burst",
                    host=LOOPBACK,
                    port=fe.port,
                    model=str(model_dir(s, kind)),
                    concurrency=level,
                    tokens=100,
                    ramp=1.0,
                    stream_timeout=3 * IDEAL,
                    pids=watched,
                )
                ok = bool(out["errors"] == 0 and out["median"] <= BOUND * IDEAL)
                cores = {k: round(v / out["elapsed"], 2) for k, v in out["cpu"].items()}
                log(
                    f"  P7 {kind.name} {level} streams: {'pass' if ok else 'FAIL'} "
                    f"median {out['median']:.2f}s p99 {out['p99']:.2f}s errors {out['errors']} "
                    f"cores {cores}"
                )
                res.info.setdefault("p7_trials", []).append(
                    {
                        "kind": kind.name,
                        "level": level,
                        **{k: out[k] for k in ("ok", "errors", "median", "p99", "max")},
                        "cores": cores,
                    }
                )
                if ok:
                    passed[kind.name] = max(passed[kind.name], level)
                    res.add(f"p7:median@{level}", kind.name, out["median"])
                else:
                    failed[kind.name] = min(failed.get(kind.name, level), level)
                time.sleep(1.0)  # let the sockets of the last burst close
                return ok

            for i, level in enumerate(s.p7_levels):
                live = [k for k in alternate(kinds, i) if k.name not in failed]
                if not live:
                    break
                log(f"P7 level {level}")
                for kind in live:
                    trial(kind, level)
            if s.p7_refine:
                for i, kind in enumerate(alternate(kinds, 1)):
                    lo, hi = passed[kind.name], failed.get(kind.name)
                    if hi is not None and hi - lo > 100:
                        mid = (lo + hi) // 2 // 50 * 50
                        log(f"P7 refine {kind.name} at {mid} ({i})")
                        trial(kind, mid)
            for kind in kinds:
                res.add("p7:max", kind.name, passed[kind.name])
            lg.stop()

    def rows(self, lay: Layout, res: Results) -> list[Row]:
        return variant_rows(
            lay,
            res,
            self.name,
            "concurrent 5 s streams held",
            "p7:max",
            "int",
            self.target,
            lambda a, b: b >= 1.5 * a,
        )

    def notes(self, lay: Layout, res: Results) -> list[str]:
        out = []
        for kind in ["stock", *lite_kinds(lay)]:
            best = res.get("p7:max", kind)
            if best and not best[0]:
                out.append(f"- P7 {kind}: failed at the lowest level, {lay.p7_lowest} streams")
            if best and best[0]:
                med = res.get(f"p7:median@{int(best[0])}", kind)
                if med:
                    out.append(
                        f"- P7 {kind}: {int(best[0])} streams, median stream "
                        f"{median(med):.2f} s (bound {BOUND * IDEAL:.1f} s)"
                    )
        return out
