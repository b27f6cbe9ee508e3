"""lm-evaluation-harness as an engine (issue 13, item 4): lm-eval tasks written as lm-eval task
YAMLs over a local JSONL file (nothing loads from the hub here), run by lm-eval itself on the
tiny model, as a full folder and as a LoRA adapter; results where `critkit report` finds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install -e '.[lmeval]')")

from critkit.cli import main  # noqa: E402
from critkit.evaluation.lmeval import lm_eval_model_args, run_lm_eval  # noqa: E402

DOCS = [{"question": f"What is {a} + {b}?", "choices": [str(a + b - 1), str(a + b), str(a + b + 1)], "label": 1,
         "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4)]]


def _tasks(folder: Path) -> Path:
    """Two lm-eval tasks over one local file: a multiple-choice one (log-likelihoods, as MUSR and
    TruthfulQA mc1) and a generative one (as BBH), in lm-eval's own YAML keys."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "sums.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
              "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n")
    (folder / "sums_mc.yaml").write_text("task: sums_mc\noutput_type: multiple_choice\n" + common
                                         + "doc_to_choice: choices\ndoc_to_target: label\n"
                                         "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "sums_gen.yaml").write_text(
        "task: sums_gen\noutput_type: generate_until\n" + common + "doc_to_target: answer\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "filter_list:\n  - name: number\n    filter:\n      - function: regex\n        regex_pattern: \"(-?[0-9]+)\"\n"
        "      - function: take_first\n")
    return folder


def _lls(out: Path) -> list[list[float]]:
    """Each document's log-likelihood of each choice, from lm-eval's per-sample log, in doc order."""
    rows = sorted((json.loads(line) for line in (out / "lmeval_samples" / "sums_mc.jsonl").read_text().splitlines()),
                  key=lambda r: r["doc_id"])
    return [[resp[0][0] for resp in r["resps"]] for r in rows]


def _adapter(tiny_model: str, folder: Path) -> tuple[str, str]:
    """A LoRA adapter on the tiny model whose weights change its outputs (B is not zero), and the
    same adapter merged into a full folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(folder / "adapter")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder / "adapter")
    model.merge_and_unload().save_pretrained(folder / "merged")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder / "merged")
    return str(folder / "adapter"), str(folder / "merged")


def test_lm_eval_runs_local_tasks_on_a_full_model_and_an_adapter(tiny_model, tmp_path):
    tasks = _tasks(tmp_path / "tasks")
    full = run_lm_eval(tiny_model, ["sums_mc", "sums_gen"], tmp_path / "full", [str(tasks)], include_defaults=False)
    # Every local document was scored, by lm-eval's own metrics.
    mc = full["sums_mc"]
    assert mc["n"] == len(DOCS) and mc["metric"] == "acc,none" and mc["engine"] == "lm-eval"
    lls = _lls(tmp_path / "full")
    assert len(lls) == len(DOCS) and all(len(row) == 3 for row in lls)
    # The reported accuracy is the share of documents whose right choice has the highest log-likelihood.
    assert mc["accuracy"] == pytest.approx(sum(max(range(3), key=row.__getitem__) == 1 for row in lls) / len(DOCS))
    assert mc["correct"] == round(mc["accuracy"] * len(DOCS))
    gen = full["sums_gen"]
    assert gen["n"] == len(DOCS) and gen["metric"] == "exact_match,number" and 0 <= gen["accuracy"] <= 1
    generated = [json.loads(line) for line in (tmp_path / "full" / "lmeval_samples" / "sums_gen.jsonl").read_text().splitlines()]
    assert len(generated) == len(DOCS) and all(isinstance(g["resps"][0][0], str) for g in generated)
    record = json.loads((tmp_path / "full" / "lmeval.json").read_text())
    assert record["tasks"] == ["sums_mc", "sums_gen"] and record["model_args"]["pretrained"] == tiny_model
    assert json.loads((tmp_path / "full" / "lmeval-sums_mc" / "scores.json").read_text())["accuracy"] == mc["accuracy"]

    # A LoRA adapter loads through lm-eval's peft= on its base model: its log-likelihoods are the
    # merged model's, and not the base model's (so the adapter was really applied).
    adapter, merged = _adapter(tiny_model, tmp_path)
    import torch

    args = lm_eval_model_args(adapter)
    assert args == {"pretrained": tiny_model, "peft": adapter, "tokenizer": adapter, **args}
    assert args["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert lm_eval_model_args(merged, engine="vllm") == {"pretrained": merged}
    assert lm_eval_model_args(adapter, engine="vllm")["lora_local_path"] == adapter
    fp32 = {"dtype": "float32"}  # on a GPU the default is bf16, whose rounding differs between merged and unmerged LoRA
    run_lm_eval(adapter, ["sums_mc"], tmp_path / "adapter", [str(tasks)], include_defaults=False, model_args=fp32)
    run_lm_eval(merged, ["sums_mc"], tmp_path / "merged", [str(tasks)], include_defaults=False, model_args=fp32)
    with_adapter, with_merged = _lls(tmp_path / "adapter"), _lls(tmp_path / "merged")
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    assert len(flat(with_adapter)) == 3 * len(DOCS)
    assert flat(with_adapter) == pytest.approx(flat(with_merged), abs=1e-3)
    assert max(abs(a - b) for a, b in zip(flat(with_adapter), flat(lls))) > 1e-2


def test_critkit_eval_lm_eval_tasks_and_report_column(tiny_model, tmp_path, capsys):
    tasks = _tasks(tmp_path / "tasks")
    out = tmp_path / "run" / "eval" / "tiny"
    assert main(["eval", "--model", tiny_model, "--lm-eval-tasks", "sums_mc", "--lm-eval-include", str(tasks), "--lm-eval-local-only",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    scores = json.loads((out / "lmeval-sums_mc" / "scores.json").read_text())
    assert f"| lmeval-sums_mc | {100 * scores['accuracy']:.1f} | {len(DOCS)} |" in printed
    # `critkit report` lists the task beside critkit's own benchmarks.
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "table.md").read_text()
    assert "lmeval-sums_mc" in table and f"{100 * scores['accuracy']:.1f}" in table
    # A task that is not there is an error that names it, before any model loads.
    with pytest.raises(SystemExit, match="no_such_task"):
        main(["eval", "--model", tiny_model, "--lm-eval-tasks", "no_such_task", "--lm-eval-include", str(tasks), "--lm-eval-local-only",
              "-o", str(out)])


def test_vllm_adapter_rank_is_one_vllm_accepts(tmp_path):
    """An adapter of rank 24 asks lm-eval's vLLM for max_lora_rank 32 (vLLM refuses 24: engine/backends.py)."""
    import json

    from critkit.evaluation.lmeval import lm_eval_model_args

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "base"), "r": 24}))
    args = lm_eval_model_args(str(adapter), engine="vllm")
    assert args["max_lora_rank"] == 32 and args["lora_local_path"] == str(adapter)
