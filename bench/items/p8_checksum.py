"""P8: the card checksums of a model with a large tokenizer.json, cold and warm."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.item import Item, row
from bench.measure import log
from bench.procs import loopback_env
from bench.report import Row
from bench.results import Results
from bench.settings import BENCH, REPO, Layout, Settings
from bench.workers import age


class Checksum(Item):
    name = "P8"
    measures = (
        "ModelFiles.scan of the tiny model with a tokenizer.json of ≥ 12 MiB, in a fresh "
        "process (bench/checksum_probe.py), timed after the imports: pure-Python BLAKE3 and "
        "the blake3 package with the cache off; the disk cache warm (new process) and the "
        "memory cache warm (second scan)"
    )
    target = "≤ 2 s pure, ≤ 10 ms warm"
    runs_alone = True

    def run(self, s: Settings, res: Results) -> None:
        root = big_model(s)
        res.info["p8_tokenizer_bytes"] = (root / "tokenizer.json").stat().st_size
        base = loopback_env(s.workdir / "home-p8", PYTHONPATH=str(REPO))
        (s.workdir / "home-p8").mkdir(exist_ok=True)

        def probe(env: dict[str, str], repeat: int = 1) -> dict[str, Any]:
            out = subprocess.run(
                [str(s.lite_python), str(BENCH / "checksum_probe.py"), str(root), "--repeat",
                 str(repeat)], env={**base, **env}, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"checksum probe failed:\n{out.stderr[-2000:]}")
            result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
            return result

        cache = s.workdir / "p8-cache"
        warm_env = {"XDG_CACHE_HOME": str(cache), "DYN_LITE_PURE_BLAKE3": "1"}
        probe(warm_env)  # fills the disk cache
        for rnd in range(s.p8_rounds):
            log(f"checksum round {rnd + 1}/{s.p8_rounds}")
            pure = probe({"DYN_LITE_PURE_BLAKE3": "1", "DYN_LITE_CHECKSUM_CACHE": "0"})
            assert pure["implementation"] == "pure-python"
            res.add("p8:pure", "lite", pure["seconds"][0])
            native = probe({"DYN_LITE_CHECKSUM_CACHE": "0"})
            if native["implementation"] == "blake3":
                res.add("p8:native", "lite", native["seconds"][0])
                if native["tokenizer"] != pure["tokenizer"]:
                    raise RuntimeError("pure-Python and blake3 checksums differ")
            warm = probe(warm_env, repeat=2)
            res.add("p8:warm_disk", "lite", warm["seconds"][0])
            res.add("p8:warm_memory", "lite", warm["seconds"][1])

    def rows(self, lay: Layout, res: Results) -> list[Row]:
        mib = res.info.get("p8_tokenizer_bytes", 0) / (1 << 20)
        return [
            *row(
                res,
                self.name,
                f"checksum {mib:.0f} MiB tokenizer, pure Python, cold",
                "p8:pure",
                "s",
                "≤ 2 s",
                lambda a, b: b <= 2.0,
            ),
            *row(res, self.name, "checksum, blake3 package, cold", "p8:native", "ms"),
            *row(
                res,
                self.name,
                "checksum, warm disk cache (new process)",
                "p8:warm_disk",
                "ms",
                "≤ 10 ms",
                lambda a, b: b <= 0.010,
            ),
            *row(
                res,
                self.name,
                "checksum, warm memory cache",
                "p8:warm_memory",
                "ms",
                "≤ 10 ms",
                lambda a, b: b <= 0.010,
            ),
        ]


def big_model(s: Settings) -> Path:
    """The tiny model with a tokenizer.json of ≥ ``p8_mib`` MiB (a big BPE vocabulary)."""
    root = s.workdir / "models" / "big"
    shutil.copytree(s.workdir / "models" / "lite", root, dirs_exist_ok=True)
    base = (root / "tokenizer.json").read_text()
    target = s.p8_mib << 20
    count = target // 64
    while True:
        tok = json.loads(base)
        vocab: dict[str, int] = tok["model"]["vocab"]
        for i in range(count):
            vocab[f"Ġtok{i:07d}xyz"] = len(vocab)
            tok["model"]["merges"].append([f"Ġtok{i:07d}", "xyz"])
        text = json.dumps(tok, indent=1, ensure_ascii=False)
        if len(text.encode()) >= target:
            break
        count = count * 11 // 10
    (root / "tokenizer.json").write_text(text)
    age(root)
    return root
