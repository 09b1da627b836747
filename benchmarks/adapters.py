"""Speed of TeamLoRA's fused path against LoRA and MoELoRA on one FFN projection (forward + backward).

Measures, side by side in one run (interleaved, so machine load hits every variant alike), the median time of one
training step's forward and backward through a single adapted ``nn.Linear`` shaped like LLaMA-7B's ``up_proj``
(4096 -> 11008) or a CPU-sized projection with the same aspect ratio (default 1024 -> 2752):

- LoRA of rank r_A = k * r_B (PEFT's own ``lora.Linear``), the "same total rank" baseline;
- TeamLoRA, fused (default path) and reference loop;
- MoELoRA with k experts of rank r_B (same parameter count as TeamLoRA), reference loop and fused.

Ratios printed: TeamLoRA fused / LoRA(r_A) (target <= 1.15) and TeamLoRA fused / MoELoRA reference at k = 4
(target <= 0.70), plus MoELoRA fused / reference, which shows how much of the speed-up is the fused implementation
rather than the method. The input requires grad (as inside a network), dropout is 0.05 in training mode.

Usage: ``python benchmarks/adapters.py [--full] [--tokens N] [--repeats N] [--ks 2 4 8] [--r-b 32]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from cme_bench.tuners.moelora import METHOD as MOELORA
from cme_bench.tuners.moelora import MoeLoraLayer
from cme_bench.tuners.teamlora import METHOD as TEAMLORA
from cme_bench.tuners.teamlora import TeamLoraLayer


class OneProjection(nn.Module):
    """The smallest model PEFT can adapt: one projection called ``proj``."""

    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def peft_lora(base: nn.Linear, r: int) -> nn.Module:
    """PEFT's own ``lora.Linear`` around ``base`` (the layer PEFT injects into real models)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=32, lora_dropout=0.05, target_modules=["proj"])
    return get_peft_model(OneProjection(base), config).base_model.model.proj


def build_variants(d_in: int, d_out: int, k: int, r_b: int) -> dict[str, nn.Module]:
    """Every variant wraps its own frozen copy of one base projection; all adapter tensors are non-zero."""

    def base() -> nn.Linear:
        layer = nn.Linear(d_in, d_out, bias=False)
        layer.weight.requires_grad_(False)
        return layer

    r_a = k * r_b
    team = {"r_a": r_a, "num_experts": k, "alpha": 32, "dropout": 0.05}
    moe = {"r": r_b, "num_experts": k, "alpha": 32, "dropout": 0.05}
    variants = {
        "lora": peft_lora(base(), r_a),
        "team_fused": TeamLoraLayer(base(), TEAMLORA.validate({**team, "forward": "fused"})),
        "team_loop": TeamLoraLayer(base(), TEAMLORA.validate({**team, "forward": "reference"})),
        "moe_ref": MoeLoraLayer(base(), MOELORA.validate({**moe, "forward": "reference"})),
        "moe_fused": MoeLoraLayer(base(), MOELORA.validate({**moe, "forward": "fused"})),
        "base": base(),
    }
    with torch.no_grad():
        for module in variants.values():
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.01)
    for module in variants.values():
        module.train()
    return variants


def step_fn(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        for p in module.parameters():
            p.grad = None
        module(x).backward(grad)

    return step


def measure(variants: dict[str, nn.Module], tokens: int, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Milliseconds per forward+backward for every repeat, interleaving the variants in every repeat."""
    d_in = variants["base"].in_features
    d_out = variants["base"].out_features
    x = torch.randn(tokens, d_in, requires_grad=True)
    grad = torch.randn(tokens, d_out)
    steps = {name: step_fn(m, x, grad) for name, m in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def print_row(k: int, r_b: int, t: dict[str, float]) -> None:
    # "adapter only" subtracts the frozen projection's own forward+backward, measured in the same run.
    a = {name: max(v - t["base"], 1e-9) for name, v in t.items()}
    print(
        f"{k:>2} {r_b:>4} {k * r_b:>4} | {t['base']:>7.2f} {t['lora']:>8.2f} {t['team_fused']:>8.2f} "
        f"{t['team_loop']:>8.2f} {t['moe_ref']:>8.2f} {t['moe_fused']:>8.2f}      | {'':>13}"
        f"{t['team_fused'] / t['lora']:>9.3f} {t['team_fused'] / t['moe_ref']:>11.3f} "
        f"{t['moe_fused'] / t['moe_ref']:>12.3f} | {'':>14}{a['team_fused'] / a['lora']:>9.3f} "
        f"{a['team_fused'] / a['moe_ref']:>11.3f} {a['moe_fused'] / a['moe_ref']:>12.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="LLaMA-7B's up_proj shape 4096 -> 11008")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per batch (batch x sequence)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--r-b", type=int, default=32, help="per-expert rank (TeamLoRA r_B = MoELoRA rank)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d_in, d_out = (4096, 11008) if args.full else (1024, 2752)
    print(
        f"One FFN projection {d_in} -> {d_out} ({'LLaMA-7B up_proj' if args.full else 'LLaMA-7B aspect / 4'}), "
        f"{args.tokens} tokens, fp32, forward+backward, dropout 0.05, median of {args.repeats}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'k':>2} {'r_B':>4} {'r_A':>4} | {'base':>7} {'LoRA rA':>8} {'Team fu':>8} {'Team lp':>8} "
        f"{'MoE ref':>8} {'MoE fu':>8} (ms) | whole layer: {'Team/LoRA':>9} {'Team/MoEref':>11} {'MoEfu/MoEref':>12} "
        f"| adapter only: {'Team/LoRA':>9} {'Team/MoEref':>11} {'MoEfu/MoEref':>12}"
    )
    for k in args.ks:
        times = measure(build_variants(d_in, d_out, k, args.r_b), args.tokens, args.repeats)
        print_row(k, args.r_b, {name: statistics.median(v) for name, v in times.items()})
    print("Targets (whole layer): Team/LoRA <= 1.15 (same r_A); Team/MoEref <= 0.70 at k = 4 (same parameters).")
    print("On a shared machine other processes add noise to every column; rerun with --threads 1 and more --repeats.")


if __name__ == "__main__":
    main()
