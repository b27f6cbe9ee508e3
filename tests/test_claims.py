"""The claims table: the papers' three claims tested on a run's evaluation files, with a paired
difference over seeds and questions, its 95% interval and a verdict computed from it.

The evaluation files are written here in evaluate.py's samples.jsonl layout with chosen outcomes,
so each verdict is known in advance: one where the claim holds, one where the opposite holds, one
where the data cannot tell. The seed bootstrap is checked against a case where only the seeds
disagree, with identical seeds as the control where it must not widen the interval.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from critkit.report.claims import CLAIMS, claims_section, evaluate_claims, paired_bootstrap, verdict
from critkit.report.html import render_page
from critkit.report.tables import paired_difference, write_report, write_seed_report

N = 96


def _write_samples(eval_root: Path, label: str, correct: list[bool], critique_like: list[bool] | None = None,
                   bench: str = "test") -> None:
    critique_like = critique_like or [False] * len(correct)
    rows = []
    for i, (ok, crit) in enumerate(zip(correct, critique_like)):
        answer = "7" if ok else "8"
        text = f"The answer is 8, which is not correct.\nConclusion: wrong [END]" if crit else f"So it is \\boxed{{{answer}}}."
        rows.append({"id": f"q{i}", "question": f"What is {i}?", "gold": "7", "responses": [text],
                     "extracted": [answer], "correct": [ok]})
    folder = eval_root / label / bench
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = len(rows)
    scores = {"n": n, "correct": sum(correct), "accuracy": sum(correct) / n, "no_answer": 0.0,
              "critique_format": sum(critique_like) / n, "samples_per_question": 1}
    (folder / "scores.json").write_text(json.dumps(scores))


def _outcomes(rate: float, seed: int) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < rate for _ in range(N)]


# ---------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("lo, hi, expected", [
    (0.01, 0.2, "supported"), (0.0, 0.2, "inconclusive"), (-0.05, 0.1, "inconclusive"),
    (-0.2, 0.0, "not supported"), (-0.2, -0.01, "not supported"), (0.0, 0.0, "not supported")])
def test_the_verdict_follows_the_interval(lo, hi, expected):
    assert verdict(lo, hi) == expected


# -------------------------------------------------------------------------------- the interval


def test_one_seed_each_gives_the_paired_interval_over_questions():
    a, b = _outcomes(0.6, 1), _outcomes(0.4, 2)
    diff, lo, hi = paired_bootstrap([a], [b])
    d, hw, n = paired_difference({i: x for i, x in enumerate(a)}, {i: x for i, x in enumerate(b)})
    assert diff == pytest.approx(d)
    # The percentile bootstrap and the normal approximation agree to about a point on 96 questions.
    assert lo == pytest.approx(d - hw, abs=0.015) and hi == pytest.approx(d + hw, abs=0.015)
    assert paired_bootstrap([a], [b]) == (diff, lo, hi)  # a fixed seed: the same report every time


def test_seeds_that_disagree_widen_the_interval_and_identical_seeds_do_not():
    """Three seeds of A, one of which also gets half of the questions right that the other two miss:
    the interval over questions of the per-question seed means ignores that spread between seeds,
    the seed bootstrap takes it in. The control: three identical seeds, where resampling seeds
    changes nothing."""
    base = _outcomes(0.5, 3)
    lifted = [True if i % 10 < 5 else x for i, x in enumerate(base)]
    b = [_outcomes(0.45, 4)]
    spread = [base, base, lifted]
    diff, lo, hi = paired_bootstrap(spread, b)
    per_question = {i: sum(s[i] for s in spread) / 3 for i in range(N)}
    d, hw, _ = paired_difference(per_question, {i: x for i, x in enumerate(b[0])})
    assert diff == pytest.approx(d)
    assert (hi - lo) > 1.4 * (2 * hw)  # measured: 1.69 times as wide
    same = [lifted, lifted, lifted]
    _, lo_same, hi_same = paired_bootstrap(same, b)
    _, hw_same, _ = paired_difference({i: float(x) for i, x in enumerate(lifted)}, {i: x for i, x in enumerate(b[0])})
    assert (hi_same - lo_same) == pytest.approx(2 * hw_same, rel=0.15)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap([[1, 0, 1]], [[1, 0]])


# ------------------------------------------------------------------------ claims from the files


@pytest.mark.parametrize("cft_rate, sft_rate, expected", [
    (0.75, 0.25, "supported"), (0.2, 0.7, "not supported"), (0.45, 0.45, "inconclusive")])
def test_claims_from_evaluation_files(tmp_path, cft_rate, sft_rate, expected):
    eval_root = tmp_path / "eval"
    sets = {"cft": [], "sft": [], "cgd": []}
    for k in range(3):
        for name, rate, crit in (("cft", cft_rate, 0.6), ("sft", sft_rate, 0.0), ("cgd", 0.5, 0.0)):
            label = f"{name}@seed{k}"
            rng = random.Random(k)
            _write_samples(eval_root, label, _outcomes(rate, 10 * k + len(name)), [rng.random() < crit for _ in range(N)])
            sets[name].append(label)
    if expected == "inconclusive":  # the same outcomes for both: no difference can show, in either direction
        for k in range(3):
            for name in ("cft", "sft"):
                _write_samples(eval_root, f"{name}@seed{k}", _outcomes(0.45, 99 + k))
    found = evaluate_claims(eval_root, sets, ["test"], resamples=2000)
    rows = {r["claim"]: r for r in found["claims"]}
    first = rows[CLAIMS[0].text]
    assert first["verdict"] == expected, first
    assert (first["a_seeds"], first["b_seeds"], first["questions"]) == (3, 3, N)
    accs = [json.loads((eval_root / f"cft@seed{k}" / "test" / "scores.json").read_text())["accuracy"] for k in range(3)]
    assert first["a_value"] == pytest.approx(sum(accs) / 3)  # the same number report.md's accuracy column averages
    assert first["ci95"][0] <= first["difference"] <= first["ci95"][1]
    if expected != "inconclusive":
        drift = rows[CLAIMS[2].text]
        assert drift["a"] == "cft" and drift["b"] == "cgd" and drift["b_value"] == 0 and drift["verdict"] == "supported"
    assert [u["needs"] for u in found["not_testable"]] == [["cgd", "distilled-sft"]]
    assert not found["problems"]


def test_bad_lines_are_reported_with_file_and_line_and_the_rest_counts(tmp_path):
    eval_root = tmp_path / "eval"
    _write_samples(eval_root, "cft", _outcomes(0.8, 1))
    _write_samples(eval_root, "sft", _outcomes(0.2, 2))
    path = eval_root / "sft" / "test" / "samples.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = "{not json"
    lines[5] = json.dumps({"id": "q5", "responses": ["x"]})  # no `correct`
    path.write_text("\n".join(lines) + "\n")
    found = evaluate_claims(eval_root, {"cft": ["cft"], "sft": ["sft"]}, ["test"], resamples=500)
    (row,) = found["claims"]
    assert row["questions"] == N - 2 and row["verdict"] == "supported"
    assert found["problems"] == [f"{path}:4: malformed JSON (Expecting property name enclosed in double quotes at column 2); line left "
                                 f"out of the claims", f"{path}:6: field 'correct' missing or empty; line left out of the claims"]


def test_the_report_the_page_and_claims_json_show_the_claims(tmp_path):
    """write_seed_report (several seeds) and write_report (one) add the Claims section and
    claims.json; report.html shows the same cells. A run without a claim's two sets gets neither,
    and a rerun without them removes a stale claims.json."""
    eval_root = tmp_path / "eval"
    _write_samples(eval_root, "base", _outcomes(0.2, 0))
    labels = {}
    for name, rate in (("sft", 0.3), ("cft", 0.8), ("sft-gold", 0.9), ("cgd", 0.5)):
        labels[name] = [(k, f"{name}@seed{k}") for k in range(2)]
        for k in range(2):
            _write_samples(eval_root, f"{name}@seed{k}", _outcomes(rate, 7 * k + len(name)))
    write_seed_report(eval_root, labels, ["test"], tmp_path, title="t")
    report = (tmp_path / "report.md").read_text()
    assert "## Claims" in report
    row = next(line for line in report.splitlines() if line.startswith("| CFT beats SFT"))
    claims = json.loads((tmp_path / "claims.json").read_text())
    first = claims["claims"][0]
    assert f"| cft {100 * first['a_value']:.1f} | sft {100 * first['b_value']:.1f} |" in row
    assert row.endswith("| 2 + 2, 96 | **supported** |")
    assert "Not tested in this run: CGD beats distilled SFT" in report
    # No output here is in the critique format: the drift claim is not supported.
    assert [(r["a"], r["b"], r["verdict"]) for r in claims["claims"]] == [("cft", "sft", "supported"), ("cft", "cgd", "not supported")]
    page = render_page(tmp_path)
    assert "<h3 id=claims>Claims</h3>" in page and "<td>supported</td>" in page and "CFT beats SFT" in page

    write_report(eval_root, ["base", "sft-gold@seed0"], ["test"], tmp_path, title="t")
    assert "## Claims" not in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "claims.json").exists()
    assert "id=claims" not in render_page(tmp_path)


def test_a_broken_claims_json_is_reported_on_the_page_not_fatal(tmp_path):
    (tmp_path / "claims.json").write_text(json.dumps({"claims": [{"claim": "x"}]}))
    page = render_page(tmp_path)
    assert "id=claims" not in page and "claims.json: claims[0]: KeyError" in page


def test_failed_samples_are_left_out_not_counted_wrong(tmp_path):
    """Evaluation keeps a sample whose request failed for good as a line with `job.status` "failed"
    and its `error`, ungraded (evaluation/durable.py). Here sft answers exactly as cft does, except
    that 30 of its requests failed on questions cft got right: left out, the two sets are equal and
    the claim is not supported. The control rewrites those lines as wrong answers, which is what
    counting a failure as wrong would do, and then the claim reads as supported."""
    eval_root = tmp_path / "eval"
    outcomes = _outcomes(0.5, 5)
    for name in ("cft", "sft", "cgd"):
        _write_samples(eval_root, name, outcomes)
    path = eval_root / "sft" / "test" / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    failed_ids = [r["id"] for r, ok in zip(rows, outcomes) if ok][:30]
    assert len(failed_ids) == 30
    as_failed = [{"id": r["id"], "question": r["question"], "gold": r["gold"], "error": "HTTP 503 after 6 tries",
                  "job": {"key": "k", "settings": "s", "model": "sft", "status": "failed"}}
                 if r["id"] in failed_ids else r for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in as_failed))
    sets = {"cft": ["cft"], "sft": ["sft"], "cgd": ["cgd"]}
    found = evaluate_claims(eval_root, sets, ["test"], resamples=1000)
    first = found["claims"][0]
    assert (first["a"], first["b"], first["questions"], first["failed_samples"]) == ("cft", "sft", N - 30, 30)
    assert first["difference"] == 0 and first["verdict"] == "not supported"
    assert not found["problems"]  # a failed sample is no malformed line
    lines = claims_section(eval_root, sets, ["test"], tmp_path / "out")
    assert ("Samples whose request failed are left out, not counted wrong (their questions are not compared): "
            "30 in cft vs sft on test.") in lines

    counted_wrong = [{**r, "responses": ["I could not."], "extracted": [None], "correct": [False]}
                     if r["id"] in failed_ids else r for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in counted_wrong))
    control = evaluate_claims(eval_root, sets, ["test"], resamples=1000)["claims"][0]
    assert (control["questions"], control["failed_samples"], control["verdict"]) == (N, 0, "supported")
