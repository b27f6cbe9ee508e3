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
from critkit.data.records import write_jsonl, write_records
from critkit.training.methods import METHODS, build_pairs
from critkit.training.mixtures import (_NEEDS, RecordsFile, Shortfall, TrainingSet, build_set, check_records_files,
                                       length_matched, parse_set, parse_sets, right_wrong, stages_needed)
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
    # Critiques that quote the reference solution: longer than the answers, which length matching needs.
    critiqued, _ = synth.critique(answered, synth.REFERENCE, Sampling(), reference_critique="solution")
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
    ({"name": "x", "method": "cft", "records": {"sft": "a.jsonl"}},
     r"\(x\)\.records\.sft: 'sft' is not one of this set's methods \(cft\)"),
    ({"name": "x", "method": "cft", "records": "a.jsonl"}, r"\(x\)\.records: expected a mapping of method -> records file"),
    ({"name": "x", "method": "cft", "records": {"cft": {"file": "a.jsonl"}}}, r"\.records\.cft: unknown field\(s\) \['file'\]"),
    ({"name": "x", "method": "cft", "records": {"cft": {"path": "a", "source": "acemth"}}},
     r"\.records\.cft\.source: unknown source 'acemth'"),
    ({"name": "x", "method": "cft", "records": {"cft": " "}}, r"\.records\.cft\.path: expected a file path"),
    ({"name": "x", "method": "cft", "verified_only": "yes"}, r"\(x\)\.verified_only: expected true or false"),
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
    # Records from their own file are used as they are: nothing is synthesized for them.
    assert need({"name": "s", "method": "sft", "records": {"sft": "f.jsonl"}}) == set()
    assert need({"name": "m", "mix": ["sft-teacher", "sft-gold"], "records": {"sft-teacher": "f.jsonl"}}) == set()
    assert need({"name": "m", "stages": ["cft", "sft-gold"], "records": {"sft-gold": "f.jsonl"}}) == {"respond", "critique"}
    assert need({"name": "v", "method": "sft-gold", "verified_only": True}) == {"respond", "critique"}  # checks critiques


def test_records_files_and_verified_only_parse():
    mix, pool = parse_sets([
        {"name": "cft+acemath", "mix": ["cft", "sft-gold"], "records": {"sft-gold": "data/acemath.jsonl"}},
        {"name": "verified", "method": "sft-verified", "size": 5, "verified_only": True,
         "records": {"sft-verified": {"path": "pool.json", "source": "webinstruct-cft"}}}])
    assert mix.records == (RecordsFile("sft-gold", "data/acemath.jsonl", "auto"),)
    assert (mix.methods, mix.data_methods) == (("cft", "sft-gold"), ("cft",))
    assert pool == TrainingSet("verified", method="sft-verified", size=5, verified_only=True,
                               records=(RecordsFile("sft-verified", "pool.json", "webinstruct-cft"),))
    assert pool.data_methods == ()


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


# ------------------------------------------------------- records from another file (CFT Table 9)


def _acemath_file(path, n: int, seed: int = 9):
    """AceMath-style chat rows (the `acemath` mapping) for demo problems the run's data does not hold."""
    train, _ = make_demo(train=n, test=0, seed=seed)
    write_jsonl(path, [{"messages": [{"role": "user", "content": r.question}, {"role": "assistant", "content": r.reference}],
                        "answer": r.gold} for r in train])
    return train


def test_a_mix_takes_its_sft_part_from_another_records_file(records, tmp_path):
    """CFT Table 9's "Mix 50K CFT + 50K AceMath SFT": the CFT pairs from the run's records, the SFT
    pairs from a separate high-quality set, and build info that says which came from where."""
    acemath = _acemath_file(tmp_path / "acemath.jsonl", 12)
    entry = {"name": "cft+acemath", "mix": ["cft", "sft-gold"], "records": {"sft-gold": str(tmp_path / "acemath.jsonl")}}
    built = build_set(parse_set(entry), records, seed=0)
    (rows,) = built.stages
    sft = [r for r in rows if r["method"] == "sft-gold"]
    assert sorted(r["completion"] for r in sft) == sorted(r.reference for r in acemath)  # the file's solutions
    assert {r["id"] for r in sft} == {f"acemath-{i}" for i in range(1, 13)}
    assert Counter(r["method"] for r in rows) == {"cft": 60, "sft-gold": 12}
    assert built.parts == [
        {"method": "cft", "from": "the run's records", "records": 60, "pairs": 60, "used": 60},
        {"method": "sft-gold", "from": str(tmp_path / "acemath.jsonl"), "source": "auto", "records": 12, "pairs": 12, "used": 12}]
    origin = tmp_path / "acemath.jsonl"
    assert built.notes == [f"cft+acemath: 60 cft + 12 sft-gold (from {origin}) pairs, shuffled together (72 used)"]
    # Negative control: without `records` the SFT part is the run's own reference solutions.
    own = build_set(parse_set({"name": "cft+sft", "mix": ["cft", "sft-gold"]}), records, seed=0).stages[0]
    assert {r["id"] for r in own if r["method"] == "sft-gold"} == {r.id for r in records}
    # Two stages: CFT on the run's records, then SFT on the file's.
    two = build_set(parse_set({"name": "two", "stages": ["cft", "sft-gold"], "records": entry["records"]}), records)
    assert [len(s) for s in two.stages] == [60, 12] and all(r["id"].startswith("acemath-") for r in two.stages[1])


def test_a_records_file_is_checked_when_the_config_loads(records, tmp_path):
    from critkit.cli import main
    from critkit.run import load_run_config

    _acemath_file(tmp_path / "acemath.jsonl", 6)
    write_records(tmp_path / "answers.jsonl", [replace(r, reference=None) for r in records[:5]])  # no reference
    (tmp_path / "bad.jsonl").write_text('{"messages": "q? a"}\n' + (tmp_path / "acemath.jsonl").read_text())

    def config(sft_file) -> str:
        cfg = {"name": "f", "output_dir": str(tmp_path / "run"), "model": str(tmp_path / "no-such-model"),
               "methods": ["cft", {"name": "cft+acemath", "mix": ["cft", "sft-gold"], "records": {"sft-gold": sft_file}}]}
        (tmp_path / "f.yaml").write_text(yaml.safe_dump(cfg))
        return str(tmp_path / "f.yaml")

    where = r"methods\[1\] \(cft\+acemath\)\.records\.sft-gold: "
    with pytest.raises(ConfigError, match=where + r".*nope\.jsonl: file not found"):
        load_run_config(config(str(tmp_path / "nope.jsonl")))
    assert main(["run", config(str(tmp_path / "nope.jsonl"))]) == 2
    with pytest.raises(ConfigError, match=where + r".*answers\.jsonl gives no sft-gold pair \(5 no reference\); records from "
                                                 r"another file are used as they are"):
        load_run_config(config(str(tmp_path / "answers.jsonl")))
    with pytest.raises(ConfigError, match=where + r".*bad\.jsonl:1: field 'messages' is not a list"):
        load_run_config(config({"path": str(tmp_path / "bad.jsonl"), "source": "acemath"}))
    assert not (tmp_path / "run").exists()  # nothing ran
    cfg = load_run_config(config(str(tmp_path / "acemath.jsonl")))  # the good file loads
    assert cfg.methods[1]["records"] == {"sft-gold": str(tmp_path / "acemath.jsonl")}


# -------------------------------------------------------- sft-verified: the top N of a larger pool


def _judged_pool(path, n: int = 45):
    """A judged pool of its own (ids pool-*): every third answer right, the reference teacher's verdicts."""
    train, _ = make_demo(train=n, test=0, seed=3)
    answered = [replace(r, id=f"pool-{i}", response=r.reference if i % 3 == 0 else f"Surely \\boxed{{{int(r.gold) + 2}}}.")
                for i, r in enumerate(train)]
    judged, _ = synth.critique(answered, synth.REFERENCE, Sampling())
    write_records(path, judged)
    return judged


def test_sft_verified_takes_n_judged_right_from_a_larger_pool(records, tmp_path):
    """CFT 2.1's WebInstruct-verified: "the top 50K" of the answers GPT-4o judged correct, from a pool
    larger than 50K. Here the run's data holds 20 verified answers and the pool 15 of 45."""
    pool = _judged_pool(tmp_path / "pool.jsonl")
    right = {r.id: r.response for r in pool if r.verdict == "right"}
    assert len(right) == 15
    entry = {"name": "verified", "method": "sft-verified", "size": 12, "records": {"sft-verified": str(tmp_path / "pool.jsonl")}}
    spec = parse_set(entry)
    check_records_files([spec])
    built = build_set(spec, records, seed=1)
    (rows,) = built.stages
    assert len(rows) == 12 and all(right[r["id"]] == r["completion"] for r in rows)  # only judged-right pool answers
    assert built.parts == [{"method": "sft-verified", "from": str(tmp_path / "pool.jsonl"), "source": "auto", "records": 45,
                            "pairs": 15, "used": 12}]
    assert built.skipped == {"verdict wrong": 30}
    # More than the pool holds: a shortfall that names the counts and the way out.
    spec = parse_set({**entry, "size": 16})
    with pytest.raises(Shortfall, match=r"size 16 asks for more sft-verified \(from .*pool\.jsonl\) pairs than there are "
                                        r"\(15 of 45 records; skipped 30 verdict wrong; CFT's verified set is the top N"):
        build_set(spec, records)


def test_verified_only_keeps_verdicts_math_verify_confirms(records):
    """A lenient teacher calls every answer right; `verified_only` keeps those math-verify grades right."""
    lenient = [replace(r, critique="Looks fine.\nConclusion: right [END]", verdict="right",
                       meta={**r.meta, "verify": synth.verify(r, "right")}) for r in records]
    truly_right = {r.id for r in records if r.verdict == "right"}  # the reference teacher's (= math-verify's) verdicts
    plain = build_set(parse_set({"name": "v", "method": "sft-verified"}), lenient).stages[0]
    assert len(plain) == 60  # the teacher's verdict alone lets every answer through
    checked = build_set(parse_set({"name": "v", "method": "sft-verified", "verified_only": True}), lenient)
    assert {r["id"] for r in checked.stages[0]} == truly_right and len(truly_right) == 20
    assert checked.skipped == {"teacher verdict disagrees with math-verify (right vs wrong)": 40}
    # In a run config, through parse_sets (today `critkit build --verified-only` offers it).
    (spec,) = parse_sets([{"name": "cft-checked", "method": "cft", "verified_only": True}])
    assert {r["id"] for r in build_set(spec, lenient).stages[0]} == truly_right


def test_discarding_responses_drops_what_was_derived_from_them(records):
    from critkit.run import _discard

    fresh = _discard(records[:3], ("response", "critique", "verdict", "refined"))
    assert all(r.response is None and r.critique is None and r.verdict is None and r.refined is None for r in fresh)
    assert all("critique" not in r.meta and "verify" not in r.meta and "refine" not in r.meta for r in fresh)
    assert [(r.id, r.question, r.gold, r.reference) for r in fresh] == [(r.id, r.question, r.gold, r.reference) for r in records[:3]]
