"""``CmeRoutedLlamaForCausalLM``: vLLM's Llama with a cme-bench routed adapter applied inside its projections.

Registered with vLLM under ``ROUTED_ARCHITECTURE`` (``plugin.register``) and selected per engine through
``hf_overrides={"architectures": [ROUTED_ARCHITECTURE], "cme_adapter": "<adapter folder>"}``: the base weights load
from the base model folder unchanged, so no merged copy of the model is written.

vLLM fuses projections: ``q/k/v_proj`` into ``qkv_proj`` (``QKVParallelLinear``) and ``gate/up_proj`` into
``gate_up_proj`` (``MergedColumnParallelLinear``). A forward hook on each fused linear adds the concatenated
per-slice deltas (``routed.PackedDelta``), which is exact because each slice of the fused output is that projection's
output. Tensor parallelism would shard those outputs; it is refused (size 1 only) rather than served wrong.

This module imports vLLM and is only imported inside vLLM processes (lazily, through the registry string).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.model_executor.models.llama import LlamaForCausalLM

from cme_bench.errors import CmeError
from cme_bench.vllm_backend.plugin import ROUTED_ARCHITECTURE
from cme_bench.vllm_backend.routed import (
    PackedDelta,
    RoutedBlock,
    RoutedDelta,
    group_by_block,
    group_by_module,
    routed_adapter,
)


def _adapter_dtype(model_dtype: torch.dtype) -> torch.dtype:
    # Same rule as tuners.base.adapter_dtype: adapters run in fp32 on a half-precision base.
    return model_dtype if model_dtype in (torch.float32, torch.float64) else torch.float32


class CmeRoutedLlamaForCausalLM(LlamaForCausalLM):
    """Llama + a routed adapter from a cme-bench (or an authors') folder, with its method's ``MethodSpec.vllm``."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        config = vllm_config.model_config.hf_config
        path = getattr(config, "cme_adapter", None)
        if not path:
            raise CmeError(f"{ROUTED_ARCHITECTURE} needs hf_overrides={{'cme_adapter': <adapter folder>}}")
        if get_tensor_model_parallel_world_size() != 1:
            raise CmeError("routed adapters are served with tensor_parallel_size=1 only")
        self.cme_adapter, self.cme_spec = routed_adapter(path)
        dtype = _adapter_dtype(vllm_config.model_config.dtype)
        # The tensors (mapped to our keys by the format's one reader) tell which modules are targeted; they are
        # copied into the deltas by ``load_weights``, after the base weights, and dropped then.
        self._cme_state: dict[str, torch.Tensor] | None = self.cme_adapter.state()
        self.cme_deltas = nn.ModuleDict()
        self._cme_slots: dict[tuple[int, str, str], RoutedDelta] = {}
        self._cme_blocks: dict[int, RoutedBlock] = {}
        if self.cme_spec.scope == "mlp":
            self._init_blocks(self._cme_state, dtype)
        else:
            self._init_linears(config, self._cme_state, dtype)

    def _init_blocks(self, keys: dict, dtype: torch.dtype) -> None:
        """FFN-block methods: the block's forward becomes gate_up -> the method's block math -> down."""
        blocks = group_by_block(keys)
        for idx in range(self.model.start_layer, self.model.end_layer):
            if idx not in blocks:
                continue
            mlp = self.model.layers[idx].mlp
            # Llama's FFN activation is SiLU (vLLM's SiluAndMul works on the fused output, so it is passed plain).
            block = RoutedBlock(self.cme_spec.vllm, self.cme_adapter.params, F.silu, dtype)
            self.cme_deltas[f"{idx}_mlp"] = block
            self._cme_blocks[idx] = block
            mlp.forward = _block_forward(mlp, block)
        if get_pp_group().world_size == 1 and set(self._cme_blocks) != set(blocks):
            outside = sorted(set(blocks) - set(self._cme_blocks))
            raise CmeError(f"adapter tensors for layers outside the model: {outside}")

    def _init_linears(self, config, keys: dict, dtype: torch.dtype) -> None:
        """Per-projection deltas, added by forward hooks on vLLM's (fused) linears."""
        targeted = group_by_module(keys)
        hidden = config.hidden_size
        inter = config.intermediate_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", heads) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        q_size, kv_size = heads * head_dim, kv_heads * head_dim
        # vLLM fused linear -> (HF projections in slice order, their output sizes, their input size)
        fused = {
            ("self_attn", "qkv_proj"): (["q_proj", "k_proj", "v_proj"], [q_size, kv_size, kv_size], hidden),
            ("self_attn", "o_proj"): (["o_proj"], [hidden], q_size),
            ("mlp", "gate_up_proj"): (["gate_proj", "up_proj"], [inter, inter], hidden),
            ("mlp", "down_proj"): (["down_proj"], [hidden], inter),
        }
        known = {(part, n) for (part, _), (names, _, _) in fused.items() for n in names}
        stray = sorted({(p, n) for (_, p, n) in targeted} - known)
        if stray:
            raise CmeError(f"adapter targets {stray} that the vLLM Llama model has no hook for")
        start, end = self.model.start_layer, self.model.end_layer
        params = self.cme_adapter.params
        for idx in range(start, end):
            layer = self.model.layers[idx]
            for (part, vname), (names, sizes, d_in) in fused.items():
                deltas: list[RoutedDelta | None] = []
                for name, size in zip(names, sizes):
                    if (idx, part, name) in targeted:
                        d = RoutedDelta(self.cme_spec.vllm, params, d_in, size, dtype)
                        self._cme_slots[(idx, part, name)] = d
                        deltas.append(d)
                    else:
                        deltas.append(None)
                if not any(d is not None for d in deltas):
                    continue
                packed = PackedDelta(deltas, sizes)
                self.cme_deltas[f"{idx}_{part}_{vname}"] = packed
                getattr(getattr(layer, part), vname).register_forward_hook(packed.hook)
        if get_pp_group().world_size == 1 and len(self._cme_slots) != len(targeted):
            missing = sorted(set(targeted) - set(self._cme_slots))
            raise CmeError(f"adapter tensors for layers outside the model: {missing[:5]}")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(weights)
        raw = self._cme_state if self._cme_state is not None else self.cme_adapter.state()
        self._cme_state = None
        if self._cme_blocks:
            blocks = group_by_block(raw)
            for idx, block in self._cme_blocks.items():
                block.load(blocks[idx])
        else:
            tensors = group_by_module(raw)
            make = _cpu_gemm_factory()
            for key, delta in self._cme_slots.items():
                delta.load(tensors[key])
                if make is not None:
                    delta.use_gemms(make)
        return loaded


def _cpu_gemm_factory():
    """vLLM's prepacked oneDNN GEMM on CPU (what its own CPU linears use), or None elsewhere / when unavailable."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    from vllm import _custom_ops as ops

    if not getattr(ops, "_supports_onednn", False):
        return None

    def make(weight: torch.Tensor):
        try:
            handler = ops.create_onednn_mm(weight.t(), 32)
        except RuntimeError:  # a shape oneDNN refuses: the plain matmul is exact, only slower
            return lambda x: torch.nn.functional.linear(x, weight)
        return lambda x: ops.onednn_mm(handler, x, None)

    return make


def _block_forward(mlp: nn.Module, block: RoutedBlock):
    """Replacement ``forward`` for vLLM's ``LlamaMLP`` (instance attribute: ``nn.Module.__call__`` uses it)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = mlp.gate_up_proj(x)
        return block(x, gate_up, lambda h: mlp.down_proj(h)[0])

    return forward
