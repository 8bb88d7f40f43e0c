#!/usr/bin/env python3
"""Start-up cost of one-shot commands, as a ratio against a bare interpreter measured in the
same run (interleaved, medians), because these machines are noisy.

Also lists which heavy modules each command path imports (prompt_toolkit and pygments must
not be loaded unless colour or the shell is used).

Usage: python3 bench/bench_startup.py [--runs N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_ARGS = ["vmcs", "--image", os.path.join(ROOT, "vtdbg", "samples", "lab-corei7_skylake_x.img.gz"),
               "--at", "0x21000", "--no-colour"]
CASES: Dict[str, List[str]] = {
    "python -c pass": ["-c", "pass"],
    "vtdbg fields": ["-m", "vtdbg", "fields"],
    "vtdbg vmcs (sample)": ["-m", "vtdbg"] + SAMPLE_ARGS,
    "vtdbg vmcs --json (sample)": ["-m", "vtdbg"] + SAMPLE_ARGS + ["--json"],
}
HEAVY = ("prompt_toolkit", "pygments", "tabulate", "construct")


def _time(argv: List[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable] + argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def _heavy_imports(argv: List[str]) -> List[str]:
    done = subprocess.run([sys.executable, "-X", "importtime"] + argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=True)
    names = set()
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            names.add(parts[2].strip().split(".")[0])
    return sorted(n for n in HEAVY if n in names)


def main() -> int:
    """Print a JSON report: median seconds, ratio to `python -c pass`, heavy imports."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    samples: Dict[str, List[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):
        for name, argv in CASES.items():  # interleaved so drift hits every case alike
            samples[name].append(_time(argv))
    base = statistics.median(samples["python -c pass"])
    report = {name: {"median_s": round(statistics.median(times), 4),
                     "ratio_to_bare_python": round(statistics.median(times) / base, 2),
                     "heavy_imports": _heavy_imports(CASES[name])}
              for name, times in samples.items()}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
