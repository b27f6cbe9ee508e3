"""report.html and `critkit view`: the numbers, the sample rows and their filters, hostile text, and
the page in a real headless Chromium (Debian's /usr/bin/chromium; skipped, saying why, without it).

The run folder is made of real files in the formats the pipeline writes (records through
write_records, results.json / report.md / report.png through tables.write_report, loss.png through
curves.plot_losses), with the cases a report must survive: a malformed line, fields nobody knows
yet, a missing grade, text that tries to close the <script> element, a 200,000-character line.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from critkit.data.records import Record, read_records, write_jsonl, write_records
from critkit.report.html import render_page, write_html_report
from critkit.report.samples import Filters, RunSamples
from critkit.report.summary import SynthStats, accuracy_table, synth_stats
from critkit.report.tables import write_report
from critkit.synth.stats import compute_stats, token_counter
from critkit.training.curves import plot_losses

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import CHROMIUM, Browser  # noqa: E402

HOSTILE = "</script><script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\"> & <b>bold</b>"
LONG = "very long line " + "x" * 200_000 + " end"
JOINED_QUESTION = "What is 2 + 2? (asked in training and in the test)"


def _record(i: int, **fields) -> Record:
    base = dict(id=f"tr-{i}", question=f"Train question {i}: what is {i} + 1?", gold=str(i + 1),
                response=f"I think {i} + 1 = {i + 2}. \\boxed{{{i + 2}}}", critique=f"Wrong sum.\nConclusion: wrong [END]",
                verdict="wrong", refined=f"{i} + 1 = {i + 1}.\n\\boxed{{{i + 1}}}",
                meta={"verify": {"graded": "wrong", "agrees": True}, "critique": {"output": "Wrong sum.\nConclusion: wrong [END]"}})
    base.update(fields)
    return Record(**base)


def make_run(root: Path) -> dict:
    """A run folder: 6 synthesized records, 2 models on a 5-question benchmark. Returns what the
    filters must find."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("name: html <script>alert(1)</script>\nseed: 0\n")
    records = [
        _record(0),
        _record(1, verdict="right", critique="Fine.\nConclusion: right [END]",
                meta={"verify": {"graded": "wrong", "agrees": False}}),  # the teacher disagrees with the verifier
        _record(2, verdict="unparsed", critique="I am not sure.", meta={"verify": {"graded": "right", "agrees": None}}),
        _record(3, response=HOSTILE, critique=LONG, meta={"verify": {"graded": "wrong", "agrees": True},
                                                          "jobs": {"critique": {"status": "failed", "error": "HTTP 500"}}}),
        _record(4, question=JOINED_QUESTION, gold="4"),
        _record(5, question="Integrate $\\int_0^1 x^2\\,dx$.", gold="\\frac{1}{3}", response="$\\frac{x^3}{3}$ so \\boxed{\\frac{1}{3}}",
                verdict="right", critique="Correct.\nConclusion: right [END]", meta={"verify": {"graded": "right", "agrees": True}}),
    ]
    for stage in ("respond", "critique"):
        write_records(root / "synth" / f"{stage}.jsonl", records)
    with open(root / "synth" / "critique.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "torn", "question": "half a li\n')  # a torn line: reported, the rest read
        fh.write(json.dumps({**records[0].to_dict(), "id": "tr-new", "judge_score": 0.7}) + "\n")  # a field added later

    questions = [("q0", "What is 1 + 1?", "2"), ("q1", "What is 3 + 3?", "6"), ("q2", JOINED_QUESTION, "4"),
                 ("q3", "Say <b>" + HOSTILE, "<b>5</b>"), ("q4", "What is 9 - 1?", "8")]
    right = {"base": [True, False, True, False, False], "cft": [True, True, False, False, True]}
    for model, grades in right.items():
        rows = []
        for (qid, question, gold), ok in zip(questions, grades):
            answer = gold if ok else "0"
            text = f"So the answer is \\boxed{{{answer}}}."
            if model == "cft" and qid == "q1":
                text = "Critique: the steps are fine.\nConclusion: right [END] \\boxed{6}"  # a critique, not an answer
            rows.append({"id": f"test-{qid}", "question": question, "gold": gold, "responses": [text],
                         "extracted": [answer], "correct": [ok]})
        rows[4]["judge"] = {"score": 3, "note": HOSTILE, "calibration": float("nan")}  # a field added later; NaN is
        # valid to Python's json, not to the browser's JSON.parse
        write_jsonl(root / "eval" / model / "test" / "samples.jsonl", rows)
        n, correct = len(rows), sum(r["correct"][0] for r in rows)
        (root / "eval" / model / "test" / "scores.json").write_text(json.dumps({
            "benchmark": "test", "model": model, "n": n, "correct": correct, "accuracy": correct / n, "no_answer": 0.0,
            "critique_format": sum("[END]" in r["responses"][0] for r in rows) / n, "ifeval_strict": 0.5,
            "note": HOSTILE}))
    write_report(root / "eval", ["base", "cft"], ["test"], root, title="critkit: html test")
    with open(root / "eval" / "cft" / "test" / "samples.jsonl", "a", encoding="utf-8") as fh:  # after: tables.py needs 'correct'
        fh.write(json.dumps({"id": "test-q5", "question": "No grade here", "gold": "1", "responses": ["1"]}) + "\n")
    plot_losses({"cft": [{"step": s, "loss": 2.0 / s} for s in range(1, 6)]}, root / "loss.png")
    return {"disagree": {"synthesis/tr-1"}, "unparsed": {"synthesis/tr-2"}, "failed": {"synthesis/tr-3"},
            "joined": "test/test-q2", "gained": {"test/test-q1", "test/test-q4"}, "lost": {"test/test-q2"},
            "critique_format": {"test/test-q1"}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("html") / "run"
    expect = make_run(root)
    return root, expect


def _payload(page: str) -> dict:
    text = re.search(r'<script type=application/json id=critkit-data>(.*?)</script>', page, re.S).group(1)
    return json.loads(text)


# ----------------------------------------------------------------------------- without a browser


def test_index_joins_rows_and_filters_them(run):
    root, expect = run
    samples = RunSamples(root)
    assert samples.models == ["base", "cft"] and samples.sets == ["synthesis", "test"]
    assert samples.counts() == {"synthesis": 6, "test": 6}  # tr-4 joined q2; tr-new is a row; the torn line is not
    assert any("critique.jsonl:7: malformed JSON" in p for p in samples.problems), samples.problems
    keys = lambda **f: {r["key"] for r in samples.rows(Filters(**f), limit=500)["rows"]}  # noqa: E731
    assert keys(flags=("disagree",)) == expect["disagree"]
    assert keys(flags=("unparsed",)) == expect["unparsed"]
    assert keys(flags=("failed",)) == expect["failed"]
    assert keys(model="cft", outcome="gained") == expect["gained"]
    assert keys(model="cft", outcome="lost") == expect["lost"]
    assert keys(outcome="gained") == expect["gained"]  # any model: base never gains on itself
    assert keys(flags=("critique_format",)) == expect["critique_format"]
    assert keys(model="base", flags=("critique_format",)) == set()
    assert keys(q="TRAIN QUESTION 3") == {"synthesis/tr-3"}
    joined = samples.row(expect["joined"])
    assert joined["synth"]["id"] == "tr-4" and set(joined["models"]) == {"base", "cft"}
    assert samples.row("synthesis/tr-new")["synth"]["other"]["judge_score"] == 0.7  # unknown fields kept, shown raw
    ungraded = samples.row("test/test-q5")["models"]["cft"]
    assert ungraded["score"] is None and ungraded["correct"] is None
    assert samples.row("test/test-q4")["models"]["cft"]["other"]["judge"]["note"] == HOSTILE
    # paging: every row once, in order, across pages
    pages = [samples.rows(Filters(), offset=o, limit=5) for o in (0, 5, 10)]
    assert [p["total"] for p in pages] == [12, 12, 12] and [p["more"] for p in pages] == [True, True, False]
    assert [r["key"] for p in pages for r in p["rows"]] == [r.key for r in samples.refs]
    searched = [samples.rows(Filters(q="question"), offset=o, limit=4) for o in (0, 4)]
    assert searched[0]["more"] and searched[0]["total"] is None and len(searched[0]["rows"]) == 4


def test_rows_are_read_from_disk_not_held(run, tmp_path):
    """The index keeps offsets, not texts: a line changed on disk (same length) shows changed."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(run[0], root)
    samples = RunSamples(root)
    path = root / "eval" / "base" / "test" / "samples.jsonl"
    assert samples.row("test/test-q0")["models"]["base"]["responses"] == ["So the answer is \\boxed{2}."]
    path.write_text(path.read_text().replace("So the answer is \\\\boxed{2}.", "SO THE ANSWER IS \\\\boxed{2}."))
    assert samples.row("test/test-q0")["models"]["base"]["responses"] == ["SO THE ANSWER IS \\boxed{2}."]
    held = [getattr(ref, name) for ref in samples.refs for name in ref.__slots__]
    assert not any(isinstance(v, str) and len(v) > 40 for v in held)  # keys and verdicts only, no texts


def test_numbers_are_those_of_results_json(run):
    root, _ = run
    results = json.loads((root / "results.json").read_text())
    table = accuracy_table(RunSamples(root, results), [])
    want = results["cft"]["delta_vs_base"][0]
    got = table["cft"]["test"]["delta"]
    assert got["difference"] == pytest.approx(want["difference"]) and got["n"] == want["n"]
    assert got["ci95_half_width"] == pytest.approx(want["ci95_half_width"])
    page = (root / "report.html").read_text() if (root / "report.html").exists() else render_page(root)
    assert f"{100 * want['difference']:+.1f} ± {100 * want['ci95_half_width']:.1f}" in page


def test_a_chosen_checkpoint_is_named(run, tmp_path):
    """select: true records each set's chosen checkpoint in results.json; the table names it."""
    import shutil

    root = tmp_path / "r"
    shutil.copytree(run[0], root)
    results = json.loads((root / "results.json").read_text())
    results["cft"]["checkpoint"] = {"name": "checkpoint-20", "validation": {"checkpoint-20": 0.5, "final": 0.4}}
    (root / "results.json").write_text(json.dumps(results))
    page = render_page(root)
    assert "<th>checkpoint</th>" in page and "<td>checkpoint-20</td>" in page
    assert "<th>checkpoint</th>" not in render_page(run[0])


def test_synthesis_statistics_are_critkit_stats(run, tmp_path):
    """Merged over chunks of 2 records, the same numbers as compute_stats on the whole file."""
    path = run[0] / "synth" / "respond.jsonl"  # the clean file (critique.jsonl has a torn line)
    whole = compute_stats(read_records(path), token_counter("whitespace"))
    merged = synth_stats(path, [], chunk=2)
    strip = lambda s: {k: v for k, v in s.items() if not k.startswith("_")}  # noqa: E731
    assert strip(merged) == strip(whole)
    assert merged["verify"]["disagrees"] == 1 and merged["verdicts"]["unparsed"] == 1
    problems: list[str] = []
    last = synth_stats(run[0] / "synth" / "critique.jsonl", problems)
    assert last["records"] == 7 and len(problems) == 1 and ":7:" in problems[0]
    fed = SynthStats(chunk=3)  # what the page shows: counted while the rows are indexed, in the same pass
    RunSamples(run[0], on_synth=fed.add)
    assert strip(fed.result()) == strip(last)


def test_page_is_self_contained_bounded_and_escaped(run, tmp_path):
    root, _ = run
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.suffix in (".md", ".png", ".json", ".csv")}
    page = write_html_report(root).read_text(encoding="utf-8")
    after = {p.name: p.read_bytes() for p in root.iterdir() if p.suffix in (".md", ".png", ".json", ".csv")}
    assert before == after  # markdown, JSON and PNG outputs stay as they are
    # Nothing to fetch: no external script, style, image or frame; images are inline.
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//)', page, re.I)
    assert "<link" not in page and page.count("data:image/png;base64,") == 2  # loss.png and report.png
    # Hostile text: the only script elements are the page's own two; nothing from the run closes one.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "<script>window" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the run's name, escaped in the title
    data = _payload(page)
    by_key = {r["key"]: r for r in data["rows"]}
    assert by_key["synthesis/tr-3"]["synth"]["response"] == HOSTILE  # intact after the round trip
    assert by_key["synthesis/tr-3"]["synth"]["critique"] == LONG
    # The negative control: the same data embedded naively would close the script element early.
    naive = json.dumps(data, ensure_ascii=False)
    assert "</script>" in naive and "</script>" not in page.split("id=critkit-data>")[1].split("</script>")[0]
    # A bounded, seeded sample: at most 2 rows per set, the same for the same seed, and said so.
    small = [_payload(render_page(root, samples=2, seed=s))["rows"] for s in (0, 0, 1)]
    assert all(len([r for r in rows if r["set"] == name]) == 2 for rows in small for name in ("synthesis", "test"))
    assert small[0] == small[1] and [r["key"] for r in small[0]] != [r["key"] for r in small[2]]
    assert "synthesis: 2 of 6 rows; test: 2 of 6 rows" in render_page(root, samples=2)


def test_seed_runs_show_mean_and_std_over_seeds(run, tmp_path):
    """A run trained with several seeds: every seed's label is a model, and results.json's mean ±
    std over seeds is shown as write_seed_report computed it."""
    import shutil

    from critkit.report.tables import write_seed_report

    root = tmp_path / "seeds"
    (root / "eval").mkdir(parents=True)
    shutil.copytree(run[0] / "eval" / "base", root / "eval" / "base")
    for k in (0, 1):
        shutil.copytree(run[0] / "eval" / "cft", root / "eval" / f"cft@seed{k}")
        path = root / "eval" / f"cft@seed{k}" / "test" / "samples.jsonl"
        lines = path.read_text().splitlines()[:5]  # without the ungraded line, which tables.py cannot read
        if k == 1:
            lines[0] = lines[0].replace('"correct": [true]', '"correct": [false]')  # seed 1 misses q0
        path.write_text("\n".join(lines) + "\n")
    scores = json.loads((root / "eval" / "cft@seed1" / "test" / "scores.json").read_text())
    (root / "eval" / "cft@seed1" / "test" / "scores.json").write_text(json.dumps({**scores, "correct": 2, "accuracy": 0.4}))
    summary = write_seed_report(root / "eval", {"cft": [(0, "cft@seed0"), (1, "cft@seed1")]}, ["test"], root)
    page = render_page(root)
    assert _payload(page)["models"] == ["base", "cft@seed0", "cft@seed1"]
    mean, std = summary["cft"]["mean"]["test"], summary["cft"]["std"]["test"]
    assert "Over training seeds" in page and f"{100 * mean:.1f} ± {100 * std:.1f}" in page and std > 0


def test_cli_report_writes_the_page_in_each_run(run, tmp_path):
    from critkit.cli import main

    root, _ = run
    (root / "report.html").unlink(missing_ok=True)
    assert main(["report", str(root), "-o", str(tmp_path / "table"), "--html-samples", "3"]) == 0
    assert (tmp_path / "table" / "table.md").exists()  # the collection is written as before
    assert "synthesis: 3 of 6 rows" in (root / "report.html").read_text()


def test_view_serves_pages_of_rows(run):
    from critkit.report.view import make_view_server

    server = make_view_server(run[0])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    get = lambda path: json.loads(urllib.request.urlopen(base + path).read())  # noqa: E731
    try:
        assert server.server_address[0] == "127.0.0.1"
        page = urllib.request.urlopen(base + "/").read().decode()
        assert _payload(page)["mode"] == "live" and "rows" not in _payload(page) and "connect-src 'self'" in page
        first = get("/api/rows?limit=5")
        assert first["total"] == 12 and len(first["rows"]) == 5 and first["more"]
        assert {r["key"] for r in get("/api/rows?flags=disagree")["rows"]} == run[1]["disagree"]
        assert {r["key"] for r in get("/api/rows?model=cft&outcome=lost")["rows"]} == run[1]["lost"]
        assert get("/api/row?key=synthesis%2Ftr-3")["synth"]["critique"] == LONG
        with pytest.raises(urllib.error.HTTPError, match="404"):
            get("/api/row?key=nothing")
        with pytest.raises(urllib.error.HTTPError, match="400"):
            get("/api/rows?offset=x")
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------------- in a browser

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=(
    f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium; .ci/run does) to open "
    "report.html in a real browser"))


@pytest.fixture(scope="module")
def browser():
    with Browser(width=1400, height=1000) as b:
        yield b


def _open(browser: Browser, url: str) -> None:
    browser.errors.clear()
    browser.requests.clear()
    browser.open(url)


def _shown(browser: Browser) -> list[str]:
    return browser.evaluate("Array.from(document.querySelectorAll('#samples tbody tr.sample')).map(r => r.dataset.key)")


def _set(browser: Browser, js: str) -> None:
    """Change filters and wait until the rows were built again."""
    before = browser.evaluate("document.body.dataset.rendered")
    browser.evaluate(js)
    browser.wait_for(f"document.body.dataset.rendered !== '{before}' && document.body.dataset.loading !== '1'")


@needs_chromium
def test_page_renders_and_filters_in_chromium(run, browser, tmp_path):
    root, expect = run
    page = write_html_report(root)
    _open(browser, page.as_uri())
    # Tables, plots, statistics and the rows are there.
    assert browser.evaluate("document.querySelectorAll('table.results tbody tr').length") == 2
    assert browser.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 100)")
    assert browser.evaluate("document.images.length") == 2
    assert browser.evaluate("document.querySelectorAll('svg.hist rect').length") > 0
    assert len(_shown(browser)) == 12
    # Hostile text stayed text: no script ran, and the long line is in the page whole.
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    assert browser.evaluate("document.querySelector('tr[data-key=\"synthesis/tr-3\"] td.synth').textContent.includes(%s)"
                            % json.dumps(HOSTILE))
    assert browser.evaluate("Array.from(document.querySelectorAll('.txt')).some(n => n.textContent === %s)" % json.dumps(LONG))
    # Filters: the rows left are those the index finds.
    _set(browser, "document.querySelector('input.flag[value=disagree]').click()")
    assert set(_shown(browser)) == expect["disagree"]
    _set(browser, "document.getElementById('f-reset').click()")
    _set(browser, "document.getElementById('f-model').value = 'cft'; const o = document.getElementById('f-outcome');"
                  "o.value = 'gained'; o.dispatchEvent(new Event('change'))")
    assert set(_shown(browser)) == expect["gained"]
    assert browser.evaluate("Array.from(document.querySelectorAll('#samples thead th')).map(h => h.textContent)") == \
        ["question", "base", "cft"]
    _set(browser, "document.getElementById('f-reset').click()")
    _set(browser, "const q = document.getElementById('f-q'); q.value = 'integrate'; q.dispatchEvent(new Event('change'))")
    assert _shown(browser) == ["synthesis/tr-5"]
    assert browser.evaluate("document.querySelector('tr.sample mark') !== null")  # \boxed{...} marked in LaTeX source
    # The link to one sample opens it alone.
    _set(browser, "location.hash = '#row=' + encodeURIComponent('test/test-q2')")
    assert _shown(browser) == ["test/test-q2"]
    assert browser.evaluate("document.querySelectorAll('tr.sample td').length") == 4  # question, synthesis, 2 models
    assert browser.errors == []
    assert all(u.startswith(("file:", "data:")) for u in browser.requests), browser.requests
    browser.evaluate("location.hash = ''; document.getElementById('browser').scrollIntoView()")
    browser.screenshot(tmp_path / "report.png")


@needs_chromium
def test_view_page_filters_like_the_static_page(run, browser):
    from critkit.report.view import make_view_server

    server = make_view_server(run[0])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _open(browser, f"http://127.0.0.1:{server.server_address[1]}/")
        browser.wait_for("document.body.dataset.loading === '0'")
        assert len(_shown(browser)) == 12
        _set(browser, "document.querySelector('input.flag[value=unparsed]').click()")
        assert set(_shown(browser)) == run[1]["unparsed"]
        _set(browser, "document.getElementById('f-reset').click()")
        _set(browser, "document.getElementById('f-model').value = 'cft'; const o = document.getElementById('f-outcome');"
                      "o.value = 'lost'; o.dispatchEvent(new Event('change'))")
        assert set(_shown(browser)) == run[1]["lost"]
        assert browser.errors == []
    finally:
        server.shutdown()
        server.server_close()


@needs_chromium
def test_console_errors_are_caught(run, browser, tmp_path):
    """The negative control: a page whose script fails is seen failing."""
    broken = tmp_path / "broken.html"
    broken.write_text(render_page(run[0], samples=2).replace("var PAGE = 50;", "var PAGE = 50; undefinedFunction();"))
    _open(browser, broken.as_uri())
    assert any("undefinedFunction" in e for e in browser.errors), browser.errors
    assert _shown(browser) == []


def test_critkit_run_writes_the_page(tiny_model, tmp_path):
    """The pipeline's last step: report.html next to report.md, holding the run's own rows."""
    import yaml

    from critkit.cli import main

    cfg = {"name": "tiny", "output_dir": str(tmp_path / "run"), "model": tiny_model,
           "data": {"train": "demo", "test": "demo", "demo": {"train": 4, "test": 4}},
           "synth": {"teacher": "reference", "student": {"max_new_tokens": 4, "batch_size": 8}},
           "methods": ["sft-gold"], "train": {"sft": {"learning_rate": 1e-3, "per_device_train_batch_size": 4,
                                                      "max_length": 128, "num_train_epochs": 1}},
           "eval": {"benchmarks": ["test"], "max_new_tokens": 4, "batch_size": 4}, "report": {"html_samples": 3}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "run.yaml")]) == 0
    run = tmp_path / "run"
    assert (run / "report.md").exists() and (run / "report.png").exists()
    page = (run / "report.html").read_text(encoding="utf-8")
    data = _payload(page)
    assert data["models"] == ["base", "sft-gold"] and data["counts"] == {"synthesis": 4, "test": 4}
    assert data["held"] == {"synthesis": 3, "test": 3} and "synthesis: 3 of 4 rows; test: 3 of 4 rows" in page
    assert all(set(r["models"]) == {"base", "sft-gold"} for r in data["rows"] if r["set"] == "test")
    assert all(r["synth"]["reference"] for r in data["rows"] if r["set"] == "synthesis")
    assert page.count("data:image/png;base64,") == 2  # report.png and loss.png
