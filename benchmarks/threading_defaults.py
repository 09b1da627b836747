"""OpenMP wait policy and thread count for the main environment, measured on an idle and on a busy machine.

Each variant runs the same workload in a fresh child process (the wait policy is read once, when the OpenMP
runtime starts): SmolLM2-135M generates 24 new tokens greedily for 16 prompts in batches of 8, the shape of a
generation task's evaluation. Variants alternate round by round, so a slow spell of the machine hits them alike.
With ``--busy N``, N processes spin on the CPU for the whole measurement, as other jobs on a shared machine or a
laptop do. Printed: median seconds per variant, the ratio to the first, and the load average (a machine that is
already loaded by others makes the "0 busy" numbers a busy measurement too: read the load average before comparing).

The variants are what ``cme-bench`` can choose for the user (``cme_bench.cli.apply_performance_defaults``): the
OpenMP wait policy, the thread count, and preloading tcmalloc (``TCMALLOC``: the Debian package libtcmalloc-minimal4;
the variant is skipped when the library is missing).

Usage: ``python benchmarks/threading_defaults.py [--rounds 3] [--busy 0,2] [--variants all]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

WORKLOAD = """
import time, torch
from cme_bench.models import load_model
m = load_model("smollm2-135m")
tok = m.tokenizer
prompts = [f"Question {i}: what is the capital of country number {i}? Answer:" for i in range(16)]
t0 = time.perf_counter()
with torch.inference_mode():
    for i in range(0, 16, 8):
        batch = tok(prompts[i : i + 8], return_tensors="pt", padding=True)
        m.model.generate(**batch, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
print(time.perf_counter() - t0)
"""

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
CONTROLLED = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "LD_PRELOAD", "CME_BENCH_NO_PERF_DEFAULTS")

VARIANTS = {
    "OMP_WAIT_POLICY unset (GNU default)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "PASSIVE, 1 thread": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"},
    "PASSIVE + tcmalloc": {"OMP_WAIT_POLICY": "PASSIVE", "LD_PRELOAD": TCMALLOC},
}


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def _run(extra: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    out = subprocess.run([sys.executable, "-c", WORKLOAD], env={**env, **extra}, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", default="0,2", help="comma-separated numbers of spinning processes to measure under")
    ap.add_argument("--variants", default="all", help="comma-separated variant numbers (1-based) or all")
    args = ap.parse_args()
    names = list(VARIANTS)
    chosen = names if args.variants == "all" else [names[int(i) - 1] for i in args.variants.split(",")]
    variants = {n: VARIANTS[n] for n in chosen if "LD_PRELOAD" not in VARIANTS[n] or os.path.exists(TCMALLOC)}
    print(f"cpu_count {os.cpu_count()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for busy in [int(b) for b in args.busy.split(",")]:
        spinners = [mp.Process(target=_spin, args=(time.time() + 3600,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            times: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(args.rounds):
                for name, extra in variants.items():
                    times[name].append(_run(extra))
        finally:
            for p in spinners:
                p.terminate()
        first = None
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n{busy} busy processes ({args.rounds} rounds, median s; load average after: {load})")
        for name, values in times.items():
            med = statistics.median(values)
            first = first or med
            print(f"  {name:38s} {med:7.2f} s  x{med / first:.2f}")


if __name__ == "__main__":
    main()
