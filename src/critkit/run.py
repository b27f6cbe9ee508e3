"""The main job: data -> synthesis -> build -> train (several methods) -> eval -> report.

Every step writes its output under the run folder and is skipped when that output is already
there, so running the same config again resumes where the last run stopped. The run folder keeps
the resolved config (`config.yaml`) and a log of step timings (`steps.jsonl`).

`methods` lists training sets: method names, or mappings for mixtures, two-stage training,
length-matched and right/wrong sets (see mixtures.py). With `seeds: N` every set is trained N
times, with training seeds seed, seed+1, ...; the data and the synthesis are those of `seed`, and
the report shows mean and standard deviation over the seeds. Folders: one seed keeps
models/<set>/ and eval/<set>/; several use models/<set>/seed<k>/ and eval/<set>@seed<k>/.
With `select: true` a `select <set>` step between training and evaluation picks each set's (and
seed's) checkpoint with the best validation accuracy, and the evaluation is that checkpoint's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .engine.backends import Sampling, make_backend
from .synth.stages import REFERENCE_CRITIQUES  # synth.reference_critique: what the reference teacher's critique holds
from .training.mixtures import Shortfall, TrainingSet, build_set, check_records_files, parse_sets, stages_needed
from .data.records import read_records, write_jsonl, write_records
from .config import ConfigError, apply_overrides, load_yaml
from .training.train import train
from .training.train_config import TrainConfig, validate

__all__ = ["RunConfig", "load_run_config", "run", "run_results", "training_seeds"]

RESPONSES = ("original", "student")
CRITIQUES = ("original", "teacher")


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    model: str = "embedded"  # the student: answers first (y'), then is trained
    # data.train / data.test: "demo" (generated, see demo.py) or a file path; data.source: a
    # mapping name from sources.SOURCES or "auto"; data.demo: make_demo arguments.
    data: dict[str, Any] = field(default_factory=lambda: {"train": "demo", "test": "demo", "source": "auto", "demo": {}})
    # synth.teacher: "reference" or {model, backend, base_url, ...}; synth.student: generation options.
    # synth.responses: "original" keeps a dataset's own responses (the student answers where there
    # is none); "student" discards them, and what was derived from them, so the student answers
    # every question (CFT Table 6). synth.critiques: "original" keeps a dataset's critiques;
    # "teacher" discards them so synth.teacher critiques the responses anew (CFT Table 7).
    synth: dict[str, Any] = field(default_factory=lambda: {"teacher": "reference", "critique_style": "cft"})
    # Method names or training-set mappings (mixtures.py): {name, mix | stages | method, ...}.
    methods: list[Any] = field(default_factory=lambda: ["sft-gold", "cft", "cgd"])
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (model/data/output_dir filled in)
    eval: dict[str, Any] = field(default_factory=lambda: {"benchmarks": ["test"], "max_new_tokens": 64})
    seed: int = 0
    seeds: int = 1  # training seeds per set: seed, seed+1, ... (data and synthesis stay those of `seed`)
    # Train under `accelerate launch --config_file LAUNCH` (a path, or a packaged name such as
    # accelerate/zero3); data, synthesis and evaluation stay in this one process. null: in-process.
    launch: str | None = None
    # report.html_samples: rows per set (synthesis, each benchmark) that report.html holds, a sample
    # drawn with `seed` (default 500); `critkit view RUN_DIR` browses every row.
    report: dict[str, Any] = field(default_factory=dict)
    # Checkpoint selection (CFT "Training Details": the best checkpoint on a validation set): every
    # saved checkpoint of each set and seed is evaluated on the validation split (data.validation
    # or data.demo.validation, checked to share no question with any test set), and the test
    # scores are the best one's (evaluation/select.py). Needs train.sft.save_strategy.
    select: bool = False


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    raw = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    raw = apply_overrides(raw, list(overrides), top=set(RunConfig.__dataclass_fields__), default=("train", "sft"))
    known = set(RunConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; known: {sorted(known)}")
    cfg = RunConfig(**raw)
    check_run_config(cfg, str(path))
    return cfg


def check_run_config(cfg: RunConfig, where: str = "run config") -> list[TrainingSet]:
    """Everything that can be checked before a model is loaded; returns the training sets."""
    try:
        sets = parse_sets(cfg.methods)
        check_records_files(sets)  # a set's own records file (mixtures.py `records`): there, and usable
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not isinstance(cfg.seeds, int) or isinstance(cfg.seeds, bool) or cfg.seeds < 1:
        raise ConfigError(f"{where}: seeds: expected a whole number >= 1, got {cfg.seeds!r}")
    if cfg.launch is not None:
        launch_config_path(cfg.launch)
    if not isinstance(cfg.report, dict):
        raise ConfigError(f"{where}: report: expected a mapping such as {{html_samples: 500}}, got {cfg.report!r}")
    samples = cfg.report.get("html_samples", 0)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError(f"{where}: report.html_samples: expected a whole number >= 0, got {samples!r}")
    for key, allowed in (("responses", RESPONSES), ("critiques", CRITIQUES), ("reference_critique", REFERENCE_CRITIQUES)):
        value = cfg.synth.get(key, allowed[0])
        if value not in allowed:
            raise ConfigError(f"{where}: synth.{key}: expected one of {', '.join(allowed)}, got {value!r}")
    # Check the training section now, before any model is loaded.
    validate(_train_config(cfg, "check"), check_data=False)
    _check_select(cfg, where)
    return sets


def _check_select(cfg: RunConfig, where: str) -> None:
    """`select: true` needs a validation split and saved checkpoints; say so before training."""
    if not isinstance(cfg.select, bool):
        raise ConfigError(f"{where}: select: expected true or false, got {cfg.select!r}")
    if not cfg.select:
        return
    demo = "demo" in (cfg.data.get("train"), cfg.data.get("test"))
    source = cfg.data.get("validation", "demo" if demo else None)
    if not source or (source == "demo" and not (demo and (cfg.data.get("demo") or {}).get("validation"))):
        raise ConfigError(f"{where}: select: true needs a validation split: data.validation (a file of questions with gold "
                          f"answers that no test set contains) or, with demo data, data.demo.validation")
    if cfg.train.get("sft", {}).get("save_strategy", "no") == "no":
        raise ConfigError(f"{where}: select: true chooses among saved checkpoints, and train.sft.save_strategy is 'no': "
                          f"set it to steps (with save_steps) or epoch")


def _discarded(cfg: RunConfig) -> dict[str, tuple[str, ...]]:
    """Per synthesis stage, the data's fields it drops first (synth.responses / synth.critiques)."""
    return {"respond": ("response", "critique", "verdict", "refined") if cfg.synth.get("responses") == "student" else (),
            "critique": ("critique", "verdict", "refined") if cfg.synth.get("critiques") == "teacher" else ()}


def check_data(cfg: RunConfig, sets: list[TrainingSet], records) -> None:
    """Stop before any model loads when a training set cannot get one pair from the data.

    Synthesis fills responses, critiques, refinements and teacher solutions; what it cannot make
    must come with the data: a field a method reads that no stage writes (sft-gold's reference),
    and what the offline reference teacher needs for each stage the set uses (synth.REFERENCE_NEEDS).
    """
    from .training.mixtures import fields_read
    from .synth.stages import REFERENCE, REFERENCE_NEEDS, STAGE_FIELDS

    where = f"data.train ({cfg.data.get('train')})"
    if not records:
        raise ConfigError(f"{where}: no usable record")
    dropped = {f for fields in _discarded(cfg).values() for f in fields}
    has = lambda field: field not in dropped and any(getattr(r, field) for r in records)  # noqa: E731
    synthesized = set(STAGE_FIELDS.values()) | {"verdict"}
    for index, spec in enumerate(sets):
        name = f"methods[{index}] ({spec.name})"
        for field in sorted(fields_read(spec) - synthesized):
            if not has(field):
                raise ConfigError(f"{name}: trains on the records' {field!r}, and no record of {where} has one")
        if cfg.synth.get("teacher", REFERENCE) != REFERENCE:
            continue
        for stage in sorted(stages_needed([spec])):
            need = REFERENCE_NEEDS.get(stage)
            if need and not has(STAGE_FIELDS[stage]) and not has(need[0]):
                raise ConfigError(f"{name}: the {stage} stage's reference teacher needs a {need[1]} ({need[0]!r}), and "
                                  f"no record of {where} has one (set synth.teacher to a model)")


def training_seeds(cfg: RunConfig) -> list[int]:
    """The training seeds: train.sft.seed (default: seed), then +1, +2, ... up to `seeds` of them."""
    first = cfg.train.get("sft", {}).get("seed", cfg.seed)
    return [first + i for i in range(cfg.seeds)]


def _train_config(cfg: RunConfig, name: str, data: Path | None = None, output_dir: Path | None = None,
                  seed: int | None = None, model: str | None = None, merge: bool = False) -> TrainConfig:
    section = dict(cfg.train)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"train: unknown field(s) {unknown}; known: {sorted(known)}")
    sft = {"seed": cfg.seed, **section.pop("sft", {})}
    if seed is not None:
        sft["seed"] = seed
    out = Path(cfg.output_dir)
    if merge:
        section["merge_adapter"] = True
    return TrainConfig(**{**section, "model": model or section.get("model", cfg.model),
                          "data": str(data or out / "pairs" / f"{name}.jsonl"),
                          "output_dir": str(output_dir or out / "models" / name), "sft": sft})


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


def load_data(cfg: RunConfig, root: Path) -> None:
    """records/{train,test,validation}.jsonl from the config's data section (the run's first step)."""
    from .data.demo import make_demo
    from .data.sources import load_source

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
            # data.<split>_source: that split's own mapping, e.g. a validation set with gold answers
            # for training data without them (WebInstruct-CFT in the CFT recipes).
            records = load_source(source, data.get(f"{split}_source", data.get("source", "auto")), data.get(f"limit_{split}"))
        if records:
            write_records(root / "records" / f"{split}.jsonl", records)


def _sampling(options: dict, seed: int, **defaults) -> Sampling:
    merged = {**defaults, **{k: v for k, v in options.items() if k in Sampling.__dataclass_fields__}}
    merged["stop"] = tuple(merged.get("stop") or ())
    return Sampling(seed=seed, **{k: v for k, v in merged.items() if k != "seed"})


def _teacher(cfg: RunConfig, student_backend):
    from .synth.stages import REFERENCE

    teacher = cfg.synth.get("teacher", REFERENCE)
    if teacher == REFERENCE:
        return REFERENCE
    if teacher in ("student", "self"):
        return student_backend()
    if isinstance(teacher, str):  # a model name or path: a local transformers teacher
        return make_backend(teacher, "transformers")
    options = {k: v for k, v in teacher.items() if k not in ("model", "backend")}
    return make_backend(teacher["model"], teacher.get("backend", "auto"), **options)


def _discard(records, fields: tuple[str, ...]):
    """Records without `fields` and the raw teacher I/O that went with them (meta keeps provenance)."""
    stale = {"critique", "verify", "refine"}
    return [replace(r, **{f: None for f in fields}, meta={k: v for k, v in r.meta.items() if k not in stale})
            for r in records]


def benchmarks(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """(what evaluate() is given, the names of the result folders): "test" is the run's test split."""
    root = Path(cfg.output_dir)
    paths = [str(root / "records" / "test.jsonl") if b == "test" else b for b in cfg.eval.get("benchmarks", ["test"])]
    return paths, [Path(b).stem if b.endswith(".jsonl") else b for b in paths]


def _pair_files(root: Path, spec: TrainingSet) -> list[Path]:
    if spec.stages:
        return [root / "pairs" / f"{spec.name}.stage{i + 1}.jsonl" for i in range(len(spec.stages))]
    return [root / "pairs" / f"{spec.name}.jsonl"]


def _build_info(root: Path, name: str) -> dict:
    path = root / "pairs" / f"{name}.build.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _label(name: str, seed: int, seeds: list[int]) -> str:
    return name if len(seeds) == 1 else f"{name}@seed{seed}"


def _trained(final: Path) -> bool:
    return (final / "config.json").exists() or (final / "adapter_config.json").exists()


def run(cfg: RunConfig) -> dict:
    from .synth import stages as synth
    from .evaluation.evaluate import evaluate, format_accuracy
    from .evaluation.select import holds_model, record_model, set_aside
    from .report.tables import write_report, write_seed_report

    sets = check_run_config(cfg)
    evaluation_judge(cfg)  # mt_bench without a judge: a config error now, not after training
    seeds = training_seeds(cfg)
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

    step("data", (root / "records" / "train.jsonl").exists(), lambda: load_data(cfg, root))
    check_data(cfg, sets, read_records(root / "records" / "train.jsonl"))
    checked = _check_validation(cfg, root) if cfg.select else {}  # before any training: a leak stops the run

    def teacher():
        if "teacher" not in cache:
            cache["teacher"] = _teacher(cfg, student)
        return cache["teacher"]

    # Synthesis: each stage reads the previous stage's records and writes its own file. A stage
    # whose field every record already has (e.g. released critique data) loads no model, and a
    # stage no training set reads passes its records through.
    syn = root / "synth"
    student_opts = cfg.synth.get("student", {})
    teacher_opts = cfg.synth.get("teacher_sampling", {})
    style = cfg.synth.get("critique_style", "cft")
    needed = stages_needed(sets)
    discard = _discarded(cfg)
    stages = [
        ("respond", "response", lambda recs: synth.respond(recs, student(), _sampling(student_opts, cfg.seed, max_new_tokens=128),
                                                           prompt=student_opts.get("prompt", "plain"))),
        ("critique", "critique", lambda recs: synth.critique(
            recs, teacher(), _sampling(teacher_opts, cfg.seed, temperature=0.3, top_p=0.95, max_new_tokens=1024), style=style,
            reference_critique=cfg.synth.get("reference_critique", REFERENCE_CRITIQUES[0]))),
        ("refine", "refined", lambda recs: synth.refine(recs, teacher(), _sampling(teacher_opts, cfg.seed, max_new_tokens=1024))),
        ("solve", "teacher_solution", lambda recs: synth.solve(recs, teacher(), _sampling(teacher_opts, cfg.seed, max_new_tokens=1024))),
    ]
    previous = root / "records" / "train.jsonl"
    for name, field_name, fn in stages:
        target = syn / f"{name}.jsonl"

        def do(fn=fn, source=previous, target=target, name=name, field_name=field_name):
            records = read_records(source)
            if name not in needed:
                report = synth.StageReport({"passed through (no training set reads it; delete this file to run it "
                                            "for other methods later)": len(records)})
            else:
                if discard.get(name):
                    records = _discard(records, discard[name])
                if all(getattr(r, field_name) for r in records):
                    report = synth.StageReport({f"kept (had {field_name})": len(records)})
                else:
                    records, report = fn(records)
            write_records(target, records)
            print("  " + report.line(name), flush=True)

        step(f"synth {name}", target.exists(), do)
        previous = target
        if name == "respond" and cfg.synth.get("teacher") not in ("student", "self"):
            _close_backends(cache.pop("student", None))  # before a local teacher loads
    # Synthesis is over: its models leave memory before evaluation and training load theirs (a
    # student cached for the whole run kept its GPU memory, and vLLM then refused to start).
    _close_backends(cache.pop("teacher", None), cache.pop("student", None))

    # Build, train and evaluate each set; the base model is evaluated first.
    bench_paths, bench_names = benchmarks(cfg)
    eval_sampling = evaluation_sampling(cfg)
    eval_root = root / "eval"

    def evaluated(name: str, model: Path | None = None, final: Path | None = None) -> bool:
        # eval/<name> of another model than `model` (e.g. the final model, before `select` was
        # turned on, or the checkpoint chosen before more were saved) is moved aside, not reused.
        if model is not None and (eval_root / name).exists() and not holds_model(eval_root / name, model, legacy=final):
            print(f"[critkit] eval/{name} holds another model's outputs: moved to "
                  f"{set_aside(eval_root / name, root / 'eval-replaced')}", flush=True)
        return all((eval_root / name / b / "scores.json").exists() for b in bench_names)

    def eval_model(name: str, model_path: str):
        record_model(eval_root / name, model_path)
        backend = evaluation_backend(cfg, model_path)
        backend.name = name
        try:
            # samples.jsonl is a journal (evaluation/durable.py): an interrupted step resumes from it.
            for bench, scores in evaluate(backend, bench_paths, eval_root / name, eval_sampling, limit=cfg.eval.get("limit"),
                                          judge=evaluation_judge(cfg)).items():
                run = scores["this_run"]
                print(f"  {name} on {Path(bench).stem}: {format_accuracy(scores)}; generated {run['sent']}, "
                      f"{run['resumed']} from an earlier run", flush=True)
        finally:
            if hasattr(backend, "close"):  # vLLM holds the GPU until told otherwise
                backend.close()

    def synthesized():
        if "records" not in cache:
            cache["records"] = read_records(previous)
        return cache["records"]

    def token_lengths(texts: list[str]) -> list[int]:
        # Lengths in the student's own tokens: what the trainer sees (CFT Table 10 compares tokens).
        if "tokenizer" not in cache:
            from .engine.models import load_tokenizer

            cache["tokenizer"] = load_tokenizer(cfg.model)
        return [len(ids) for ids in cache["tokenizer"](texts, add_special_tokens=False)["input_ids"]] if texts else []

    step("eval base", evaluated("base"), lambda: eval_model("base", cfg.model))
    for spec in sets:
        files = _pair_files(root, spec)
        spec_dict = json.loads(json.dumps(dataclasses.asdict(spec)))
        # A set whose spec changed since its pairs were built (e.g. a smaller `size` after a
        # shortfall) is built again; a folder from before build.json existed is taken as it is.
        built_for = _build_info(root, spec.name).get("spec", spec_dict)

        def build(spec=spec, files=files, spec_dict=spec_dict):
            if (root / "models" / spec.name).exists():
                print(f"  {spec.name}: the set changed since it was trained; delete models/{spec.name} to train "
                      f"on the new pairs", flush=True)
            try:
                built = build_set(spec, synthesized(), seed=cfg.seed, lengths=token_lengths)
                info = {"spec": spec_dict, "pairs": [len(rows) for rows in built.stages], "skipped": dict(built.skipped),
                        "notes": built.notes, "stats": built.stats, "parts": built.parts}
                stage_rows = built.stages
            except Shortfall as exc:
                info = {"spec": spec_dict, "pairs": [0] * len(files), "shortfall": f"{spec.name}: {exc}"}
                stage_rows = [[] for _ in files]
            for path, rows in zip(files, stage_rows):
                write_jsonl(path, rows)
            if "shortfall" not in info:  # what train.sft.max_length will cut, in the student's tokens
                from .training.truncation import truncation_notes

                info["truncation"], cut = truncation_notes(spec.name, stage_rows, _train_config(cfg, spec.name))
                info["notes"] = info["notes"] + cut
            (root / "pairs" / f"{spec.name}.build.json").write_text(json.dumps(info, indent=1))
            skipped = info.get("skipped", {})
            why = ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "none"
            print(f"  {spec.name}: {' + '.join(map(str, info['pairs']))} pairs, skipped {sum(skipped.values())} ({why})", flush=True)
            for line in info.get("notes", []) + ([info["shortfall"]] if "shortfall" in info else []):
                print(f"  {line}", flush=True)

        step(f"build {spec.name}", all(f.exists() for f in files) and built_for == spec_dict, build)
        if any(f.stat().st_size == 0 for f in files):
            # One set without usable data (e.g. sft-verified when no answer was right) must not
            # stop the others; the report shows it as not trained.
            why = _build_info(root, spec.name).get("shortfall") or "see the build step for why"
            print(f"[critkit] {spec.name}: no training pairs, not trained ({why})", flush=True)
            continue
        for seed in seeds:
            label = _label(spec.name, seed, seeds)
            final = _train_set(cfg, spec, files, seed, seeds, step)
            model = _select(cfg, label, final.parent, step, checked) if cfg.select else final
            step(f"eval {label}", evaluated(label, model, final), lambda label=label, model=model: eval_model(label, str(model)))

    from .training.curves import plot_run_losses

    curves = plot_run_losses(root / "models", root / "loss.png", title=f"{cfg.name}: training loss")  # every set and seed
    notes = _notes(root) + _set_notes(root, sets)
    if curves:
        notes.append("Training loss per step: `loss.png` (and `models/<set>/loss.png`; TensorBoard event files "
                      "in `models/<set>/runs/` when tensorboard is installed).")
    title = f"critkit: {cfg.name}"
    chosen = _selections(cfg, sets, seeds)
    if len(seeds) == 1:
        summary = step("report", False, lambda: write_report(eval_root, ["base", *(s.name for s in sets)], bench_names, root,
                                                             title=title, notes=notes, selections=chosen))
    else:
        labels = {s.name: [(k, _label(s.name, k, seeds)) for k in seeds] for s in sets}
        summary = step("report", False, lambda: write_seed_report(eval_root, labels, bench_names, root, title=title, notes=notes,
                                                                  selections=chosen))
    print((root / "report.md").read_text(), flush=True)
    _write_html(cfg, root, title)  # with the report, not a step of its own: steps.jsonl keeps one entry per report
    return summary


def _write_html(cfg: RunConfig, root: Path, title: str) -> None:
    from .report.html import DEFAULT_SAMPLES, write_html_report

    try:
        path = write_html_report(root, samples=cfg.report.get("html_samples", DEFAULT_SAMPLES), seed=cfg.seed, title=title)
        print(f"[critkit] wrote {path} (every sample: critkit view {root})", flush=True)
    except Exception as exc:  # a page over finished results must not fail the run that made them
        print(f"[critkit] report.html not written: {type(exc).__name__}: {exc}", flush=True)


def _train_set(cfg: RunConfig, spec: TrainingSet, files: list[Path], seed: int, seeds: list[int], step) -> Path:
    """Train one set with one seed (each of its stages in turn); the final model's folder.

    A later stage starts from the previous stage's final model. With LoRA that model is first
    merged into full weights (train.merge_adapter) and the next stage trains a new adapter on it:
    each stage then changes the model as a full fine-tuning stage would, where continuing one
    adapter would confine both stages to the same rank-r update, and the saved adapter points at
    the merged folder, so evaluating it loads both stages.
    """
    root = Path(cfg.output_dir)
    label = _label(spec.name, seed, seeds)
    model_dir = root / "models" / spec.name / (f"seed{seed}" if len(seeds) > 1 else "")
    methods = spec.stages or (spec.name,)
    model = None
    final = model_dir / "final"
    for i, (method, data) in enumerate(zip(methods, files)):
        last = i == len(files) - 1
        out = model_dir if last else model_dir / f"stage{i + 1}-{method}"
        merge = cfg.train.get("peft") is not None and not last
        tcfg = _train_config(cfg, spec.name, data=data, output_dir=out, seed=seed, model=model, merge=merge)
        final = out / "final"
        if merge and _trained(final) and not (out / "merged" / "config.json").exists():
            from .training.train import merge_saved_adapter

            merge_saved_adapter(final, out / "merged")  # trained, and stopped before its merge ended
        done = _trained(final) and (not merge or (out / "merged" / "config.json").exists())
        title = f"train {label}" + (f" stage {i + 1}/{len(files)} ({method})" if len(files) > 1 else "")
        step(title, done, lambda tcfg=tcfg: train(tcfg) if not cfg.launch else launch_training(tcfg, cfg.launch))
        model = str(((out / "merged") if merge else final).resolve())
    return final


def evaluation_sampling(cfg: RunConfig) -> Sampling:
    """How every model of the run is evaluated, on the test sets and on the validation split."""
    return _sampling(cfg.eval, cfg.seed, max_new_tokens=64)


def evaluation_backend(cfg: RunConfig, model_path: str):
    # eval.backend: "transformers" (default) or "vllm" on GPUs; eval.kv_cache_gib bounds the
    # transformers decoder's cache, eval.max_model_len / gpu_memory_utilization are vLLM's.
    return make_backend(model_path, cfg.eval.get("backend", "transformers"), batch_size=cfg.eval.get("batch_size", 64),
                        tensor_parallel_size=cfg.eval.get("tensor_parallel_size"), kv_cache_gib=cfg.eval.get("kv_cache_gib"),
                        max_model_len=cfg.eval.get("max_model_len"),
                        gpu_memory_utilization=cfg.eval.get("gpu_memory_utilization"))


def evaluation_judge(cfg: RunConfig):
    """mt_bench's judge (evaluation/mt_bench.py): eval.judge served at eval.judge_base_url, an
    OpenAI-compatible server, its key in eval.judge_api_key_env; None when mt_bench is not evaluated."""
    if "mt_bench" not in cfg.eval.get("benchmarks", []):
        return None
    if not cfg.eval.get("judge") or not cfg.eval.get("judge_base_url"):
        raise ConfigError("eval.benchmarks has mt_bench, which a judge grades: set eval.judge (its model name) and "
                          "eval.judge_base_url (an OpenAI-compatible server)")
    return make_backend(cfg.eval["judge"], "openai", base_url=cfg.eval["judge_base_url"],
                        api_key_env=cfg.eval.get("judge_api_key_env", "OPENAI_API_KEY"))


def _close_backends(*backends) -> None:
    """Close each distinct backend that holds a model (the teacher may be the student itself); each
    close() gives its memory back (engine/models.release_memory)."""
    seen = set()
    for backend in backends:
        if backend is not None and id(backend) not in seen and hasattr(backend, "close"):
            seen.add(id(backend))
            backend.close()


def validation_tests(cfg: RunConfig) -> list[str]:
    """What the validation split must not share a question with: every built-in benchmark, the
    run's evaluation sets and its own test split."""
    from .evaluation.benchmarks import BENCHMARKS

    own_test = Path(cfg.output_dir) / "records" / "test.jsonl"
    paths = [p for p in benchmarks(cfg)[0] if p in BENCHMARKS or Path(p).exists()]
    return list(dict.fromkeys([*BENCHMARKS, *paths, *([str(own_test)] if own_test.exists() else [])]))


def _check_validation(cfg: RunConfig, root: Path) -> dict:
    """The validation split exists and shares no question with a test set (else the run stops
    here, before training); how many questions it shares with the training records is reported."""
    from .evaluation.select import check_disjoint, shared_questions

    validation = root / "records" / "validation.jsonl"
    if not validation.exists():
        raise ConfigError(f"select: true, and data.validation ({cfg.data.get('validation', 'demo')}) gave no usable "
                          f"record in {validation}")
    try:
        checked = check_disjoint(str(validation), validation_tests(cfg))
    except ValueError as exc:
        raise ConfigError(f"select: {exc}") from None
    shared = shared_questions(str(validation), [r.question for r in read_records(root / "records" / "train.jsonl")])
    if shared:
        print(f"[critkit] warning: {shared} validation question(s) are also training questions (data.validation should "
              f"hold questions the sets are not trained on)", flush=True)
    return {"disjoint_from": checked, "shared_with_train": shared}


def _select(cfg: RunConfig, label: str, folder: Path, step, checked: dict) -> Path:
    """Step `select <label>`: the checkpoint of `folder` with the best validation accuracy
    (evaluation/select.py), evaluated with the run's evaluation settings. Done when the folder's
    selection.json was made on the same split and settings over the checkpoints there now."""
    from .evaluation.select import current_selection, select_checkpoint

    root = Path(cfg.output_dir)
    validation, sampling = str(root / "records" / "validation.jsonl"), evaluation_sampling(cfg)
    step(f"select {label}", current_selection(folder, validation, sampling) is not None,
         lambda: select_checkpoint(folder, label, validation, root / "select" / label, lambda path: evaluation_backend(cfg, path),
                                   sampling, **checked))
    chosen = current_selection(folder, validation, sampling)
    print(f"  {label}: {chosen['best']} chosen ({100 * chosen['scores'][chosen['best']]:.1f}% on validation)", flush=True)
    return folder / chosen["best"]


def _selections(cfg: RunConfig, sets: list[TrainingSet], seeds: list[int]) -> dict[str, dict]:
    """{eval label: selection.json} of every set and seed that was selected; plots them."""
    from .evaluation.select import plot_selections

    if not cfg.select:
        return {}
    root, found = Path(cfg.output_dir), {}
    for spec in sets:
        for seed in seeds:
            path = root / "models" / spec.name / (f"seed{seed}" if len(seeds) > 1 else "") / "selection.json"
            if path.exists():
                found[_label(spec.name, seed, seeds)] = json.loads(path.read_text())
    if found:
        plot_selections(found, root / "select" / "accuracy.png")
    return found


def launch_config_path(launch: str) -> str:
    from .config import find_config, packaged_configs

    try:
        return str(find_config(launch))
    except ConfigError:
        raise ConfigError(f"launch: no file {launch!r} and no packaged accelerate config of that name "
                          f"(packaged: {', '.join(n for n in packaged_configs() if n.startswith('accelerate/'))})") from None


def launch_training(tcfg: TrainConfig, launch: str) -> Path:
    """One training as `accelerate launch -m critkit train` in child processes; its final folder.

    Only the training runs under accelerate: under `accelerate launch critkit run`, every process
    would synthesize and evaluate too.
    """
    import subprocess
    import sys

    out = Path(tcfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "launch_train.yaml"
    config.write_text(yaml.safe_dump(dataclasses.asdict(tcfg), sort_keys=False))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", launch_config_path(launch),
           "-m", "critkit", "train", str(config)]
    print("  " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd)
    if done.returncode:
        raise RuntimeError(f"training under accelerate failed (exit {done.returncode}): {' '.join(cmd)}")
    return out / "final"


def _notes(root: Path) -> list[str]:
    total = 0.0
    if (root / "steps.jsonl").exists():
        total = sum(json.loads(line)["seconds"] for line in (root / "steps.jsonl").read_text().splitlines() if line.strip())
    return [f"Wall time of all steps so far (summed over resumed runs): {total:.0f} s."]


def _set_notes(root: Path, sets: list[TrainingSet]) -> list[str]:
    """What the build steps said about mixtures, length matching, ratios and shortfalls."""
    lines = []
    for spec in sets:
        info = _build_info(root, spec.name)
        lines += [f"- {line}" for line in info.get("notes", [])]
        if "shortfall" in info:
            lines.append(f"- not trained: {info['shortfall']}")
    return ([""] if lines else []) + lines


def run_results(cfg: RunConfig) -> dict:
    """The scores of a run from its folder: base, then every set and seed, per benchmark.

    {"benchmarks": [...], "seeds": [...], "base": {bench: scores},
     "sets": {name: {seed: {bench: scores}}}, "not_trained": {name: reason}}
    """
    root = Path(cfg.output_dir)
    sets = parse_sets(cfg.methods)
    seeds = training_seeds(cfg)
    _, bench_names = benchmarks(cfg)

    def scores(label: str) -> dict:
        out = {}
        for b in bench_names:
            path = root / "eval" / label / b / "scores.json"
            if path.exists():
                out[b] = json.loads(path.read_text())
        return out

    result = {"benchmarks": bench_names, "seeds": seeds, "base": scores("base"), "sets": {}, "not_trained": {}}
    for spec in sets:
        result["sets"][spec.name] = {k: scores(_label(spec.name, k, seeds)) for k in seeds}
        info = _build_info(root, spec.name)
        if "shortfall" in info:
            result["not_trained"][spec.name] = info["shortfall"]
        elif info and not all(info.get("pairs", [1])):
            result["not_trained"][spec.name] = "no training pairs"
    return result
