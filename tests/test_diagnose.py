"""Diagnostic probes (CGD appendix C) on real models: each number is checked against a direct
computation, not against a stored value."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace

import pytest

from critkit.engine.backends import Sampling
from critkit.data.demo import make_demo
from critkit.diagnostics import run_probe
from critkit.diagnostics.attention import SECTIONS, generation_shares, section_ids
from critkit.diagnostics.common import load_samples, messages, model_labels
from critkit.diagnostics.counterfactual import FIXED_NONSENSE, nonsense_critiques
from critkit.diagnostics.gradnorm import gradient_norm
from critkit.grading import grade
from critkit.training.methods import cgd
from critkit.prompts import render
from critkit.data.records import Record, write_records
from critkit.synth.stages import REFERENCE, critique, refine


@pytest.fixture(scope="module")
def records() -> list[Record]:
    """Four demo problems, two answered right and two wrong, critiqued and refined by the
    reference teacher (CGD critique style). Its critiques hold the worked reference solution, as a
    real teacher's correction does: the verdict-only default is a dozen tokens, and with it the
    gradient norm moved by less than 2e-4 of itself without the critique (9.4718 against 9.4734)."""
    train, _ = make_demo(train=4, test=0, seed=1)
    answered = [replace(r, response=f"I think the answer is \\boxed{{{r.gold if i % 2 == 0 else int(r.gold) + 3}}}.")
                for i, r in enumerate(train)]
    critiqued, _ = critique(answered, REFERENCE, Sampling(), style="cgd", reference_critique="solution")
    refined, _ = refine(critiqued, REFERENCE, Sampling())
    assert all(r.critique and r.refined for r in refined)
    return refined


@pytest.fixture(scope="module")
def records_file(records, tmp_path_factory):
    path = tmp_path_factory.mktemp("diagnose") / "records.jsonl"
    write_records(path, records)
    return path


def _entropy_direct(model, tokenizer, rec: Record) -> float:
    """Entropy at the first target position from a forward pass over prompt + whole target."""
    import torch

    user = render("cgd_refine_user", question=rec.question, response=rec.response, critique=rec.critique)
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    target = tokenizer(rec.refined, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + target])).logits[0, len(prompt) - 1].double()
    p = torch.softmax(logits, dim=-1)
    return float(-(p * torch.log(p)).sum())


def test_probe_input_is_the_cgd_training_input(records):
    samples, _ = load_samples(records)
    for rec, sample in zip(records, samples):
        assert messages(sample, sample.critique) == cgd(rec).prompt
        assert sample.target == rec.refined and sample.target_field == "refined"


def test_entropy_equals_direct_computation_and_models_are_t_tested(records, records_file, embedded_model, tiny_model):
    from scipy.stats import ttest_rel

    from critkit.engine.models import load_model, load_tokenizer

    result = run_probe("entropy", records_file, [embedded_model, tiny_model], labels=["base", "tiny"], limit=3)
    assert result["data"]["used"] == 3 and [m["label"] for m in result["models"]] == ["base", "tiny"]
    model, tokenizer = load_model(embedded_model), load_tokenizer(embedded_model)
    base = [row["models"]["base"]["entropy"] for row in result["samples"]]
    for rec, value in zip(records, base):
        assert value == pytest.approx(_entropy_direct(model, tokenizer, rec), abs=1e-3)
        assert 0 < value < math.log(len(tokenizer))
    assert result["results"]["base"]["entropy_nats"]["mean"] == pytest.approx(sum(base) / 3)
    tiny = [row["models"]["tiny"]["entropy"] for row in result["samples"]]
    # A random tiny model is nearly uniform: far more uncertain than the trained one.
    assert min(tiny) > max(base)
    (test,) = result["paired_t_tests"]
    expected = ttest_rel(base, tiny)
    assert (test["a"], test["b"], test["n"]) == ("base", "tiny", 3)
    assert test["t"] == pytest.approx(expected.statistic) and test["p"] == pytest.approx(expected.pvalue)


def test_gradnorm_changes_without_the_critique(records_file, embedded_model):
    result = run_probe("gradnorm", records_file, [embedded_model], labels=["base"], limit=2)
    for row in result["samples"]:
        with_c, without = row["models"]["base"]["with_critique"], row["models"]["base"]["without_critique"]
        assert with_c["target_tokens"] == without["target_tokens"] > 0  # same target, different input
        assert with_c["grad_norm"] > 0 and without["grad_norm"] > 0
        assert abs(with_c["grad_norm"] - without["grad_norm"]) > 1e-3 * without["grad_norm"]
    stats = result["results"]["base"]
    for cond in ("with_critique", "without_critique"):  # the summary is computed from the samples' values
        norms = [row["models"]["base"][cond]["grad_norm"] for row in result["samples"]]
        assert stats[cond]["grad_norm"]["n"] == 2
        assert stats[cond]["grad_norm"]["mean"] == pytest.approx(statistics.mean(norms))
        assert stats[cond]["grad_norm"]["std"] == pytest.approx(statistics.stdev(norms))  # sample std, n - 1


def test_gradnorm_equals_norm_of_a_hand_computed_loss(records, tiny_model):
    """Masking the prompt and averaging over target tokens, done here by hand from the logits."""
    import torch

    from critkit.engine.models import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
    samples, _ = load_samples(records[:1])
    measured = gradient_norm(model, tokenizer, samples[0], with_critique=False)
    rec = records[0]
    user = render("cgd_no_critique_user", question=rec.question, response=rec.response)
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    target = tokenizer(rec.refined, add_special_tokens=False)["input_ids"]
    logits = model(torch.tensor([prompt + target])).logits[0]
    # Position i predicts token i + 1: the target tokens are predicted from len(prompt) - 1 on.
    loss = torch.nn.functional.cross_entropy(logits[len(prompt) - 1 : -1], torch.tensor(target))
    model.zero_grad()
    loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    assert measured["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert measured["grad_norm"] == pytest.approx(float(norm), rel=1e-4)


def test_attention_shares_sum_to_one_and_cover_every_section(records_file, embedded_model):
    result = run_probe("attention", records_file, [embedded_model], labels=["base"], limit=2, max_new_tokens=4)
    assert "eager" in result["attention_implementation"]
    r = result["results"]["base"]
    assert r["layers"] == 30 and len(r["per_layer"]) == 30
    for row in r["per_layer"]:
        assert sum(row) == pytest.approx(1, abs=1e-4)
    assert all(r["mean_over_layers"][s] > 0 for s in ("problem", "answer", "critique"))
    for sample in result["samples"]:
        m = sample["models"]["base"]
        assert 1 <= m["generated_tokens"] <= 4 and m["share_sum_max_error"] < 1e-4
        assert all(m["section_tokens"][s] > 0 for s in SECTIONS)
    # With 4 generated tokens every phase (thirds) has at least one token, and in every phase each
    # layer's shares of the four sections sum to 1.
    for phase in ("early", "middle", "late"):
        assert len(r["per_phase"][phase]) == 30
        for layer in r["per_phase"][phase]:
            assert len(layer) == len(SECTIONS) and sum(layer) == pytest.approx(1, abs=1e-4) and min(layer) >= 0


def test_streamed_attention_shares_equal_full_attention_matrices(records, tiny_model):
    """The hook's per-step reduction equals the shares computed afterwards from the full matrices."""
    import torch

    from critkit.engine.models import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model, attn_implementation="eager"), load_tokenizer(tiny_model)
    samples, _ = load_samples(records[:1])
    ids, sections, counts = section_ids(tokenizer, samples[0])
    problem = tokenizer.decode([t for t, s in zip(ids, sections) if s == 0])
    critique_text = tokenizer.decode([t for t, s in zip(ids, sections) if s == 2])
    assert records[0].question in problem and records[0].critique in critique_text
    shares, generated, _ = generation_shares(model, tokenizer, samples[0], max_new_tokens=5)
    assert shares.shape == (len(generated), 2, 4)
    full = ids + generated[:-1]  # the last generated token is never fed back in
    with torch.no_grad():
        attentions = model(torch.tensor([full]), output_attentions=True).attentions
    section_of = torch.tensor(sections + [3] * len(generated))
    for step in range(len(generated)):
        query = len(ids) - 1 + step
        for layer, weights in enumerate(attentions):
            row = weights[0, :, query, : query + 1].mean(dim=0)
            expected = torch.zeros(4).index_add_(0, section_of[: query + 1], row)
            assert torch.allclose(shares[step, layer], expected, atol=1e-5)


def test_counterfactual_uses_the_borrowed_critique_and_counts_flips_exactly(tmp_path, embedded_model):
    """Critiques that state the correct answer, which the embedded model repeats: given its own
    critique it answers right, and given another record's it mostly repeats that record's answer
    (5 of these 6; once it works the sum out itself). So what a nonsense answer says shows which
    critique reached the prompt, and the flips are real ones for the McNemar test, computed here by
    hand (exact two-sided binomial over the flips)."""
    train, _ = make_demo(train=6, test=0, seed=2)
    answered = [replace(r, response=f"The answer is \\boxed{{{int(r.gold) + 7}}}.", refined=r.reference,
                        critique=f"This is wrong. The correct answer is {r.gold}. So the final answer is \\boxed{{{r.gold}}}.")
                for r in train]
    path = tmp_path / "told.jsonl"
    write_records(path, answered)
    result = run_probe("counterfactual", path, [embedded_model], labels=["base"], max_new_tokens=10)
    gold = {r.id: r.gold for r in answered}
    critique_of = {r.id: r.critique for r in answered}
    flags, followed = {"factual": [], "nonsense": []}, 0
    for row in result["samples"]:
        assert row["nonsense_from"] != row["id"] and row["nonsense_critique"] == critique_of[row["nonsense_from"]]
        m = row["models"]["base"]
        assert m["factual"]["extracted"] == gold[row["id"]]  # the own critique's answer
        followed += m["nonsense"]["extracted"] == gold[row["nonsense_from"]] != gold[row["id"]]  # the borrowed one's
        for cond in flags:
            assert m[cond]["correct"] == grade(m[cond]["output"], row["gold"])
            flags[cond].append(m[cond]["correct"])
    assert followed >= 4
    r = result["results"]["base"]
    for cond in flags:
        assert (r[cond]["n"], r[cond]["correct"]) == (6, sum(flags[cond]))
        assert r[cond]["accuracy"] == pytest.approx(sum(flags[cond]) / 6)
    lost = sum(f and not c for f, c in zip(flags["factual"], flags["nonsense"]))
    gained = sum(c and not f for f, c in zip(flags["factual"], flags["nonsense"]))
    assert (r["right_to_wrong"], r["wrong_to_right"]) == (lost, gained) and lost + gained > 0
    flips = lost + gained
    p = min(1.0, 2 * sum(math.comb(flips, k) for k in range(min(lost, gained) + 1)) / 2 ** flips)
    assert r["mcnemar_p"] == pytest.approx(p)
    assert "different record" in result["nonsense"]


def test_nonsense_critiques_are_deterministic_and_never_the_records_own(records):
    samples, _ = load_samples(records)
    first, again = nonsense_critiques(samples, seed=3), nonsense_critiques(samples, seed=3)
    assert first == again
    for sample, (text, source) in zip(samples, first):
        assert source != sample.id and text != sample.critique
    assert nonsense_critiques(samples[:1]) == [(FIXED_NONSENSE, "fixed (no other record to borrow from)")]
    assert {src for _, src in nonsense_critiques(samples, mode="fixed")} == {"fixed"}


def test_unusable_records_are_counted_not_fatal(records, tmp_path, tiny_model):
    good = records[0].to_dict()
    rows = [
        good,
        {**good, "id": "no-critique", "critique": None},
        {**good, "id": "reference-only", "refined": None},
        {**good, "id": "no-target", "refined": "", "reference": None},
        {**good, "id": "no-response", "response": "  "},
        {**good, "id": "no-gold", "gold": None},
        {"id": "bad", "question": "x?", "colour": "blue"},  # not a record: unknown field
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    samples, report = load_samples(path)
    assert [s.id for s in samples] == [good["id"], "reference-only", "no-gold"]
    assert samples[1].target_field == "reference"
    assert report["skipped"] == {"no critique": 1, "no refined or reference answer": 1, "no response": 1,
                                 "invalid record": 1}
    assert "mixed.jsonl:7" in report["invalid_examples"][0]
    _, with_gold = load_samples(path, need_gold=True)
    assert with_gold["skipped"]["no gold answer"] == 1
    result = run_probe("entropy", path, [tiny_model])
    assert result["results"][model_labels([tiny_model], None)[0]]["entropy_nats"]["n"] == 3


def test_labels():
    assert model_labels(["embedded", "runs/q/models/cgd/final", "x/checkpoint-20"], None) == [
        "embedded", "cgd/final", "x/checkpoint-20"]
    assert model_labels(["a/m", "b/m"], None) == ["m", "m#2"]
    with pytest.raises(ValueError, match="2 labels for 1 models"):
        model_labels(["embedded"], ["a", "b"])


@pytest.mark.parametrize("probe, extra", [("entropy", []), ("gradnorm", []), ("attention", ["--max-new-tokens", "3"]),
                                          ("counterfactual", ["--max-new-tokens", "3", "--nonsense", "fixed"])])
def test_cli_writes_json_and_png(probe, extra, records_file, tiny_model, tmp_path, capsys):
    from critkit.cli import main

    out = tmp_path / "diag"
    assert main(["diagnose", probe, "--records", str(records_file), "--models", tiny_model, tiny_model,
                 "--labels", "a", "b", "--limit", "2", "--output", str(out), *extra]) == 0
    result = json.loads((out / f"{probe}.json").read_text())
    assert result["probe"] == probe and list(result["results"]) == ["a", "b"] and result["data"]["used"] == 2
    assert (out / f"{probe}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{probe}.png" in capsys.readouterr().out
