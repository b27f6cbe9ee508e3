"""`critkit train` killed with SIGKILL between checkpoints, then started again with the same
command: it resumes from the last complete checkpoint and ends exactly where an uninterrupted
run ends (per-step losses, final weights).

Real subprocesses on the tiny Llama, full fine-tuning, 6 steps with a checkpoint every 2. The
killed run kills itself (train.py's test-only KILL_WHILE_SAVING hook) while checkpoint-4 is being
saved, after its weights are written and before trainer_state.json: checkpoint-2 is complete and
checkpoint-4 is torn, the case transformers' get_last_checkpoint picks and then fails to load. A
kill timed from outside (polling for the folder) reached checkpoint-6 first on a busy machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from critkit.data.records import write_jsonl
from critkit.training.train import KILL_WHILE_SAVING, _last_checkpoint
from conftest import varied_pairs  # tests/conftest.py, on the path pytest sets up


def _env() -> dict:
    # One thread per process: the two runs share 2 cores, and fp32 sums keep one order.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _complete(folder: Path) -> bool:
    """Judged here independently of critkit: trainer_state.json is the last file transformers'
    Trainer._save_checkpoint writes, so a checkpoint without a readable one was cut short."""
    try:
        return "global_step" in json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False


def _losses(out: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in json.loads((out / "train_log.json").read_text())["log_history"] if "loss" in e}


def test_training_killed_between_checkpoints_resumes_and_ends_like_an_uninterrupted_run(tiny_model, tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, varied_pairs())
    config = tmp_path / "train.yaml"
    # 16 pairs / batch 4 = 4 steps per epoch: 6 steps cross an epoch boundary, where the sampler reseeds.
    config.write_text(json.dumps({"model": tiny_model, "data": str(data), "sft": {
        "learning_rate": 1e-2, "max_steps": 6, "per_device_train_batch_size": 4, "max_length": 128, "seed": 1,
        "save_strategy": "steps", "save_steps": 2, "use_cpu": True, "disable_tqdm": True}}))
    full, killed = tmp_path / "full", tmp_path / "killed"

    def start(out: Path, log: str, **env) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "critkit", "train", str(config), f"output_dir={out}"],
                                env={**_env(), **env}, stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT)

    uninterrupted = start(full, "full.log")  # alongside the killed run: most of each run is imports
    victim = start(killed, "victim.log", **{KILL_WHILE_SAVING: "4"})
    assert victim.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "victim.log").read_text()[-3000:]
    assert not (killed / "final").exists()
    steps = sorted(int(p.name.split("-")[1]) for p in killed.glob("checkpoint-*"))
    complete = [s for s in steps if _complete(killed / f"checkpoint-{s}")]
    assert (steps, complete) == ([2, 4], [2]), (steps, complete)
    torn = killed / "checkpoint-4"
    assert (torn / "model.safetensors").exists() and not (torn / "trainer_state.json").exists()  # torn where the README says
    last = killed / "checkpoint-2"
    from transformers.trainer_utils import get_last_checkpoint

    assert get_last_checkpoint(str(killed)) == str(torn)  # what transformers alone would have resumed from
    # Its files are not written again if the run really resumes from it (a fresh start would rewrite them).
    stamp = (last / "model.safetensors").stat().st_mtime_ns

    resumed = subprocess.run([sys.executable, "-m", "critkit", "train", str(config), f"output_dir={killed}"],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from {last}\n" in resumed.stdout
    log = json.loads((killed / "train_log.json").read_text())
    assert log["resumed_from"] == str(last)
    assert (last / "model.safetensors").stat().st_mtime_ns == stamp
    assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "full.log").read_text()[-3000:]
    assert "resuming" not in (tmp_path / "full.log").read_text()

    # The resumed run's log_history covers every step: the steps up to the checkpoint come from
    # its trainer_state.json (logged by the killed process), the rest from the resumed process.
    # Equal losses after the checkpoint also show the data order was restored (the sampler's
    # seed and the skipped batches): other rows would change the loss in its first digits.
    # Measured here: losses and weights are bit-identical to the uninterrupted run's (same
    # process layout, one thread); the tolerances leave room for another machine's kernels.
    expected, got = _losses(full), _losses(killed)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-6 * abs(expected[step]), (step, got[step], expected[step])
    # metrics.train_loss after a resume averages the steps this process ran (transformers' definition,
    # docs/distributed.md), not the whole history; the uninterrupted run's averages all six.
    after = [expected[step] for step in (3, 4, 5, 6)]
    assert log["metrics"]["train_loss"] == pytest.approx(sum(after) / 4, rel=1e-6)
    full_log = json.loads((full / "train_log.json").read_text())
    assert full_log["metrics"]["train_loss"] == pytest.approx(sum(expected.values()) / 6, rel=1e-6)
    assert sum(after) / 4 != pytest.approx(sum(expected.values()) / 6, rel=1e-3)  # the two definitions differ here
    w_full, w_resumed = load_file(str(full / "final" / "model.safetensors")), load_file(str(killed / "final" / "model.safetensors"))
    assert w_full.keys() == w_resumed.keys()
    for name in w_full:
        assert (w_full[name] - w_resumed[name]).abs().max() <= 1e-6 * w_full[name].abs().max(), name


def test_last_checkpoint_skips_folders_a_kill_left_incomplete(tmp_path):
    from transformers import TrainerState
    from transformers.trainer_utils import get_last_checkpoint

    out = tmp_path / "run"
    assert _last_checkpoint(out) is None  # no output folder yet
    (out / "checkpoint-2").mkdir(parents=True)
    TrainerState(global_step=2).save_to_json(str(out / "checkpoint-2" / "trainer_state.json"))
    # Killed during the save: the model is written, trainer_state.json (written last) is not.
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-4" / "model.safetensors").write_bytes(b"\0" * 64)
    # Killed while trainer_state.json itself was being written: it is cut short.
    (out / "checkpoint-6").mkdir()
    TrainerState(global_step=6).save_to_json(str(out / "checkpoint-6" / "trainer_state.json"))
    text = (out / "checkpoint-6" / "trainer_state.json").read_text()
    (out / "checkpoint-6" / "trainer_state.json").write_text(text[: len(text) // 2])
    (out / "checkpoint-8").write_text("a file, not a checkpoint folder")
    (out / "checkpoint-10-old").mkdir()
    (out / "checkpoint-10-old" / "trainer_state.json").write_text(text)

    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-6")  # what transformers would resume from
    assert _last_checkpoint(out) == str(out / "checkpoint-2")
    TrainerState(global_step=4).save_to_json(str(out / "checkpoint-4" / "trainer_state.json"))
    assert _last_checkpoint(out) == str(out / "checkpoint-4")
    (out / "checkpoint-12").mkdir()
    TrainerState(global_step=12).save_to_json(str(out / "checkpoint-12" / "trainer_state.json"))
    assert _last_checkpoint(out) == str(out / "checkpoint-12")  # numeric order: "12" sorts before "4" as text
