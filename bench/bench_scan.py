"""Benchmark: `vtdbg scan` throughput against `cat FILE > /dev/null` on the same 4 GiB file.

Two images are built (unless they already exist in --dir): lab memory (the real lab image
when committed, else the synthetic one) at the start, the rest of 4 GiB either sparse or
random.  For each, the page cache is warmed, then the baseline (`cat`) and the scan run
interleaved, three times each; the medians are compared.  Start-up is excluded (the target
is opened before the clock starts) and candidate validation is included (the whole
`vtdbg.core.scan.scan`, EPT summaries and grouping too).  Target: scan >= 80% of cat.

    python bench/bench_scan.py [--dir /var/tmp/vtdbg-bench] [--size-gib 4] [--keep]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.lab import lab_memory  # noqa: E402
from vtdbg.core.scan import scan  # noqa: E402
from vtdbg.target.sniff import open_dump  # noqa: E402

GiB = 1 << 30


def build(path: Path, size: int, rest: str) -> None:
    """Lab memory at offset 0, then zeros (a sparse hole) or random bytes up to ``size``."""
    if path.exists() and path.stat().st_size == size:
        return
    image, _ = lab_memory()
    with open(path, "wb") as out:
        out.write(image)
        if rest == "sparse":
            out.truncate(size)
        else:
            left = size - len(image)
            block = 64 << 20
            while left > 0:
                out.write(os.urandom(min(block, left)))
                left -= block


def time_cat(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run("cat '%s' > /dev/null" % path, shell=True, check=True)
    return time.perf_counter() - started


def time_scan(path: Path) -> float:
    target = open_dump(str(path))
    try:
        started = time.perf_counter()
        result = scan(target)
        elapsed = time.perf_counter() - started
    finally:
        target.close()
    assert result.vmcs, "the scan found no VMCS in the lab memory"
    return elapsed


def run(path: Path, rounds: int) -> dict:
    time_cat(path)  # warm the page cache
    time_scan(path)
    cats, scans = [], []
    for _ in range(rounds):
        cats.append(time_cat(path))
        scans.append(time_scan(path))
    size = path.stat().st_size
    cat_s, scan_s = statistics.median(cats), statistics.median(scans)
    return {"file": str(path), "cat_s": cat_s, "scan_s": scan_s, "cat_gbps": size / cat_s / 1e9,
            "scan_gbps": size / scan_s / 1e9, "ratio": cat_s / scan_s, "cats": cats, "scans": scans}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/var/tmp/vtdbg-bench")
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the images for the next run")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    size = int(args.size_gib * GiB)
    ok = True
    for rest in ("sparse", "random"):
        path = folder / ("lab-%s-%s.img" % (rest, args.size_gib))
        build(path, size, rest)
        result = run(path, args.rounds)
        verdict = "ok" if result["ratio"] >= 0.8 else "TOO SLOW"
        ok = ok and result["ratio"] >= 0.8
        print("%-7s cat %.3f s (%.2f GB/s)  scan %.3f s (%.2f GB/s)  scan/cat throughput %.2f  %s"
              % (rest, result["cat_s"], result["cat_gbps"], result["scan_s"], result["scan_gbps"], result["ratio"],
                 verdict))
        if not args.keep:
            path.unlink()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
