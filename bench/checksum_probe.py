"""P8 probe: time the card checksums of one model directory in this process.

Run by ``run.py`` with the environment selecting the implementation
(``DYN_LITE_PURE_BLAKE3``) and the cache (``DYN_LITE_CHECKSUM_CACHE``,
``XDG_CACHE_HOME``). Imports happen before the clock starts; the timed part is
what the worker does at start: ``ModelFiles.scan`` (every card file's
checksum). ``--repeat 2`` times a second scan in the same process, which the
in-memory cache answers. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    from dynamo_lite import checksum
    from dynamo_lite.card import ModelFiles

    times: list[float] = []
    files = None
    for _ in range(args.repeat):
        start = time.perf_counter()
        files = ModelFiles.scan(args.model_dir)
        times.append(time.perf_counter() - start)
    assert files is not None
    size = sum(entry[2] for entry in files.files.values())
    print(
        json.dumps(
            {
                "seconds": times,
                "bytes": size,
                "implementation": checksum.implementation(),
                "tokenizer": files.files["tokenizer.json"][1],
            }
        )
    )


if __name__ == "__main__":
    main()
