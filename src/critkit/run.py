"""The main job: data -> synthesis -> build -> train (several methods) -> eval -> report.

Every step writes its output under the run folder and is skipped when that output is already
there, so running the same config again resumes where the last run stopped. The run folder keeps
the resolved config (`config.yaml`) and a log of step timings (`steps.jsonl`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .backends import Sampling, make_backend
from .methods import METHODS, build_pairs
from .records import read_records, write_jsonl, write_records
from .config import ConfigError, apply_overrides, load_yaml
from .train import TrainConfig, train, validate

__all__ = ["RunConfig", "load_run_config", "run"]


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    model: str = "embedded"  # the student: answers first (y'), then is trained
    # data.train / data.test: "demo" (generated, see demo.py) or a file path; data.source: a
    # mapping name from sources.SOURCES or "auto"; data.demo: make_demo arguments.
    data: dict[str, Any] = field(default_factory=lambda: {"train": "demo", "test": "demo", "source": "auto", "demo": {}})
    # synth.teacher: "reference" or {model, backend, base_url, ...}; synth.student: generation options.
    synth: dict[str, Any] = field(default_factory=lambda: {"teacher": "reference", "critique_style": "cft"})
    methods: list[str] = field(default_factory=lambda: ["sft-gold", "cft", "cgd"])
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (model/data/output_dir filled in)
    eval: dict[str, Any] = field(default_factory=lambda: {"benchmarks": ["test"], "max_new_tokens": 64})
    seed: int = 0


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    raw = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    raw = apply_overrides(raw, list(overrides), top=set(RunConfig.__dataclass_fields__), default=("train", "sft"))
    known = set(RunConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; known: {sorted(known)}")
    cfg = RunConfig(**raw)
    for m in cfg.methods:
        if m not in METHODS:
            raise ConfigError(f"{path}: methods: unknown method {m!r}; known: {', '.join(METHODS)}")
    # Check the training section now, before any model is loaded.
    validate(_train_config(cfg, "check"), check_data=False)
    return cfg


def _train_config(cfg: RunConfig, method: str) -> TrainConfig:
    section = dict(cfg.train)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"train: unknown field(s) {unknown}; known: {sorted(known)}")
    sft = {"seed": cfg.seed, **section.pop("sft", {})}
    out = Path(cfg.output_dir)
    return TrainConfig(**{**section, "model": section.get("model", cfg.model),
                          "data": str(out / "pairs" / f"{method}.jsonl"),
                          "output_dir": str(out / "models" / method), "sft": sft})


class _Steps:
    """Prints a header per step, times it, and appends to steps.jsonl."""

    def __init__(self, root: Path):
        self.root, self.t0 = root, time.time()

    def __call__(self, name: str, done: bool, fn):
        if done:
            print(f"[critkit] {name}: already done, skipped", flush=True)
            return None
        print(f"[critkit] {name} ...", flush=True)
        start = time.time()
        value = fn()
        seconds = time.time() - start
        print(f"[critkit] {name}: {seconds:.0f}s (total {time.time() - self.t0:.0f}s)", flush=True)
        with open(self.root / "steps.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": name, "seconds": round(seconds, 2), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        return value


def _load_data(cfg: RunConfig, root: Path) -> None:
    from .demo import make_demo
    from .sources import load_source

    data = cfg.data
    demo: dict[str, list] = {}
    if "demo" in (data.get("train"), data.get("test")):
        splits = make_demo(**{"seed": cfg.seed, **data.get("demo", {})})
        demo = dict(zip(("train", "test", "validation"), splits))
    for split in ("train", "test", "validation"):
        source = data.get(split, "demo" if split in demo else None)
        if source is None:
            continue  # no such file: e.g. evaluate on the named benchmarks only
        if source == "demo":
            records = demo.get(split, [])
        else:
            records = load_source(source, data.get("source", "auto"), data.get(f"limit_{split}"))
        if records:
            write_records(root / "records" / f"{split}.jsonl", records)


def _sampling(options: dict, seed: int, **defaults) -> Sampling:
    merged = {**defaults, **{k: v for k, v in options.items() if k in Sampling.__dataclass_fields__}}
    merged["stop"] = tuple(merged.get("stop") or ())
    return Sampling(seed=seed, **{k: v for k, v in merged.items() if k != "seed"})


def _teacher(cfg: RunConfig, student_backend):
    from .synth import REFERENCE

    teacher = cfg.synth.get("teacher", REFERENCE)
    if teacher == REFERENCE:
        return REFERENCE
    if teacher in ("student", "self"):
        return student_backend()
    if isinstance(teacher, str):  # a model name or path: a local transformers teacher
        return make_backend(teacher, "transformers")
    options = {k: v for k, v in teacher.items() if k not in ("model", "backend")}
    return make_backend(teacher["model"], teacher.get("backend", "auto"), **options)


def run(cfg: RunConfig) -> dict:
    from . import synth
    from .evaluate import evaluate
    from .report import write_report

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    step = _Steps(root)
    cache: dict = {}

    def student():  # loaded once, only when some step needs it
        if "student" not in cache:
            opts = cfg.synth.get("student", {})
            cache["student"] = make_backend(cfg.model, "transformers", batch_size=opts.get("batch_size", 32))
        return cache["student"]

    step("data", (root / "records" / "train.jsonl").exists(), lambda: _load_data(cfg, root))

    def teacher():
        if "teacher" not in cache:
            cache["teacher"] = _teacher(cfg, student)
        return cache["teacher"]

    # Synthesis: each stage reads the previous stage's records and writes its own file. A stage
    # whose field every record already has (e.g. released critique data) loads no model.
    syn = root / "synth"
    student_opts = cfg.synth.get("student", {})
    teacher_opts = cfg.synth.get("teacher_sampling", {})
    style = cfg.synth.get("critique_style", "cft")
    stages = [
        ("respond", "response", lambda recs: synth.respond(recs, student(), _sampling(student_opts, cfg.seed, max_new_tokens=128))),
        ("critique", "critique", lambda recs: synth.critique(
            recs, teacher(), _sampling(teacher_opts, cfg.seed, temperature=0.3, top_p=0.95, max_new_tokens=1024), style=style)),
        ("refine", "refined", lambda recs: synth.refine(recs, teacher(), _sampling(teacher_opts, cfg.seed, max_new_tokens=1024))),
        ("solve", "teacher_solution", lambda recs: synth.solve(recs, teacher(), _sampling(teacher_opts, cfg.seed, max_new_tokens=1024))),
    ]
    previous = root / "records" / "train.jsonl"
    for name, field_name, fn in stages:
        target = syn / f"{name}.jsonl"

        def do(fn=fn, source=previous, target=target, name=name, field_name=field_name):
            records = read_records(source)
            if all(getattr(r, field_name) for r in records):
                report = synth.StageReport({f"kept (had {field_name})": len(records)})
            else:
                records, report = fn(records)
            write_records(target, records)
            print("  " + report.line(name), flush=True)

        step(f"synth {name}", target.exists(), do)
        previous = target

    # Build, train and evaluate each method; the base model is evaluated first.
    benchmarks = [str(root / "records" / "test.jsonl") if b == "test" else b for b in cfg.eval.get("benchmarks", ["test"])]
    bench_names = [Path(b).stem if b.endswith(".jsonl") else b for b in benchmarks]
    eval_sampling = _sampling(cfg.eval, cfg.seed, max_new_tokens=64)
    eval_root = root / "eval"

    def evaluated(name: str) -> bool:
        return all((eval_root / name / b / "scores.json").exists() for b in bench_names)

    def eval_model(name: str, model_path: str):
        backend = make_backend(model_path, "transformers", batch_size=cfg.eval.get("batch_size", 64))
        backend.name = name
        for bench, scores in evaluate(backend, benchmarks, eval_root / name, eval_sampling, limit=cfg.eval.get("limit")).items():
            print(f"  {name} on {Path(bench).stem}: {100 * scores['accuracy']:.1f}% ({scores['correct']}/{scores['n']})", flush=True)

    step("eval base", evaluated("base"), lambda: eval_model("base", cfg.model))
    for method in cfg.methods:
        pairs_path = root / "pairs" / f"{method}.jsonl"

        def build(method=method, pairs_path=pairs_path):
            rows, skipped = build_pairs(method, read_records(previous))
            write_jsonl(pairs_path, rows)
            why = ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "none"
            print(f"  {method}: {len(rows)} pairs, skipped {sum(skipped.values())} ({why})", flush=True)

        step(f"build {method}", pairs_path.exists(), build)
        if pairs_path.stat().st_size == 0:
            # One method without usable data (e.g. sft-verified when no answer was right) must not
            # stop the others; the report shows it as not trained.
            print(f"[critkit] {method}: no training pairs, not trained (see the build step for why)", flush=True)
            continue
        tcfg = _train_config(cfg, method)
        final = Path(tcfg.output_dir) / "final"
        step(f"train {method}", (final / "config.json").exists() or (final / "adapter_config.json").exists(), lambda tcfg=tcfg: train(tcfg))
        step(f"eval {method}", evaluated(method), lambda method=method, final=final: eval_model(method, str(final)))

    models = ["base", *cfg.methods]
    summary = step("report", False, lambda: write_report(eval_root, models, bench_names, root, title=f"critkit: {cfg.name}",
                                                         notes=_notes(root)))
    print((root / "report.md").read_text(), flush=True)
    return summary


def _notes(root: Path) -> list[str]:
    total = 0.0
    if (root / "steps.jsonl").exists():
        total = sum(json.loads(line)["seconds"] for line in (root / "steps.jsonl").read_text().splitlines() if line.strip())
    return [f"Wall time of all steps so far (summed over resumed runs): {total:.0f} s."]
