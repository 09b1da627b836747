"""OpenMP wait policy and thread count for the main environment, measured on an idle and on a busy machine.

Each variant runs the same workload in a fresh child process (the wait policy is read once, when the OpenMP
runtime starts): SmolLM2-135M generates 24 new tokens greedily for 16 prompts in batches of 8, the shape of a
generation task's evaluation. Variants alternate round by round, so a slow spell of the machine hits them alike.
With ``--busy N``, N processes spin on the CPU for the whole measurement, as other jobs on a shared machine or a
laptop do. Printed: median seconds per variant and the ratio to the first.

Usage: ``python benchmarks/threading_defaults.py [--rounds 3] [--busy 0,2]``
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

VARIANTS = {
    "OMP_WAIT_POLICY unset (GNU default)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "PASSIVE, 1 thread": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"},
}


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def _run(extra: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", WORKLOAD], env={**env, **extra}, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", default="0,2", help="comma-separated numbers of spinning processes to measure under")
    args = ap.parse_args()
    print(f"cpu_count {os.cpu_count()}")
    for busy in [int(b) for b in args.busy.split(",")]:
        spinners = [mp.Process(target=_spin, args=(time.time() + 3600,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for name, extra in VARIANTS.items():
                    times[name].append(_run(extra))
        finally:
            for p in spinners:
                p.terminate()
        first = None
        print(f"\n{busy} busy processes ({args.rounds} rounds, median s)")
        for name, values in times.items():
            med = statistics.median(values)
            first = first or med
            print(f"  {name:38s} {med:7.2f} s  x{med / first:.2f}")


if __name__ == "__main__":
    main()
