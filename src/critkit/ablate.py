"""Ablations: variants of one run config, each a normal run, collected into one table.

An ablation config (YAML):

    base: cft-7b                      # a packaged run config name, or a path
    output_dir: runs/ablations/x      # each variant runs in output_dir/<variant>/ (and resumes there)
    title: CFT Table 9                # optional, for the table
    seeds: 3                          # optional: training seeds per set (default: the base config's)
    set: {methods: [cft, sft]}        # optional: overrides applied to every variant
    variants:                         # optional: name -> overrides; none = one run named "default"
      lr-1e-6: {train.sft.learning_rate: 1.0e-6}

A key is a dotted path into the run config (`synth.teacher`, `data.train`, `train.sft.learning_rate`)
and its value replaces whatever is there, mapping or not; a bare key that is no run config field
means `train.sft.<key>`, as in `critkit run`. Overrides apply in the order base <- set <- variant <-
command line, so `critkit ablate NAME base=quickstart synth.teacher=reference` runs a paper-scale
ablation on the embedded model with the offline teacher. `variants.NAME.KEY=VALUE` on the command
line changes one variant.

Variants whose data, synthesis settings and student are the same share the synthesized records
(hard links into the later variant's folder), and variants with the same student, test split and
evaluation settings share the base model's evaluation: a learning-rate sweep pays for its teacher
once. The table (`table.md`, `table.csv`, `table_seeds.csv`, `table.png` in output_dir) has a
row per variant and training set, and the benchmarks and their average as columns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, find_config, load_yaml
from .training.mixtures import parse_sets, stages_needed
from .run import RunConfig, benchmarks, load_data, load_run_config, run, run_results

__all__ = ["AblationConfig", "find_config", "load_ablation", "ablate"]

_TOP = ("base", "output_dir", "name", "title", "seeds")


@dataclass
class AblationConfig:
    base: str = ""
    output_dir: str = ""
    name: str = ""
    title: str = ""
    seeds: int | None = None  # None: the base config's
    set: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


def _item(key: str, value) -> str:
    # run.load_run_config takes key=value strings whose values are YAML; JSON is YAML.
    return f"{key}={json.dumps(value)}"


def _parse_cli(overrides: list[str], cfg: AblationConfig, where: str) -> list[tuple[str | None, str, Any]]:
    """Command-line overrides: ablation fields are set on `cfg`; the rest are returned as
    (variant or None for all, dotted key, value)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.lstrip("-")
        value = load_yaml(text)
        head = key.split(".")[0]
        if key in _TOP:
            setattr(cfg, key, value)
        elif head == "variants":
            parts = key.split(".", 2)
            if len(parts) < 3 or parts[1] not in cfg.variants:
                raise ConfigError(f"{where}: override {key!r}: expected variants.NAME.KEY with NAME one of "
                                  f"{', '.join(cfg.variants) or '(no variants)'}")
            out.append((parts[1], parts[2], value))
        else:
            out.append((None, key.removeprefix("set."), value))
    return out


def load_ablation(path: str | Path, overrides: list[str] = ()) -> tuple[AblationConfig, dict[str, RunConfig]]:
    """The ablation config and every variant's run config, all checked before anything runs."""
    path = Path(path)
    raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping")
    known = {f.name for f in dataclasses.fields(AblationConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; known: {sorted(known)}")
    cfg = AblationConfig(**raw)
    for key in ("set", "variants"):
        if not isinstance(getattr(cfg, key) or {}, dict):
            raise ConfigError(f"{path}: {key}: expected a mapping")
    cfg.set, cfg.variants = dict(cfg.set or {}), dict(cfg.variants or {})
    cli = _parse_cli(list(overrides), cfg, str(path))
    cfg.name = cfg.name or path.stem
    if not cfg.base:
        raise ConfigError(f"{path}: base: missing (a packaged run config name or a path)")
    if not cfg.output_dir:
        raise ConfigError(f"{path}: output_dir: missing")
    if cfg.seeds is not None and (not isinstance(cfg.seeds, int) or isinstance(cfg.seeds, bool) or cfg.seeds < 1):
        raise ConfigError(f"{path}: seeds: expected a whole number >= 1, got {cfg.seeds!r}")
    base = find_config(str(cfg.base), relative_to=path.parent)
    variants = cfg.variants or {"default": {}}
    runs: dict[str, RunConfig] = {}
    for name, changes in variants.items():
        where = f"{path}: variants.{name}"
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ConfigError(f"{where}: a variant name must be usable as a folder name")
        if not isinstance(changes or {}, dict):
            raise ConfigError(f"{where}: expected a mapping of dotted keys to values")
        items = [_item(k, v) for k, v in cfg.set.items()]
        items += [_item(k, v) for k, v in (changes or {}).items()]
        items += [_item(k, v) for target, k, v in cli if target in (None, name)]
        items += [_item("output_dir", str(Path(cfg.output_dir) / name)), _item("name", f"{cfg.name}/{name}")]
        if cfg.seeds is not None:
            items.append(_item("seeds", cfg.seeds))
        try:
            runs[name] = load_run_config(base, items)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return cfg, runs


def _link_tree(src: Path, dst: Path) -> None:
    # Finished step outputs are replaced (written to a temporary name and renamed), never edited in
    # place, so a hard link is as safe as a copy and costs no space; copy where links are impossible.
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def _synth_key(cfg: RunConfig) -> str:
    return json.dumps([cfg.model, cfg.data, cfg.synth, cfg.seed, sorted(stages_needed(parse_sets(cfg.methods)))],
                      sort_keys=True, default=str)


def _share_outputs(done: list[RunConfig], cfg: RunConfig) -> list[str]:
    """Link what an earlier variant already computed and this one would compute identically."""
    root = Path(cfg.output_dir)
    shared = []
    for other in done:
        src = Path(other.output_dir)
        if (not (root / "synth").exists() and _synth_key(other) == _synth_key(cfg)
                and all((src / "synth" / f"{s}.jsonl").exists() for s in ("respond", "critique", "refine", "solve"))):
            _link_tree(src / "records", root / "records")
            _link_tree(src / "synth", root / "synth")
            shared.append(f"data and synthesis from {src}")
            break
    if done and not (root / "records" / "train.jsonl").exists():
        load_data(cfg, root)  # the run's first step, done here to compare test splits
    test = lambda r: (Path(r.output_dir) / "records" / "test.jsonl").read_bytes() \
        if (Path(r.output_dir) / "records" / "test.jsonl").exists() else None
    _, names = benchmarks(cfg)
    for other in done:
        src = Path(other.output_dir) / "eval" / "base"
        if ((root / "eval" / "base").exists() or [other.model, other.eval, other.seed] != [cfg.model, cfg.eval, cfg.seed]
                or test(other) != test(cfg) or not all((src / b / "scores.json").exists() for b in names)):
            continue
        _link_tree(src, root / "eval" / "base")
        shared.append(f"the base model's evaluation from {src.parent.parent}")
        break
    return shared


def _same(a: dict, b: dict) -> bool:
    return {k: (v["accuracy"], v["n"]) for k, v in a.items()} == {k: (v["accuracy"], v["n"]) for k, v in b.items()}


def ablate(cfg: AblationConfig, runs: dict[str, RunConfig]) -> dict:
    """Run every variant (each resumes in its own folder), then write the table."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    done: list[RunConfig] = []
    for name, rcfg in runs.items():
        print(f"[critkit] ablation {cfg.name}: variant {name} ({len(done) + 1}/{len(runs)}) in {rcfg.output_dir}", flush=True)
        Path(rcfg.output_dir).mkdir(parents=True, exist_ok=True)
        for line in _share_outputs(done, rcfg):
            print(f"[critkit] {name}: reusing {line}", flush=True)
        run(rcfg)
        done.append(rcfg)
    return write_ablation_table(cfg, runs)


def write_ablation_table(cfg: AblationConfig, runs: dict[str, RunConfig]) -> dict:
    """table.md / .csv / .png from the variants' run folders (rows variant x set, base first)."""
    from .report.tables import write_table

    results = {name: run_results(rcfg) for name, rcfg in runs.items()}
    benches: list[str] = []
    for res in results.values():
        benches += [b for b in res["benchmarks"] if b not in benches]
    rows, notes = [], []
    bases = [res["base"] for res in results.values()]
    one_base = len(runs) > 1 and all(_same(b, bases[0]) for b in bases)
    for name, res in results.items():
        if res["base"] and (not one_base or name == next(iter(results))):
            rows.append({"variant": "all" if one_base else name, "method": "base",
                         "seeds": {"-": {b: s["accuracy"] for b, s in res["base"].items()}}})
        for set_name, per_seed in res["sets"].items():
            seeds = {k: {b: s["accuracy"] for b, s in scores.items()} for k, scores in per_seed.items() if scores}
            rows.append({"variant": name, "method": set_name, "seeds": seeds})
        notes += [f"- {name}/{s}: not trained: {why}" for s, why in res["not_trained"].items()]
    if notes:
        notes = ["Sets without a number were not trained:", *notes, ""]
    notes.append(f"Each variant's own report: `{cfg.output_dir}/<variant>/report.md`; per-seed numbers: table_seeds.csv.")
    title = cfg.title or f"critkit ablation: {cfg.name}"
    table = write_table(rows, benches, Path(cfg.output_dir), title=title, notes=notes)
    print((Path(cfg.output_dir) / "table.md").read_text(), flush=True)
    return {"rows": table, "benchmarks": benches, "variants": list(runs)}
