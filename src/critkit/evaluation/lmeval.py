"""lm-evaluation-harness as an engine: any lm-eval task on a critkit model (issue 13, item 4).

CGD (section 4, Table 2) reports BBH, MUSR and TruthfulQA beside the math benchmarks; those and
any other lm-eval task run through lm-eval itself (`simple_evaluate` with a TaskManager that also
indexes the user's task folders), so their prompts, few-shot examples, filters and metrics are
lm-eval's own, not a re-implementation. critkit only decides how the model loads and where the
results go:

- a full model folder or hub id is lm-eval's `pretrained`; a PEFT adapter folder (what critkit
  training writes for LoRA) is `pretrained` = its base model plus `peft` = the folder with the
  HF engine, or `lora_local_path` with vLLM;
- `engine` "hf" (lm-eval's HFLM: CPU or GPUs, `parallelize=True` in model_args for a model
  larger than one GPU) or "vllm" (lm-eval's VLLM, for 7B-70B runs where vLLM is installed);
- the results go to `<out>/lmeval.json` (lm-eval's results, versions, n-shot, n-samples and
  configs), lm-eval's per-sample log to `<out>/lmeval_samples/<task>.jsonl`, and one
  `<out>/lmeval-<task>/scores.json` per requested task with its first metric as `accuracy`, so
  `critkit report` shows it as a column (`engine: lm-eval` marks it apart from critkit's own).

lm-eval installs beside critkit (`pip install -e .[lmeval]`: only new packages, none of
critkit's pins move), so it runs in-process on the same model loader; without it, `run_lm_eval`
raises with the install line.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.records import atomic_path
from ..engine.backends import vllm_lora_rank
from ..engine.models import gpu_half_dtype, resolve_model

__all__ = ["run_lm_eval", "lm_eval_model_args", "LMEVAL_MISSING", "primary_metric"]

LMEVAL_MISSING = "lm-evaluation-harness is not installed: pip install -e '.[lmeval]' (lm-eval[ifeval]==0.4.13)"
ENGINES = {"hf": "hf", "vllm": "vllm"}


def lm_eval_model_args(model: str, engine: str = "hf", device: str | None = None) -> dict:
    """lm-eval's model_args for a critkit model name, folder or adapter folder."""
    import torch

    if engine not in ENGINES:
        raise ValueError(f"lm-eval engine {engine!r}: use one of {sorted(ENGINES)}")
    path = resolve_model(model)
    adapter = Path(path) / "adapter_config.json"
    args: dict = {"pretrained": path}
    if adapter.exists():
        config = json.loads(adapter.read_text())
        base = config.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter}: no base_model_name_or_path, so the adapter's base model is unknown")
        args = {"pretrained": resolve_model(base), ("peft" if engine == "hf" else "lora_local_path"): path}
        if engine == "vllm":  # vLLM sizes its LoRA slots by max_lora_rank, from a fixed set of values
            args["max_lora_rank"] = vllm_lora_rank(int(config.get("r") or 16))
        if (Path(path) / "tokenizer_config.json").exists():
            args["tokenizer"] = path  # training saves the tokenizer it used beside the adapter
    if engine == "hf":
        cuda = torch.cuda.is_available()
        args["device"] = device or ("cuda" if cuda else "cpu")
        # As critkit's own loader (engine/models.py): fp32 on CPU, the GPU's native half dtype on a GPU.
        args["dtype"] = (gpu_half_dtype() or "float32") if args["device"].startswith("cuda") else "float32"
    return args


def primary_metric(task_results: dict) -> tuple[str, float] | None:
    """The first numeric metric of a task's results ("acc,none", "exact_match,strict-match"), as
    lm-eval lists them: the task config's metric_list order, not its stderr."""
    for key, value in task_results.items():
        if "," in key and not key.split(",")[0].endswith("_stderr") and isinstance(value, (int, float)) and not isinstance(value, bool):
            return key, float(value)
    return None


def _n_samples(results: dict, task: str) -> int | None:
    counts = results.get("n-samples", {})
    if task in counts:
        return counts[task].get("effective")
    subtasks = results.get("group_subtasks", {}).get(task) or []
    found = [counts[t].get("effective", 0) for t in subtasks if t in counts]
    return sum(found) if found else None


def run_lm_eval(model: str, tasks: list[str], out_dir: str | Path, include: list[str] | None = None, *,
                engine: str = "hf", include_defaults: bool = True, limit: int | float | None = None,
                batch_size: int | str | None = None, num_fewshot: int | None = None, apply_chat_template: bool = False,
                fewshot_as_multiturn: bool | None = None, gen_kwargs: str | None = None, model_args: dict | None = None,
                seed: int = 0, log_samples: bool = True) -> dict:
    """Run lm-eval tasks on a critkit model; write lmeval.json, per-sample logs and one scores.json
    per task under `out_dir`; return {task: scores}. Task folders in `include` hold lm-eval task
    YAMLs (a local file: `dataset_path: json`, `dataset_kwargs: {data_files: ...}`)."""
    try:
        import lm_eval
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import handle_non_serializable
    except ImportError as e:
        raise RuntimeError(f"{LMEVAL_MISSING} ({e})") from None

    for folder in include or []:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--lm-eval-include {folder}: no such folder")
    manager = TaskManager(include_path=[str(Path(f).resolve()) for f in include or []] or None,
                          include_defaults=include_defaults)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f"in {', '.join(include or [])}" + (" or lm-eval's own tasks" if include_defaults else "")
        raise ValueError(f"lm-eval task(s) {unknown} not found {where}")
    args = {**lm_eval_model_args(model, engine), **(model_args or {})}
    results = simple_evaluate(
        model=ENGINES[engine], model_args=args, tasks=list(tasks), task_manager=manager, limit=limit,
        # lm-eval's "auto" finds the largest batch that fits a GPU; on a CPU it would probe for minutes.
        batch_size=batch_size if batch_size is not None else ("auto" if engine == "vllm" or args.get("device", "").startswith("cuda") else 8),
        num_fewshot=num_fewshot, apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=apply_chat_template if fewshot_as_multiturn is None else fewshot_as_multiturn,
        gen_kwargs=gen_kwargs, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        log_samples=log_samples,
    )
    if results is None:  # simple_evaluate returns None on ranks other than 0 of a distributed run
        return {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", None) or {}
    record = {"model": model, "engine": engine, "lm_eval_version": lm_eval.__version__, "model_args": args, "tasks": list(tasks),
              **{k: results[k] for k in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                                         "n-samples", "config") if k in results}}
    with atomic_path(out / "lmeval.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=handle_non_serializable))
    for task, rows in samples.items():
        with atomic_path(out / "lmeval_samples" / f"{task}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r, default=handle_non_serializable) + "\n" for r in rows))

    scores = {}
    for task in tasks:
        found = results["results"].get(task) or results.get("groups", {}).get(task) or {}
        metric = primary_metric(found)
        n = _n_samples(results, task)
        s = {"benchmark": f"lmeval-{task}", "engine": "lm-eval", "lm_eval_task": task, "model": model,
             "metric": metric[0] if metric else None, "accuracy": metric[1] if metric else None,
             "n": n or 0, "answered": n or 0, "failed": 0,
             "metrics": {k: v for k, v in found.items() if k != "alias"}, "lm_eval_version": lm_eval.__version__}
        if metric and n and metric[0].split(",")[0] in ("acc", "acc_norm", "exact_match", "prompt_level_strict_acc"):
            s["correct"] = round(metric[1] * n)  # these metrics are means of 0/1 per sample
        with atomic_path(out / f"lmeval-{task}" / "scores.json") as tmp:
            tmp.write_text(json.dumps(s, indent=1, default=handle_non_serializable))
        scores[task] = s
    return scores
