"""Training sets beyond one method (mixtures.py): specs checked at config load, and each kind built
from real records (demo problems, answers of known length, the reference teacher's critiques)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import yaml

from critkit.engine.backends import Sampling
from critkit.config import ConfigError
from critkit.data.demo import make_demo
from critkit.training.methods import METHODS, build_pairs
from critkit.training.mixtures import (_NEEDS, Shortfall, TrainingSet, build_set, length_matched, parse_set, parse_sets,
                              right_wrong, stages_needed)
from critkit.synth import stages as synth


@pytest.fixture(scope="module")
def records():
    """60 demo problems: every third answered with the reference solution (right), the others wrong
    with 2-4 sentences of padding, so SFT completions are shorter on average than the critiques."""
    train, _ = make_demo(train=60, test=0)
    answered = []
    for i, rec in enumerate(train):
        if i % 3 == 0:
            response = rec.reference
        else:
            response = "Let me work it out step by step. " * (2 + i % 3) + f"The answer is \\boxed{{{int(rec.gold) + 1}}}."
        answered.append(replace(rec, response=response))
    critiqued, _ = synth.critique(answered, synth.REFERENCE, Sampling())
    refined, _ = synth.refine(critiqued, synth.REFERENCE, Sampling())
    return refined


@pytest.fixture(scope="module")
def token_lengths(tiny_model):
    from critkit.engine.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)  # the embedded model's tokenizer
    return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


# ------------------------------------------------------------------------------------ specs


def test_each_kind_of_entry_parses():
    sets = parse_sets(["cft", {"name": "cft+sft", "mix": ["cft", "sft"]}, {"name": "two", "stages": ["cft", "sft"]},
                       {"name": "short", "method": "cft", "length_match": "sft"},
                       {"name": "r50", "method": "cgd", "right_fraction": 0.5, "size": 64}])
    assert sets == [TrainingSet("cft", method="cft"), TrainingSet("cft+sft", mix=("cft", "sft")),
                    TrainingSet("two", stages=("cft", "sft")), TrainingSet("short", method="cft", length_match="sft"),
                    TrainingSet("r50", method="cgd", right_fraction=0.5, size=64)]
    assert [s.methods for s in sets] == [("cft",), ("cft", "sft"), ("cft", "sft"), ("cft", "sft"), ("cgd",)]


@pytest.mark.parametrize("entry, message", [
    ("nope", r"methods\[0\]: unknown method 'nope'"),
    ({"name": "m", "mix": ["cft", "sfx"]}, r"methods\[0\] \(m\)\.mix\[1\]: unknown method 'sfx'"),
    ({"name": "s", "stages": ["cft", "nope"]}, r"\(s\)\.stages\[1\]: unknown method 'nope'"),
    ({"name": "s", "stages": ["cft"]}, r"\.stages: expected a list of at least two"),
    ({"name": "x", "method": "cgdd"}, r"\(x\)\.method: unknown method 'cgdd'"),
    ({"name": "x", "method": "cft", "length_match": "sftt"}, r"\.length_match: unknown method 'sftt'"),
    ({"name": "x", "mix": ["cft", "sft"], "length_match": "sft"}, r"\.length_match: needs `method`"),
    ({"name": "x", "method": "cgd", "right_fraction": 1.5, "size": 8}, r"\.right_fraction: expected a number from 0 to 1"),
    ({"name": "x", "method": "cgd", "right_fraction": "half", "size": 8}, r"\.right_fraction: expected a number"),
    ({"name": "x", "method": "cgd", "right_fraction": 0.5}, r"\(x\)\.size: missing"),
    ({"name": "x", "method": "cgd", "size": 0}, r"\.size: expected a whole number >= 1"),
    ({"name": "x", "method": "cgd", "size": 2.5}, r"\.size: expected a whole number"),
    ({"name": "x", "stages": ["cft", "sft"], "size": 8}, r"size cannot apply to stages"),
    ({"name": "x", "method": "cft", "length_tolerance": 0.2}, r"\.length_tolerance: only with length_match"),
    ({"name": "x", "method": "cft", "ratio": 0.5}, r"unknown field\(s\) \['ratio'\]"),
    ({"name": "x", "method": "cft", "mix": ["cft", "sft"]}, r"exactly one of method, mix or stages"),
    ({"method": "cft"}, r"methods\[0\]\.name: missing"),
    ({"name": "a/b", "method": "cft"}, r"\.name: 'a/b' cannot name a folder"),
    ({"name": "base", "method": "cft"}, r"\.name: 'base' cannot name a folder"),
    (3, r"expected a method name or a mapping"),
])
def test_bad_entries_name_the_field(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_set(entry)


def test_names_must_be_unique():
    with pytest.raises(ConfigError, match=r"methods\[1\]\.name: 'cft' is already methods\[0\]"):
        parse_sets(["cft", {"name": "cft", "mix": ["cft", "sft"]}])


def test_a_run_config_with_a_bad_spec_stops_before_any_model_is_loaded(tmp_path):
    from critkit.cli import main
    from critkit.run import load_run_config

    cfg = {"name": "bad", "output_dir": str(tmp_path / "run"), "model": str(tmp_path / "no-such-model"),
           "methods": ["cft", {"name": "r", "method": "cgd", "right_fraction": 0.5}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"methods\[1\] \(r\)\.size: missing"):
        load_run_config(path)
    assert main(["run", str(path)]) == 2
    for override, field in [("synth.responses=mine", "synth.responses"), ("seeds=0", "seeds"),
                            ("synth.critiques=gpt", "synth.critiques")]:
        with pytest.raises(ConfigError, match=field):
            load_run_config(path, ["methods=[cft]", override])
    assert not (tmp_path / "run").exists()


def test_stages_needed_follow_the_methods():
    assert set(_NEEDS) == set(METHODS)
    need = lambda *entries: stages_needed(parse_sets(list(entries)))
    assert need("sft-gold") == set()
    assert need("sft") == {"respond"}
    assert need("cft") == {"respond", "critique"}
    assert need("cgd-no-critique") == {"respond", "critique", "refine"}  # refine reads the critique
    assert need("sft-teacher") == {"solve"}
    assert need({"name": "r", "method": "sft", "right_fraction": 0.5, "size": 4}) == {"respond", "critique"}


# ---------------------------------------------------------------------------------- building


def test_mix_holds_both_methods_pairs_shuffled(records):
    cft, _ = build_pairs("cft", records)
    sft, _ = build_pairs("sft", records)
    built = build_set(parse_set({"name": "cft+sft", "mix": ["cft", "sft"]}), records, seed=0)
    (rows,) = built.stages
    assert Counter(r["method"] for r in rows) == {"cft": len(cft), "sft": len(sft)}
    assert sorted(map(str, rows)) == sorted(map(str, cft + sft))
    assert [r["method"] for r in rows] != [r["method"] for r in cft + sft]  # interleaved, not one block then the other
    again = build_set(parse_set({"name": "cft+sft", "mix": ["cft", "sft"]}), records, seed=0).stages[0]
    assert again == rows  # the seed fixes the order


def test_stages_keep_each_methods_pairs_in_order(records):
    built = build_set(parse_set({"name": "two", "stages": ["cft", "sft"]}), records)
    assert built.stages == [build_pairs("cft", records)[0], build_pairs("sft", records)[0]]


def test_length_matched_cft_follows_sfts_lengths(records, token_lengths):
    built = build_set(parse_set({"name": "cft-short", "method": "cft", "length_match": "sft"}), records, lengths=token_lengths)
    (rows,) = built.stages
    stats = built.stats
    sft_mean, cft_mean, short_mean = stats["mean_tokens_targets"], stats["mean_tokens_candidates"], stats["mean_tokens_chosen"]
    # The critiques are longer than the answers on average; the matched subset is not.
    assert cft_mean - sft_mean > 4
    assert abs(short_mean - sft_mean) < 1.5, stats
    assert stats["chosen"] == len(rows) >= 30
    all_cft, _ = build_pairs("cft", records)
    assert len({r["id"] for r in rows}) == len(rows) and all(r in all_cft for r in rows)
    assert "mean completion tokens: sft 38.57, cft 44.08, cft-short" in built.notes[0]


def test_length_matching_respects_the_tolerance_and_uses_each_candidate_once():
    words = lambda texts: [len(t.split()) for t in texts]
    row = lambda i, n: {"id": str(i), "completion": " ".join(["w"] * n)}
    candidates = [row(i, n) for i, n in enumerate([5, 10, 10, 20, 40, 41])]
    targets = [row(100 + i, n) for i, n in enumerate([10, 10, 10, 21, 100])]
    chosen, stats = length_matched(candidates, targets, words, tolerance=0.1, min_tokens=2)
    # three targets of 10 tokens: two candidates of 10 and none within 2 tokens for the third;
    # 21 takes 20; 100 has nothing within 10 tokens.
    assert sorted(len(r["completion"].split()) for r in chosen) == [10, 10, 20]
    assert stats["unmatched_targets"] == 2 and stats["mean_tokens_matched_targets"] == pytest.approx(41 / 3, abs=0.01)


@pytest.mark.parametrize("fraction, right", [(0.0, 0), (0.25, 4), (0.5, 8), (0.75, 12), (1.0, 16)])
def test_right_fraction_sets_have_exactly_the_asked_counts(records, fraction, right):
    verdicts = {r.id: r.verdict for r in records}
    assert Counter(verdicts.values()) == {"right": 20, "wrong": 40}  # the reference teacher graded them
    spec = parse_set({"name": "r", "method": "cgd", "right_fraction": fraction, "size": 16})
    built = build_set(spec, records, seed=3)
    (rows,) = built.stages
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    assert sum(verdicts[r["id"]] == "right" for r in rows) == right == built.stats["right"]
    assert all(r["method"] == "cgd" for r in rows)


def test_a_ratio_the_data_cannot_fill_is_a_shortfall_naming_the_fields(records):
    spec = parse_set({"name": "r", "method": "cgd", "right_fraction": 1.0, "size": 24})
    with pytest.raises(Shortfall, match=r"right_fraction 1 of size 24 needs 24 pairs from records with verdict 'right'"
                                        r" and 0 with 'wrong'; there are 20 right and 40 wrong: lower `size`"):
        build_set(spec, records)
    rows = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    with pytest.raises(Shortfall, match=r"\(1 with another verdict\)"):
        right_wrong(rows, {"a": "right", "b": "wrong", "c": "unparsed"}, 0.5, 4)
    with pytest.raises(Shortfall, match=r"size 100 asks for more cft pairs than there are \(60\)"):
        build_set(parse_set({"name": "c", "method": "cft", "size": 100}), records)


def test_discarding_responses_drops_what_was_derived_from_them(records):
    from critkit.run import _discard

    fresh = _discard(records[:3], ("response", "critique", "verdict", "refined"))
    assert all(r.response is None and r.critique is None and r.verdict is None and r.refined is None for r in fresh)
    assert all("critique" not in r.meta and "verify" not in r.meta and "refine" not in r.meta for r in fresh)
    assert [(r.id, r.question, r.gold, r.reference) for r in fresh] == [(r.id, r.question, r.gold, r.reference) for r in records[:3]]
