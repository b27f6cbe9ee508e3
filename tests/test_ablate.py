"""Ablations: every packaged ablation config loads at the papers' settings, and runs end to end on a
tiny real model (one training step per set, a few test questions) producing its table."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest
import yaml

from critkit.ablate import find_config, load_ablation
from critkit.cli import main
from critkit.config import ConfigError, load_yaml
from critkit.data.demo import make_demo
from critkit.data.records import read_records, write_jsonl, write_records

ABLATIONS = {  # name -> (variants, sets): the rows of its table are variant x set
    "cft-table5-sources": (["webinstruct", "metamath", "numina"], ["cft"]),
    "cft-table6-responses": (["original", "student"], ["cft"]),
    "cft-table7-teacher": (["gpt-4o-mini", "gpt-4o"], ["cft"]),
    "cft-table9-mix": (["default"], ["cft", "sft", "cft+sft", "cft-then-sft"]),
    "cft-table10-length": (["default"], ["sft", "cft", "cft-short"]),
    "cgd-fig4-critique": (["default"], ["distilled-sft", "cgd", "cgd-no-critique"]),
    "cgd-table4-lr": (["lr-1e-6", "lr-2e-6", "lr-3e-6", "lr-5e-6"], ["cft", "cgd"]),
    "cgd-fig5-ratio": (["default"], ["cgd-r0", "cgd-r25", "cgd-r50", "cgd-r75", "cgd-r100"]),
}


def test_every_packaged_ablation_is_listed_here():
    folder = resources.files("critkit").joinpath("configs", "ablations")
    assert sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")) == sorted(ABLATIONS)


@pytest.mark.parametrize("name", ABLATIONS)
def test_packaged_ablation_loads_at_the_papers_settings(name):
    variants, sets = ABLATIONS[name]
    cfg, runs = load_ablation(find_config(name, "ablations"))
    assert list(runs) == variants
    for variant, rcfg in runs.items():
        assert [m if isinstance(m, str) else m["name"] for m in rcfg.methods] == sets
        assert rcfg.output_dir == f"runs/ablations/{name}/{variant}"
        assert rcfg.model == ("Qwen/Qwen2.5-Math-7B" if name.startswith("cft") else "meta-llama/Llama-3.1-8B-Instruct")
        assert rcfg.seeds == (1 if name.startswith("cft") else 3)  # CGD reports the mean of 3 seeds
    # The laptop form of every one also loads.
    load_ablation(find_config(name, "ablations"), ["base=quickstart", "synth.teacher=reference", "seeds=1"])


def test_packaged_settings_are_the_papers():
    _, lr = load_ablation(find_config("cgd-table4-lr", "ablations"))
    assert [r.train["sft"]["learning_rate"] for r in lr.values()] == [1e-6, 2e-6, 3e-6, 5e-6]
    assert all(r.train["sft"]["per_device_train_batch_size"] * r.train["sft"]["gradient_accumulation_steps"] * 8 == 64
               for r in lr.values())
    _, ratio = load_ablation(find_config("cgd-fig5-ratio", "ablations"))
    assert [m["right_fraction"] for m in ratio["default"].methods] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len({m["size"] for m in ratio["default"].methods}) == 1  # one fixed size
    _, teachers = load_ablation(find_config("cft-table7-teacher", "ablations"))
    assert [r.synth["teacher"]["model"] for r in teachers.values()] == ["gpt-4o-mini", "gpt-4o"]
    assert all(r.synth["critiques"] == "teacher" for r in teachers.values())
    _, responses = load_ablation(find_config("cft-table6-responses", "ablations"))
    assert [r.synth["responses"] for r in responses.values()] == ["original", "student"]
    _, sources = load_ablation(find_config("cft-table5-sources", "ablations"))
    assert [r.data["source"] for r in sources.values()] == ["webinstruct-cft", "metamath", "numina"]


def test_bad_ablation_configs_name_the_problem(tmp_path):
    def write(body):
        path = tmp_path / "a.yaml"
        path.write_text(yaml.safe_dump(body))
        return path

    ok = {"base": "quickstart", "output_dir": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match=r"variants\.bad: .*methods\[0\]: unknown method 'cftt'"):
        load_ablation(write({**ok, "variants": {"bad": {"methods": ["cftt"]}}}))
    with pytest.raises(ConfigError, match=r"variants\.lr: .*learning_rate must be a number > 0"):
        load_ablation(write({**ok, "variants": {"lr": {"train.sft.learning_rate": 0}}}))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['variant'\]"):
        load_ablation(write({**ok, "variant": {}}))
    with pytest.raises(ConfigError, match=r"no config file 'nope'"):
        load_ablation(write({**ok, "base": "nope"}))
    with pytest.raises(ConfigError, match=r"variants\.NAME\.KEY with NAME one of a"):
        load_ablation(write({**ok, "variants": {"a": {}}}), ["variants.b.seed=1"])
    with pytest.raises(ConfigError, match=r"seeds: expected a whole number"):
        load_ablation(write(ok), ["seeds=0"])
    assert main(["ablate", str(write({**ok, "variants": {"bad": {"methods": ["cftt"]}}}))]) == 2
    assert not (tmp_path / "out").exists()


def test_overrides_apply_base_then_set_then_variant_then_command_line(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({"base": "quickstart", "output_dir": str(tmp_path / "o"),
                                    "set": {"eval.limit": 5, "learning_rate": 0.5},
                                    "variants": {"a": {"eval.limit": 6}, "b": {"synth.teacher": {"model": "x", "backend": "openai"}}}}))
    _, runs = load_ablation(path, ["synth.teacher=reference", "variants.a.seed=7"])
    assert runs["a"].eval["limit"] == 6 and runs["b"].eval["limit"] == 5
    assert runs["a"].eval["max_new_tokens"] == 40  # untouched keys keep the base's values
    assert runs["a"].train["sft"]["learning_rate"] == 0.5  # a bare key means train.sft.<key>
    assert runs["a"].synth["teacher"] == runs["b"].synth["teacher"] == "reference"  # the command line comes last
    assert (runs["a"].seed, runs["b"].seed) == (7, 0)
    assert runs["b"].output_dir == str(tmp_path / "o" / "b")


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's matrices are too small to gain from threads, and on a busy 2-core machine
    OpenMP threads waiting on each other made every decoding step about 6x slower (evaluating 3
    questions: 2.4 s with 2 threads, 0.4 s with 1, measured here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _answered(n: int):
    """Demo problems with an original response each: every third right, the others wrong and longer."""
    train, _ = make_demo(train=n, test=0, seed=5)
    out = []
    for i, rec in enumerate(train):
        response = rec.reference if i % 3 == 0 else \
            "Let me work it out step by step. " * (2 + i % 3) + f"The answer is \\boxed{{{int(rec.gold) + 1}}}."
        out.append(replace(rec, response=response))
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model, tmp_path_factory):
    """A tiny run config (the ablations' `base` in these tests) and local data files."""
    root = tmp_path_factory.mktemp("ablate")
    base = {
        "name": "tiny", "output_dir": str(root / "unused"), "model": tiny_model, "seed": 0,
        "data": {"train": "demo", "test": "demo", "demo": {"train": 12, "test": 4}},
        # the random tiny model answers greedy prompts with blank lines; sampling gives text
        "synth": {"teacher": "reference", "critique_style": "cft", "student": {"max_new_tokens": 8, "batch_size": 12, "temperature": 1.0}},
        "methods": ["cft"],
        "train": {"sft": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_length": 256, "max_steps": 1,
                          "disable_tqdm": True}},
        "eval": {"benchmarks": ["test"], "max_new_tokens": 8, "batch_size": 8, "limit": 3},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    answered = _answered(24)
    write_records(root / "answered.jsonl", answered)
    # Local stand-ins for the papers' source files, in their own formats.
    write_jsonl(root / "webinstruct.json", [
        {"instruction": "Please critique whether the following solution to the question is correct.",
         "input": f"Question:\n{r.question}\n\nSolution:\n{r.response}",
         "output": f"The answer is {'right' if i % 3 == 0 else 'wrong'}.\nConclusion: {'right' if i % 3 == 0 else 'wrong'} [END]"}
        for i, r in enumerate(answered[:8])])
    write_jsonl(root / "metamath.jsonl", [{"query": r.question, "response": f"{r.reference}\nThe answer is: {r.gold}", "type": "demo"}
                                          for r in answered[:8]])
    write_jsonl(root / "numina.jsonl", [{"problem": r.question, "solution": r.response, "source": "demo"} for r in answered[8:16]])
    return root


def _table(out: Path) -> list[tuple[str, str]]:
    with open(out / "table.csv", newline="") as fh:
        return [(row["variant"], row["method"]) for row in csv.DictReader(fh)]


def _extra(name: str, tiny: Path) -> list[str]:
    answered = [f"data.train={tiny / 'answered.jsonl'}", "data.source=critkit"]
    if name == "cft-table5-sources":
        return [f"variants.webinstruct.data.train={tiny / 'webinstruct.json'}", f"variants.metamath.data.train={tiny / 'metamath.jsonl'}",
                f"variants.numina.data.train={tiny / 'numina.jsonl'}", "synth.teacher=reference"]
    if name == "cft-table6-responses":  # the student's answers as short as the base config's
        return [*answered, "synth.teacher=reference", "synth.student.max_new_tokens=8"]
    if name == "cft-table10-length":
        return [*answered, "synth.teacher=reference"]
    if name == "cft-table7-teacher":
        return ["synth.teacher=reference"]  # both teachers become the offline one: the mechanics, not the result
    if name == "cft-table9-mix":  # LoRA, so the two-stage set merges its first stage
        return ["train.peft={r: 4, lora_alpha: 8, target_modules: all-linear}"]
    if name == "cgd-fig5-ratio":  # the packaged fractions at a size 24 answered problems can fill (8 right, 16 wrong)
        methods = [{**m, "size": 8} for m in load_yaml(find_config(name, "ablations").read_text())["set"]["methods"]]
        return [*answered, f"methods={json.dumps(methods)}"]
    return []


# All eight run end to end (about 60 s on 2 shared cores with one torch thread). The teachers of
# cft-table7-teacher become the offline reference teacher, so it checks the mechanics, not the result.
END_TO_END = list(ABLATIONS)


@pytest.mark.parametrize("name", END_TO_END)
def test_packaged_ablation_runs_end_to_end_on_a_tiny_model(name, tiny, tmp_path):
    variants, sets = ABLATIONS[name]
    out = tmp_path / name
    seeds = 2 if name == "cgd-table4-lr" else 1
    extra = ["methods=[cgd]"] if name == "cgd-table4-lr" else []  # 4 variants x 2 seeds of one method is enough
    sets = ["cgd"] if name == "cgd-table4-lr" else sets
    assert main(["ablate", name, f"base={tiny / 'base.yaml'}", f"output_dir={out}", f"seeds={seeds}",
                 *_extra(name, tiny), *extra]) == 0
    rows = _table(out)
    shared_base = len(variants) > 1  # same student, test split and evaluation: one base row
    expected = ([("all", "base")] if shared_base else []) + [
        row for v in variants for row in ([] if shared_base else [(v, "base")]) + [(v, s) for s in sets]]
    assert rows == expected
    assert (out / "table.png").stat().st_size > 1000 and (out / "table.md").exists()
    with open(out / "table.csv", newline="") as fh:
        trained = [r for r in csv.DictReader(fh) if r["method"] != "base"]
    assert all(r["test"] != "" and r["seeds"] == str(seeds) for r in trained), trained  # every set trained and evaluated
    for v in variants:
        assert (out / v / "report.md").exists()

    if name == "cft-table9-mix":
        two = out / "default" / "models" / "cft-then-sft"
        adapter = json.loads((two / "final" / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str((two / "stage1-cft" / "merged").resolve())
        assert (two / "stage1-cft" / "final" / "adapter_config.json").exists()
    if name == "cft-table10-length":
        info = json.loads((out / "default" / "pairs" / "cft-short.build.json").read_text())
        assert info["stats"]["mean_tokens_targets"] and info["stats"]["mean_tokens_chosen"] and info["pairs"][0] > 0
        assert "mean completion tokens: sft" in (out / "default" / "report.md").read_text()
    if name == "cgd-fig5-ratio":
        for frac, right in [(0, 0), (25, 2), (50, 4), (75, 6), (100, 8)]:
            assert json.loads((out / "default" / "pairs" / f"cgd-r{frac}.build.json").read_text())["stats"] == {"right": right, "wrong": 8 - right}
    if name == "cft-table6-responses":
        original = {r.id: r.response for r in read_records(tiny / "answered.jsonl")}
        kept = read_records(out / "original" / "synth" / "respond.jsonl")
        own = read_records(out / "student" / "synth" / "respond.jsonl")
        assert all(r.response == original[r.id] for r in kept)
        assert all(r.response != original[r.id] and "respond" in r.meta for r in own)
        assert all(r.critique is None for r in own)  # the original critiques went with the original answers
        critiqued = read_records(out / "student" / "synth" / "critique.jsonl")
        assert all(r.critique and r.meta["critique"]["teacher"] == "reference" for r in critiqued)  # critiqued anew
    if name == "cgd-table4-lr":
        # One synthesis for four learning rates: later variants link the first one's files.
        first, later = out / "lr-1e-6" / "synth" / "respond.jsonl", out / "lr-5e-6" / "synth" / "respond.jsonl"
        assert first.stat().st_ino == later.stat().st_ino
        assert not any("synth" in json.loads(line)["step"] for line in (out / "lr-5e-6" / "steps.jsonl").read_text().splitlines())
        with open(out / "table_seeds.csv", newline="") as fh:
            assert sorted((r["variant"], r["seed"]) for r in csv.DictReader(fh) if r["method"] == "cgd") == \
                sorted((v, s) for v in variants for s in ("0", "1"))
        assert " ± " in (out / "table.md").read_text()
        # Resuming runs nothing again.
        before = {v: (out / v / "steps.jsonl").read_text().count("\n") for v in variants}
        assert main(["ablate", name, f"base={tiny / 'base.yaml'}", f"output_dir={out}", f"seeds={seeds}", *extra]) == 0
        assert {v: (out / v / "steps.jsonl").read_text().count("\n") for v in variants} == {v: n + 1 for v, n in before.items()}
