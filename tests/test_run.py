"""The main job end to end on a tiny real model: every method, a report, and resuming."""

from __future__ import annotations

import json

import pytest
import yaml

from critkit.cli import main
from critkit.training.methods import METHODS
from critkit.data.records import read_records
from critkit.config import ConfigError


def _config(tmp_path, tiny_model, methods) -> str:
    cfg = {
        "name": "tiny", "output_dir": str(tmp_path / "run"), "model": tiny_model, "seed": 0,
        "data": {"train": "demo", "test": "demo", "demo": {"train": 12, "test": 6}},
        "synth": {"teacher": "reference", "critique_style": "cft",
                  # the random tiny model answers greedy prompts with blank lines; sampling gives text
                  "student": {"max_new_tokens": 6, "batch_size": 12, "temperature": 1.0}},
        "methods": methods,
        # One step shows what this file checks (files, reports, resume): TRL's default 3 epochs added minutes.
        "train": {"sft": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_length": 256, "max_steps": 1,
                          "disable_tqdm": True}},
        "eval": {"benchmarks": ["test"], "max_new_tokens": 6, "batch_size": 6},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_run_every_method_then_resume(tiny_model, tmp_path, capsys):
    config = _config(tmp_path, tiny_model, list(METHODS))
    assert main(["run", config]) == 0
    root = tmp_path / "run"
    records = read_records(root / "synth" / "solve.jsonl")
    assert len(records) == 12 and all(r.response is not None and r.critique and r.refined for r in records)
    # A method with no usable pair (sft-verified needs a right answer; the random tiny model
    # rarely gives one) is reported and skipped; every other method is trained and evaluated.
    untrained = {m for m in METHODS if (root / "pairs" / f"{m}.jsonl").stat().st_size == 0}
    assert untrained <= {"sft-verified"}
    for method in set(METHODS) - untrained:
        assert (root / "models" / method / "final").exists(), method
        scores = json.loads((root / "eval" / method / "test" / "scores.json").read_text())
        assert scores["n"] == 6
    report = (root / "report.md").read_text()
    assert all(f"| {m} |" in report for m in ["base", *METHODS])
    assert (root / "report.png").stat().st_size > 1000
    results = json.loads((root / "results.json").read_text())
    assert set(results) == {"base", *METHODS}

    # Second run: every step's output exists, so nothing is recomputed.
    capsys.readouterr()
    steps_before = (root / "steps.jsonl").read_text().count("\n")
    assert main(["run", config]) == 0
    out = capsys.readouterr().out
    assert out.count("already done, skipped") == 1 + 4 + 1 + len(METHODS) + 2 * (len(METHODS) - len(untrained))
    assert (root / "steps.jsonl").read_text().count("\n") == steps_before + 1  # only the report again


def test_run_stops_on_bad_config_before_loading_a_model(tiny_model, tmp_path):
    config = _config(tmp_path, tiny_model, ["cft", "not-a-method"])
    with pytest.raises(ConfigError, match="not-a-method"):
        from critkit.run import load_run_config

        load_run_config(config)
    assert main(["run", config, "learning_rate=0"]) == 2
    assert not (tmp_path / "run").exists()


def test_an_http_teacher_from_the_config_becomes_an_openai_backend():
    """The cgd-8b recipe's teacher mapping (model, backend, base_url, concurrency) builds a client."""
    from importlib import resources

    from critkit.engine.backends import OpenAIBackend
    from critkit.run import _teacher, load_run_config

    cfg = load_run_config(str(resources.files("critkit").joinpath("configs", "cgd-8b.yaml")))
    teacher = _teacher(cfg, student_backend=None)
    assert isinstance(teacher, OpenAIBackend)
    assert teacher.name == "meta-llama/Llama-3.3-70B-Instruct"
    assert teacher.base_url == "http://127.0.0.1:8000/v1" and teacher.concurrency == 64


# ------------------------------------------------------------------------- an HTTP teacher


def test_run_with_a_teacher_over_http(tiny_model, tmp_path):
    """`synth.teacher` as an OpenAI-compatible server (the cgd-8b recipe's form): every critique of
    the run is the scripted teacher's reply to that record's own request, one request per record, and
    a CFT-only run asks it for nothing else (no refinements or solutions)."""
    from synth_servers import ScriptedServer, scripted_reply

    server = ScriptedServer()
    try:
        config = _config(tmp_path, tiny_model, ["cft"])
        cfg = yaml.safe_load(open(config))
        cfg["synth"]["teacher"] = {"model": "scripted", "backend": "openai", "base_url": server.url, "concurrency": 2}
        cfg["eval"]["limit"] = 2
        open(config, "w").write(yaml.safe_dump(cfg))
        assert main(["run", config]) == 0
        calls = server.teacher.calls
    finally:
        server.stop()
    records = read_records(tmp_path / "run" / "synth" / "critique.jsonl")
    assert len(records) == 12 and calls == 12
    for rec in records:
        info = rec.meta["critique"]
        assert info["teacher"] == "OpenAIBackend:scripted" and info["messages"][-1]["content"].endswith(f"{rec.response}\n")
        assert rec.critique == scripted_reply(info["messages"]) and rec.verdict in ("right", "wrong")
    assert all(r.refined is None and r.teacher_solution is None for r in read_records(tmp_path / "run" / "synth" / "solve.jsonl"))
    assert (tmp_path / "run" / "models" / "cft" / "final").exists()


# ------------------------------------------------------------ interrupted inside a step


def test_run_killed_inside_its_training_step_resumes_and_ends_like_an_uninterrupted_run(tiny_model, tmp_path):
    """`critkit run` SIGKILLed in the middle of a step (training, while checkpoint-2 is being saved,
    by train.py's test-only hook), then run again: the finished steps are skipped, training resumes
    from checkpoint-1, and losses, weights and the evaluation equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    from critkit.training.train import KILL_WHILE_SAVING

    def config(name: str) -> str:
        path = _config(tmp_path / name, tiny_model, ["sft-gold"])
        cfg = yaml.safe_load(open(path))
        cfg["train"]["sft"].update(max_steps=3, save_strategy="steps", save_steps=1, learning_rate=1e-2)
        open(path, "w").write(yaml.safe_dump(cfg))
        return path

    (tmp_path / "killed").mkdir()
    (tmp_path / "whole").mkdir()
    killed, whole = config("killed"), config("whole")
    env = {**os.environ, "OMP_NUM_THREADS": "1", KILL_WHILE_SAVING: "2"}
    victim = subprocess.Popen([sys.executable, "-m", "critkit", "run", killed], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the uninterrupted run meanwhile, with the same single thread
    try:
        assert main(["run", whole]) == 0
        log, _ = victim.communicate(timeout=300)
        assert victim.returncode == -signal.SIGKILL, log[-3000:]
        root = tmp_path / "killed" / "run"
        models = root / "models" / "sft-gold"
        assert not (models / "final").exists() and not (models / "checkpoint-2" / "trainer_state.json").exists()
        done_before = [json.loads(line)["step"] for line in (root / "steps.jsonl").read_text().splitlines()]
        assert done_before[-1] == "build sft-gold" and "train sft-gold" not in done_before

        assert main(["run", killed]) == 0
    finally:
        torch.set_num_threads(threads)
    log = json.loads((models / "train_log.json").read_text())
    assert log["resumed_from"] == str(models / "checkpoint-1")
    steps = [json.loads(line)["step"] for line in (root / "steps.jsonl").read_text().splitlines()]
    assert steps[len(done_before):] == ["train sft-gold", "eval sft-gold", "report"]  # nothing before it ran again

    reference = tmp_path / "whole" / "run"
    losses = lambda run: [(e["step"], e["loss"]) for e in json.loads(  # noqa: E731
        (run / "models" / "sft-gold" / "train_log.json").read_text())["log_history"] if "loss" in e]
    assert [s for s, _ in losses(root)] == [s for s, _ in losses(reference)] == [1, 2, 3]
    for (_, got), (_, want) in zip(losses(root), losses(reference)):
        assert got == pytest.approx(want, rel=1e-5)
    w_killed = load_file(str(models / "final" / "model.safetensors"))
    w_whole = load_file(str(reference / "models" / "sft-gold" / "final" / "model.safetensors"))
    for name in w_whole:
        assert torch.allclose(w_killed[name], w_whole[name], rtol=1e-5, atol=1e-6), name
    scores = lambda run: json.loads((run / "eval" / "sft-gold" / "test" / "scores.json").read_text())  # noqa: E731
    assert scores(root)["n"] == scores(reference)["n"] == 6
    assert (root / "report.md").exists()
