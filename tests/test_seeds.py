"""Several training seeds in one run: layout, mean ± std report, per-seed numbers, resume; and a
training set the data cannot fill is reported and skipped without stopping the run."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from critkit.cli import main
from critkit.report.tables import mean_std, write_table


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny matrices gain nothing from threads; on a busy 2-core machine two OpenMP threads made
    decoding several times slower (see test_ablate.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_run_with_seeds_trains_each_set_per_seed_and_reports_mean_and_std(tiny_model, tmp_path, capsys):
    cfg = {
        "name": "seeds", "output_dir": str(tmp_path / "run"), "model": tiny_model, "seed": 0,
        "data": {"train": "demo", "test": "demo", "demo": {"train": 12, "test": 4}},
        "synth": {"teacher": "reference", "student": {"max_new_tokens": 6, "batch_size": 12, "temperature": 1.0}},
        # r0 asks for 50 pairs from wrong first answers: 12 demo problems cannot fill it.
        "methods": ["sft-gold", {"name": "mixed", "mix": ["sft-gold", "cgd"]},
                    {"name": "r0", "method": "cgd", "right_fraction": 0.0, "size": 50}],
        "train": {"sft": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_length": 256, "max_steps": 1}},
        "eval": {"benchmarks": ["test"], "max_new_tokens": 6, "batch_size": 4, "limit": 3},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "run"
    for name in ("sft-gold", "mixed"):
        for seed in (0, 1):
            final = root / "models" / name / f"seed{seed}" / "final"
            assert (final / "config.json").exists()
            assert yaml.safe_load((final.parent / "train_config.yaml").read_text())["sft"]["seed"] == seed
            assert json.loads((root / "eval" / f"{name}@seed{seed}" / "test" / "scores.json").read_text())["n"] == 3
    assert not (root / "models" / "sft-gold" / "final").exists()  # the one-seed layout is not used

    # The shortfall names the fields and counts, and the other sets still trained.
    assert ("r0: no training pairs, not trained (r0: right_fraction 0 of size 50 needs 0 pairs from records with "
            "verdict 'right' and 50 with 'wrong'; there are 0 right and 12 wrong: lower `size` or add data)") in out
    assert not (root / "models" / "r0").exists()

    report = (root / "report.md").read_text()
    assert "| sft-gold | 2 | " in report and "| mixed | 2 | " in report and " ± " in report
    assert "## Per seed" in report and "| sft-gold | 1 | " in report
    assert "not trained: r0: right_fraction 0 of size 50" in report
    with open(root / "seeds.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["model"], r["seed"]) for r in rows) == [("base", ""), ("mixed", "0"), ("mixed", "1"),
                                                            ("sft-gold", "0"), ("sft-gold", "1")]
    results = json.loads((root / "results.json").read_text())
    accs = [results["sft-gold"]["seeds"][k]["scores"]["test"]["accuracy"] for k in ("0", "1")]
    assert results["sft-gold"]["mean"]["test"] == pytest.approx(sum(accs) / 2)
    assert results["sft-gold"]["std"]["test"] == pytest.approx(mean_std(accs)[1])
    assert (root / "report.png").stat().st_size > 1000

    # Resuming: every step is found done; only the report is written again.
    steps = (root / "steps.jsonl").read_text().count("\n")
    assert main(["run", str(path), "--seeds", "2"]) == 0
    assert (root / "steps.jsonl").read_text().count("\n") == steps + 1

    # A smaller size, as the shortfall message suggests: that set is built again and trained.
    smaller = [*cfg["methods"][:2], {**cfg["methods"][2], "size": 6}]
    assert main(["run", str(path), "--seeds", "2", f"methods={json.dumps(smaller)}"]) == 0
    assert json.loads((root / "pairs" / "r0.build.json").read_text())["pairs"] == [6]
    assert all((root / "models" / "r0" / f"seed{k}" / "final" / "config.json").exists() for k in (0, 1))
    assert "| r0 | 2 | " in (root / "report.md").read_text()


def test_ablation_table_shows_mean_and_std_over_seeds(tmp_path):
    rows = [{"variant": "all", "method": "base", "seeds": {"-": {"a": 0.25, "b": 0.25}}},
            {"variant": "v", "method": "cgd", "seeds": {0: {"a": 0.5, "b": 0.7}, 1: {"a": 0.7, "b": 0.9}}},
            {"variant": "v", "method": "untrained", "seeds": {}}]
    write_table(rows, ["a", "b"], tmp_path, title="t")
    md = (tmp_path / "table.md").read_text()
    assert "| all | base | 1 | 25.0 | 25.0 | 25.0 |" in md
    assert "| v | cgd | 2 | 60.0 ± 14.1 | 80.0 ± 14.1 | 70.0 ± 14.1 |" in md  # sample std of (50, 70)
    assert "| v | untrained | 0 | – | – | – |" in md
    with open(tmp_path / "table.csv", newline="") as fh:
        cgd = [r for r in csv.DictReader(fh) if r["method"] == "cgd"][0]
    assert (cgd["a"], cgd["a_std"], cgd["avg"], cgd["seeds"]) == ("60.00", "14.14", "70.00", "2")
    with open(tmp_path / "table_seeds.csv", newline="") as fh:
        assert [(r["method"], r["seed"], r["avg"]) for r in csv.DictReader(fh)] == [
            ("base", "-", "25.00"), ("cgd", "0", "60.00"), ("cgd", "1", "80.00")]
