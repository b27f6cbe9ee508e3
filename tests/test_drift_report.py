"""Drift at a glance: report.md, `critkit report` and report.html put the math average, IFEval and
the critique-format share side by side (issue 13.5); a report without IFEval stays as it was.

The eval folders are made by the real evaluation (evaluate()) against two scripted models on
loopback: `base` answers sums, mostly right; `cft` answers everything with a critique.
"""

from __future__ import annotations

import json
import re

import pytest

from critkit.engine.backends import Sampling, make_backend
from critkit.engine.serve import serve
from critkit.evaluation.evaluate import evaluate
from critkit.report.html import render_page
from critkit.report.tables import write_collection, write_report

SUM = re.compile(r"What is (\d+) \+ (\d+)\?")


class Scripted:
    """`base`: the sum, wrong when the first term is over 2, and a short plain reply to anything else;
    `cft`: the right sum inside a critique, and a critique for anything else."""

    def __init__(self, name: str):
        self.name = name

    def generate(self, conversations, sampling, desc=""):
        out = []
        for conversation in conversations:
            found = SUM.search(conversation[-1]["content"])
            if self.name == "cft":
                total = int(found.group(1)) + int(found.group(2)) if found else "?"
                out.append([f"Critique: the solution gives \\boxed{{{total}}}.\nConclusion: right [END]"])
            elif found:
                a, b = int(found.group(1)), int(found.group(2))
                out.append([f"\\boxed{{{a + b + (a > 2)}}}"])
            else:
                out.append(["here is my answer in plain lowercase words"])
        return out


class Judge:
    """MT-Bench's judge: 3 for an answer that is a critique, 7 for any other."""

    name = "judge"

    def generate(self, conversations, sampling, desc=""):
        return [[f"Rating: [[{3 if '[END]' in c[-1]['content'] else 7}]]"] for c in conversations]


def _sums(path, n):
    path.write_text("".join(json.dumps({"id": f"s{i}", "question": f"What is {i} + {i + 1}?", "gold": str(2 * i + 1)}) + "\n"
                            for i in range(n)))
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    """A run folder with eval/<model>/<benchmark>/ for base and cft: two math files and, with the
    lmeval extra, IFEval; and a second run folder with the math only."""
    root = tmp_path_factory.mktemp("drift")
    benches = [_sums(root / "sums_a.jsonl", 4), _sums(root / "sums_b.jsonl", 2)]
    with_ifeval = _has_ifeval()
    judge_server, judge_thread = serve(Judge())
    judge = make_backend("judge", "openai", base_url=f"http://127.0.0.1:{judge_server.server_address[1]}/v1")
    for model in ("base", "cft"):
        server, thread = serve(Scripted(model))
        try:
            backend = make_backend(model, "openai", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
            evaluate(backend, benches, root / "math" / "eval" / model, Sampling(max_new_tokens=8))
            if with_ifeval:
                evaluate(backend, benches, root / "full" / "eval" / model, Sampling(max_new_tokens=8))
                evaluate(backend, ["ifeval", "mt_bench"], root / "full" / "eval" / model, Sampling(max_new_tokens=8), limit=3,
                         judge=judge)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    judge_server.shutdown()
    judge_server.server_close()
    judge_thread.join(timeout=5)
    return root


def _has_ifeval() -> bool:
    try:
        import lm_eval  # noqa: F401
        import punkt  # noqa: F401
    except ImportError:
        return False
    return True


def _scores(root, model, bench):
    return json.loads((root / "eval" / model / bench / "scores.json").read_text())


def test_report_without_ifeval_is_as_before(run, tmp_path):
    root = run / "math"
    write_report(root / "eval", ["base", "cft"], ["sums_a", "sums_b"], root, title="t")
    md = (root / "report.md").read_text()
    assert "Drift at a glance" not in md
    assert "| model | sums_a | sums_b | Δ vs base | critique-format | no answer |" in md
    write_collection([root], tmp_path)
    assert "| model | sums_a | sums_b | avg |" in (tmp_path / "table.md").read_text()
    assert "Drift at a glance" not in render_page(root)


def test_report_puts_math_ifeval_and_critique_format_side_by_side(run, tmp_path):
    if not _has_ifeval():
        pytest.skip("the lmeval extra is not installed (pip install 'critkit[lmeval]'): no IFEval scores to show")
    root = run / "full"
    summary = write_report(root / "eval", ["base", "cft"], ["sums_a", "sums_b", "ifeval", "mt_bench"], root, title="t")
    md = (root / "report.md").read_text()
    base = {b: _scores(root, "base", b) for b in ("sums_a", "sums_b", "ifeval")}
    assert (base["sums_a"]["accuracy"], base["sums_b"]["accuracy"]) == (0.75, 1.0)  # 3 + 4 and 3 + 4 wrong, as scripted
    math_avg = (0.75 + 1.0) / 2
    # The control: IFEval counted into the average would give another number.
    assert math_avg != pytest.approx((0.75 + 1.0 + base["ifeval"]["accuracy"]) / 3)
    glance = summary["base"]["glance"]
    assert glance["math_avg"] == math_avg and glance["ifeval"] == base["ifeval"]["prompt_level_strict_acc"]
    assert summary["cft"]["glance"]["critique_format"] == 1.0 and summary["base"]["glance"]["critique_format"] == 0.0
    # MT-Bench: the judge's mean rating, 7 for base's plain answers and 3 for cft's critiques (3 questions, 2 turns).
    assert (glance["mt_bench"], summary["cft"]["glance"]["mt_bench"]) == (7.0, 3.0)
    assert "7.00/10 (6 ratings)" in md and [d["benchmark"] for d in summary["cft"]["delta_vs_base"]] == ["sums_a", "sums_b", "ifeval"]
    section = md.split("## Drift at a glance")[1]
    assert f"| base | {100 * math_avg:.1f} | {100 * glance['ifeval']:.1f} | 7.00 | 0% |" in section
    assert f"| cft | 100.0 | {100 * summary['cft']['glance']['ifeval']:.1f} | 3.00 | 100% |" in section

    # `critkit report`: the math benchmarks, their average, then IFEval, MT-Bench and the critique-format share.
    write_collection([root], tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| model | sums_a | sums_b | math avg | ifeval | mt_bench | critique-format |" in table
    assert f"| base | 75.0 | 100.0 | {100 * math_avg:.1f} | {100 * glance['ifeval']:.1f} | 7.00 | 0% |" in table

    # report.html: the same numbers, and each results cell counts answered (and failed) questions.
    page = render_page(root)
    assert "Drift at a glance" in page and f"<td>{100 * math_avg:.1f}</td>" in page
    assert "(3/4 answered)" in page and "7.00/10" in page


def test_html_cell_counts_failed_questions(run, tmp_path):
    """A benchmark with failed requests: the cell reads correct/answered and the failures."""
    import shutil

    root = tmp_path / "run"
    shutil.copytree(run / "math" / "eval", root / "eval")
    path = root / "eval" / "base" / "sums_a" / "scores.json"
    scores = json.loads(path.read_text())
    path.write_text(json.dumps({**scores, "n": 6, "failed": 2}))  # as durable.py writes it when 2 requests fail
    write_report(root / "eval", ["base", "cft"], ["sums_a", "sums_b"], root, title="t")
    assert "(3/4 answered, 2 failed)" in render_page(root)
