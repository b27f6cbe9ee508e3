"""Ablations: every packaged ablation config loads at the papers' settings, and runs end to end on a
tiny real model (one training step per set, a few test questions) producing its table."""

from __future__ import annotations

import csv
import json
import re
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
    "cft-table2-baselines": (["default"], ["sft", "sft-verified", "sft-teacher", "cft"]),
    "cft-table5-sources": (["webinstruct", "metamath", "numina"], ["cft"]),
    "cft-table6-responses": (["original", "student"], ["cft"]),
    "cft-table7-teacher": (["gpt-4o-mini", "gpt-4o"], ["cft"]),
    "cft-table9-mix": (["default"], ["cft", "cft+acemath-sft", "cft-then-acemath-sft", "acemath-sft"]),
    "cft-table10-length": (["default"], ["sft", "cft", "cft-short"]),
    "cgd-fig4-critique": (["default"], ["distilled-sft", "cgd", "cgd-no-critique"]),
    "cgd-table4-lr": (["lr-1e-6", "lr-5e-6"], ["cft", "cgd"]),
    "cgd-fig7-lr": (["lr-1e-6", "lr-2e-6", "lr-3e-6", "lr-4e-6", "lr-5e-6"], ["cft", "cgd"]),
    "cgd-fig5-ratio": (["default"], ["cgd-r0", "cgd-r25", "cgd-r50", "cgd-r75", "cgd-r100"]),
}
# The user-supplied files some ablations read at config load (relative to the working directory).
ACEMATH_50K = "data/AceMath-SFT-50K.jsonl"
WEBINSTRUCT_CFT_600K = "data/WebInstruct-CFT-600K.json"


def test_every_packaged_ablation_is_listed_here():
    folder = resources.files("critkit").joinpath("configs", "ablations")
    # study-critique is the small-scale study's (issue 15), not a paper's: tests/test_reference_critique.py loads it.
    assert sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")) == sorted(
        [*ABLATIONS, "study-critique"])


@pytest.fixture(scope="module")
def paper_files(tmp_path_factory):
    """Stand-ins for the user-supplied files at the packaged paths (the config check reads a file up to
    its first usable pair, so a few rows of the right shape stand in for 50K or 600K)."""
    root = tmp_path_factory.mktemp("paper-files")
    (root / "data").mkdir()
    train, _ = make_demo(train=8, test=0, seed=11)
    write_jsonl(root / ACEMATH_50K, [{"messages": [{"role": "user", "content": r.question},
                                                   {"role": "assistant", "content": r.reference}], "answer": r.gold}
                                     for r in train])
    row = json.dumps({"instruction": "Please critique whether the following solution to the question is correct.",
                      "input": "Question:\nWhat is 2 + 2?\n\nSolution:\n2 + 2 = 4.", "output": "Right.\nConclusion: right [END]"})
    (root / WEBINSTRUCT_CFT_600K).write_text((row + "\n") * 3)
    return root


@pytest.mark.parametrize("name", ABLATIONS)
def test_packaged_ablation_loads_at_the_papers_settings(name, paper_files, monkeypatch):
    monkeypatch.chdir(paper_files)
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


def test_packaged_settings_are_the_papers(paper_files, monkeypatch):
    from critkit.run import load_run_config

    monkeypatch.chdir(paper_files)
    _, lr = load_ablation(find_config("cgd-table4-lr", "ablations"))
    assert [r.train["sft"]["learning_rate"] for r in lr.values()] == [1e-6, 5e-6]  # CGD Table 4's two rates
    assert all(r.train["sft"]["per_device_train_batch_size"] * r.train["sft"]["gradient_accumulation_steps"] * 8 == 64
               for r in lr.values())
    _, curve = load_ablation(find_config("cgd-fig7-lr", "ablations"))  # Figure 7: a grid of critkit's, spanning Table 4's
    assert [r.train["sft"]["learning_rate"] for r in curve.values()] == [1e-6, 2e-6, 3e-6, 4e-6, 5e-6]
    assert "critkit's choice" in find_config("cgd-fig7-lr", "ablations").read_text()
    _, ratio = load_ablation(find_config("cgd-fig5-ratio", "ablations"))
    assert [m["right_fraction"] for m in ratio["default"].methods] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {m["size"] for m in ratio["default"].methods} == {25_000}  # CGD B.1.4: "the total sample size (25k)"
    # CGD 4.1.1 / A.1: 100K sampled WebInstruct questions the student answers itself, mean of 3 seeds.
    cgd = load_run_config(find_config("cgd-8b"))
    assert (cgd.data["train"], cgd.data["source"]) == ("data/WebInstructSub-100K.jsonl", "webinstruct-sub")
    assert cgd.synth["responses"] == "student" and cgd.seeds == 3
    assert all(r.data == cgd.data for r in [*lr.values(), *curve.values(), *ratio.values()])
    # CFT Table 9: the SFT part of the mixture is 50K AceMath SFT from its own file.
    _, mix = load_ablation(find_config("cft-table9-mix", "ablations"))
    acemath = {"sft-gold": {"path": ACEMATH_50K, "source": "acemath"}}
    assert [m if isinstance(m, str) else (m.get("mix") or m.get("stages") or m["method"], m["records"])
            for m in mix["default"].methods] == ["cft", (["cft", "sft-gold"], acemath), (["cft", "sft-gold"], acemath),
                                                 ("sft-gold", acemath)]
    # CFT Table 2: verified SFT is the top 50K of a larger judged pool; GPT-4o-1120 answers for sft-teacher.
    _, baselines = load_ablation(find_config("cft-table2-baselines", "ablations"))
    verified = baselines["default"].methods[1]
    assert verified == {"name": "sft-verified", "method": "sft-verified", "size": 50_000,
                        "records": {"sft-verified": {"path": WEBINSTRUCT_CFT_600K, "source": "webinstruct-cft"}}}
    assert baselines["default"].synth["teacher"]["model"] == "gpt-4o-2024-11-20"
    _, teachers = load_ablation(find_config("cft-table7-teacher", "ablations"))
    assert [r.synth["teacher"]["model"] for r in teachers.values()] == ["gpt-4o-mini", "gpt-4o"]
    assert all(r.synth["critiques"] == "teacher" for r in teachers.values())
    _, responses = load_ablation(find_config("cft-table6-responses", "ablations"))
    assert [r.synth["responses"] for r in responses.values()] == ["original", "student"]
    _, sources = load_ablation(find_config("cft-table5-sources", "ablations"))
    assert [r.data["source"] for r in sources.values()] == ["webinstruct-cft", "metamath", "numina"]


def test_an_ablation_whose_records_file_is_missing_stops_at_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(ConfigError, match=r"variants\.default: .*methods\[1\] \(cft\+acemath-sft\)\.records\.sft-gold: "
                                          r"data/AceMath-SFT-50K\.jsonl: file not found"):
        load_ablation(find_config("cft-table9-mix", "ablations"))
    with pytest.raises(ConfigError, match=r"methods\[1\] \(sft-verified\)\.records\.sft-verified: .*file not found"):
        load_ablation(find_config("cft-table2-baselines", "ablations"))
    assert main(["ablate", "cft-table9-mix"]) == 2 and not (tmp_path / "runs").exists()


# "CFT Table 9", "CGD B.1.4", "CGD 4.1.1", "CFT 3.1": a paper, then a table, figure or section.
CITATION = re.compile(r"\b(?:CFT|CGD)\b[^\n]*?\b(?:Table \d+|Figure \d+|[AB]\.\d|\d\.\d)")


@pytest.mark.parametrize("name", [*(f"ablations/{n}" for n in ABLATIONS), "cgd-8b", "cft-7b", "cft-32b"])
def test_every_paper_config_cites_what_it_follows(name):
    folder, _, stem = name.rpartition("/")
    header = "".join(line for line in find_config(stem, folder).read_text().splitlines(True) if line.startswith("#"))
    assert CITATION.search(header), header
    assert CITATION.search("# CGD B.1.4 / Figure 5") and not CITATION.search("# the paper's recipe")  # the check can fail


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
    # A local stand-in for the AceMath SFT file, in its own format.
    write_jsonl(root / "acemath.jsonl", [{"messages": [{"role": "user", "content": r.question},
                                                       {"role": "assistant", "content": r.reference}], "answer": r.gold}
                                         for r in answered[16:24]])
    return root


def _table(out: Path) -> list[tuple[str, str]]:
    with open(out / "table.csv", newline="") as fh:
        return [(row["variant"], row["method"]) for row in csv.DictReader(fh)]


def _packaged_methods(name: str, paths: dict[str, str]) -> list:
    """The packaged ablation's `methods`, with its records files moved to local stand-ins."""
    methods = load_yaml(find_config(name, "ablations").read_text())["set"]["methods"]
    for m in methods:
        for spec in (m.get("records", {}).values() if isinstance(m, dict) else []):
            spec["path"] = paths.get(spec["path"], spec["path"])  # a YAML alias shares one mapping: moved once
    return methods


def _extra(name: str, tiny: Path, teachers: dict[str, str]) -> list[str]:
    answered = [f"data.train={tiny / 'answered.jsonl'}", "data.source=critkit"]
    if name == "cft-table6-responses":  # the student's answers as short as the base config's
        return [*answered, "synth.teacher=reference", "synth.student.max_new_tokens=8"]
    if name == "cft-table10-length":  # critiques with the worked solution: as long as the answers, so some match
        return [*answered, "synth.teacher=reference", "synth.reference_critique=solution"]
    if name == "cft-table7-teacher":  # each teacher a scripted server of its own (see the test)
        return [f"variants.{variant}.synth.teacher={{model: {variant}, backend: openai, base_url: '{url}', concurrency: 2}}"
                for variant, url in teachers.items()]
    if name == "cft-table9-mix":  # LoRA, so the two-stage set merges its first stage; a local AceMath stand-in
        return ["train.peft={r: 4, lora_alpha: 8, target_modules: all-linear}",
                f"methods={json.dumps(_packaged_methods(name, {ACEMATH_50K: str(tiny / 'acemath.jsonl')}))}"]
    if name == "cgd-fig5-ratio":  # the packaged fractions at a size 24 answered problems can fill (8 right, 16 wrong)
        methods = [{**m, "size": 8} for m in load_yaml(find_config(name, "ablations").read_text())["set"]["methods"]]
        return [*answered, f"methods={json.dumps(methods)}"]
    return []


# Six run end to end, each for mechanics that no other test runs through `critkit ablate`: a
# two-stage set that merges its LoRA stage and a mixture from another file (cft-table9-mix); one
# synthesis shared by variants, several seeds and a resume (cgd-table4-lr); sets of a fixed size and
# right fraction (cgd-fig5-ratio); a teacher per variant over HTTP (cft-table7-teacher); the
# student's own answers replacing a dataset's (cft-table6-responses); length matching counted in
# the student's tokens (cft-table10-length). The other four are checked where their mechanics
# live: their configs load and expand at the papers' settings (above), records pools with a size in
# test_mixtures.py, source mappings in test_sources.py, the methods of cgd-fig4-critique and
# cft-table2-baselines in test_run.py; each added 10-30 s here and no code path.
END_TO_END = ["cft-table9-mix", "cgd-table4-lr", "cgd-fig5-ratio", "cft-table7-teacher", "cft-table6-responses",
              "cft-table10-length"]


@pytest.mark.parametrize("name", END_TO_END)
def test_packaged_ablation_runs_end_to_end_on_a_tiny_model(name, tiny, tmp_path):
    from synth_servers import ScriptedServer

    variants, sets = ABLATIONS[name]
    out = tmp_path / name
    seeds = 2 if name == "cgd-table4-lr" else 1
    lr_sweep = name == "cgd-table4-lr"
    extra = ["methods=[cgd]"] if lr_sweep else []  # the variants x seeds of one method are enough
    sets = ["cgd"] if lr_sweep else sets
    # Two teachers that sign their replies, so each critique shows which one wrote it.
    servers = {v: ScriptedServer(sign=f"[{v}] ") for v in variants} if name == "cft-table7-teacher" else {}
    try:
        assert main(["ablate", name, f"base={tiny / 'base.yaml'}", f"output_dir={out}", f"seeds={seeds}",
                     *_extra(name, tiny, {v: s.url for v, s in servers.items()}), *extra]) == 0
    finally:
        for server in servers.values():
            server.stop()
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
        two = out / "default" / "models" / "cft-then-acemath-sft"
        adapter = json.loads((two / "final" / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str((two / "stage1-cft" / "merged").resolve())
        assert (two / "stage1-cft" / "final" / "adapter_config.json").exists()
        # The build info says where each part of the mixture came from.
        info = json.loads((out / "default" / "pairs" / "cft+acemath-sft.build.json").read_text())
        assert [(p["method"], p["from"], p["used"]) for p in info["parts"]] == [
            ("cft", "the run's records", 12), ("sft-gold", str(tiny / "acemath.jsonl"), 8)]
        sft = [json.loads(line) for line in (out / "default" / "pairs" / "acemath-sft.jsonl").read_text().splitlines()]
        assert [r["id"] for r in sft] == [f"acemath-{i}" for i in range(1, 9)]
    if name == "cft-table10-length":  # length matching in a run: the student's tokenizer counts, the report says so
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
    if name == "cft-table7-teacher":  # the ablated dimension is really there: each variant's critiques are its teacher's
        for v, server in servers.items():
            critiqued = read_records(out / v / "synth" / "critique.jsonl")
            assert len(critiqued) == 12 and server.teacher.calls == 12
            assert all(r.critique.startswith(f"[{v}] Critique ") and r.meta["critique"]["teacher"] == f"OpenAIBackend:{v}"
                       for r in critiqued)
    if name == "cgd-table4-lr":
        # One synthesis for four learning rates: later variants link the first one's files.
        first, later = out / "lr-1e-6" / "synth" / "respond.jsonl", out / "lr-5e-6" / "synth" / "respond.jsonl"
        assert first.stat().st_ino == later.stat().st_ino
        assert not any("synth" in json.loads(line)["step"] for line in (out / "lr-5e-6" / "steps.jsonl").read_text().splitlines())
        with open(out / "table_seeds.csv", newline="") as fh:
            assert sorted((r["variant"], r["seed"]) for r in csv.DictReader(fh) if r["method"] == "cgd") == \
                sorted((v, s) for v in variants for s in ("0", "1"))
        assert " ± " in (out / "table.md").read_text()
        # Resuming runs nothing again but the reports.
        steps = lambda v: [json.loads(line)["step"] for line in (out / v / "steps.jsonl").read_text().splitlines()]  # noqa: E731
        before = {v: len(steps(v)) for v in variants}
        assert main(["ablate", name, f"base={tiny / 'base.yaml'}", f"output_dir={out}", f"seeds={seeds}", *extra]) == 0
        again = {v: steps(v)[before[v]:] for v in variants}
        assert all(s and all(step.startswith("report") for step in s) for s in again.values()), again
