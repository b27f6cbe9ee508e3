"""Records: round trips through every file format, errors that name file and line, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from critkit.data.records import Record, RecordError, read_jsonl, read_records, write_jsonl, write_records


def _full() -> Record:
    return Record(
        id="q1",
        question=r"What is $\frac{1}{2} + \frac{1}{2}$? Use {braces}.",
        gold="1",
        reference=r"Add the halves: \boxed{1}.",
        response="It is 1.",
        critique="The solution is correct.\nConclusion: right [END]",
        verdict="right",
        refined=r"Adding gives \boxed{1}.",
        teacher_solution=r"\boxed{1}",
        meta={"source": "unit", "score": 0.5, "tags": ["a", "b"], "nested": {"k": [1, 2, {"deep": None}]}, "ok": True},
    )


def _sparse() -> Record:
    # Only the required fields: the other columns are all None in this row.
    return Record(id="q2", question="Only a question — with ünïcode ✓")


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(**over) -> str:
    return json.dumps({"id": "x", "question": "What is 2+2?", **over})


# ------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["records.jsonl", "records.parquet", "hf_dataset"])
def test_round_trip_preserves_every_field_and_meta(tmp_path, name):
    records = [_full(), _sparse()]
    target = tmp_path / name
    assert write_records(target, records) == 2
    back = read_records(target)
    assert back == records
    assert back[0].meta == {"source": "unit", "score": 0.5, "tags": ["a", "b"], "nested": {"k": [1, 2, {"deep": None}]}, "ok": True}
    assert isinstance(back[0].meta, dict) and back[1].meta == {}


def test_hf_dataset_folder_is_a_real_datasets_folder(tmp_path):
    import datasets

    target = tmp_path / "ds"
    write_records(target, [_full()])
    assert target.is_dir()
    loaded = datasets.load_from_disk(str(target))
    assert loaded.num_rows == 1 and loaded[0]["question"] == _full().question


def test_jsonl_is_one_object_per_line_and_unicode_is_kept(tmp_path):
    target = tmp_path / "r.jsonl"
    write_records(target, [_full(), _sparse()])
    lines = target.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["question"] == "Only a question — with ünïcode ✓"
    assert "ünïcode ✓" in lines[1]  # ensure_ascii=False: readable files


def test_from_dict_normalizes_id_and_gold_to_strings():
    rec = Record.from_dict({"id": 7, "question": "q?", "gold": 18})
    assert rec.id == "7" and rec.gold == "18" and rec.meta == {}


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = _write_lines(tmp_path / "blank.jsonl", [_row(id="a"), "", "   ", _row(id="b")])
    assert [(n, row["id"]) for n, row in read_jsonl(path)] == [(1, "a"), (4, "b")]
    assert [r.id for r in read_records(path)] == ["a", "b"]


# ---------------------------------------------------------------------- errors with file:line


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"id": "c", "question": "broken', "malformed JSON"),
        (json.dumps({"id": "c"}), "missing field 'question'"),
        (json.dumps({"id": "c", "question": None}), "missing field 'question'"),
        (json.dumps({"question": "q?"}), "missing field 'id'"),
        (json.dumps({"id": "c", "question": ""}), "field 'question' is empty"),
        (json.dumps({"id": "c", "question": "   \n"}), "field 'question' is empty"),
        (json.dumps({"id": "c", "question": 5}), "field 'question' is empty"),
        (json.dumps({"id": "c", "question": "q?", "answer": "4"}), "unknown field(s) ['answer']"),
        (json.dumps({"id": "c", "question": "q?", "verdict": "Right"}), "field 'verdict' is 'Right'"),
        (json.dumps({"id": "c", "question": "q?", "verdict": "maybe"}), "field 'verdict' is 'maybe'"),
        (json.dumps(["not", "an", "object"]), "expected a JSON object, got list"),
    ],
)
def test_bad_line_three_names_file_and_line(tmp_path, bad_line, message):
    path = _write_lines(tmp_path / "bad.jsonl", [_row(id="a"), _row(id="b"), bad_line, _row(id="d")])
    with pytest.raises(RecordError) as info:
        read_records(path)
    err = info.value
    assert err.path == str(path) and err.line == 3
    assert str(err).startswith(f"{path}:3: ")
    assert message in str(err)


def test_bad_row_in_parquet_names_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    rows = [{"id": "a", "question": "q1?", "verdict": None}, {"id": "b", "question": "q2?", "verdict": "nope"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(RecordError, match=rf"bad\.parquet:2: field 'verdict' is 'nope'") as info:
        read_records(path)
    assert info.value.line == 2


def test_missing_file_and_unknown_suffix_are_record_errors(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        read_records(tmp_path / "nope.jsonl")
    odd = tmp_path / "data.csv"
    odd.write_text("id,question\n1,q\n")
    with pytest.raises(RecordError, match=r"unknown file type '\.csv'"):
        read_records(odd)
    with pytest.raises(RecordError, match=r"unknown file type '\.csv'"):
        write_records(tmp_path / "out.csv", [_sparse()])


def test_all_valid_verdicts_are_accepted():
    for verdict in ("right", "wrong", "unparsed", None):
        assert Record.from_dict({"id": "a", "question": "q?", "verdict": verdict}).verdict == verdict


# ----------------------------------------------------------------------------- atomic writes


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, name):
    target = tmp_path / name
    old = [_full()]
    write_records(target, old)
    before = target.read_bytes()
    # The second record's meta holds a set: JSON cannot serialize it, so the write fails mid-way.
    bad = [_sparse(), Record(id="bad", question="q?", meta={"s": {1, 2}})]
    with pytest.raises(TypeError):
        write_records(target, bad)
    assert target.read_bytes() == before
    assert read_records(target) == old
    assert _only(tmp_path) == [name]


def test_hf_folder_rewrite_and_failed_rewrite(tmp_path):
    target = tmp_path / "ds"
    write_records(target, [_full(), _sparse()])
    assert write_records(target, [_sparse()]) == 1  # overwriting a folder works
    assert read_records(target) == [_sparse()]
    with pytest.raises(TypeError):
        write_records(target, [Record(id="bad", question="q?", meta={"s": {1}})])
    assert read_records(target) == [_sparse()]
    assert _only(tmp_path) == ["ds"]


def test_write_jsonl_failing_on_a_later_row_keeps_old_target(tmp_path):
    target = tmp_path / "rows.jsonl"
    write_jsonl(target, [{"n": 1}])

    def rows():
        yield {"n": 2}
        yield {"n": 3}
        raise RuntimeError("generator died mid-way")

    with pytest.raises(RuntimeError, match="mid-way"):
        write_jsonl(target, rows())
    assert target.read_text() == '{"n": 1}\n'
    assert _only(tmp_path) == ["rows.jsonl"]


def test_failed_first_write_creates_nothing(tmp_path):
    target = tmp_path / "sub" / "new.jsonl"
    with pytest.raises(TypeError):
        write_records(target, [Record(id="bad", question="q?", meta={"f": object()})])
    assert not target.exists()
    assert _only(target.parent) == []


def test_successful_write_replaces_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.jsonl"
    write_records(target, [_full()])
    assert write_records(target, [_sparse()]) == 1
    assert read_records(target) == [_sparse()]
    assert _only(tmp_path) == ["out.jsonl"]


@pytest.mark.parametrize(
    "meta",
    [[1, 2], "a string", 3],
)
def test_meta_that_is_not_an_object_names_file_and_line(tmp_path, meta):
    path = _write_lines(tmp_path / "meta.jsonl", [_row(id="a"), _row(id="b", meta=meta)])
    with pytest.raises(RecordError, match=r"meta\.jsonl:2: field 'meta' must be an object"):
        read_records(path)


def test_parquet_meta_that_is_not_json_names_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "meta.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "question": "q?", "meta": '{"ok": 1}'},
                                         {"id": "b", "question": "q?", "meta": "{not json"}]), path)
    with pytest.raises(RecordError, match=r"meta\.parquet:2: field 'meta' must be an object"):
        read_records(path)


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    from critkit.data.records import Record, write_records

    path = tmp_path / "r.jsonl"
    write_records(path, [Record("1", "q")])
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_a_json_file_holding_one_array_reads_as_rows(tmp_path):
    """The released WebInstruct-CFT files are one JSON array, not JSON lines."""
    from critkit.data.records import read_rows
    from critkit.data.sources import load_source

    rows = [{"instruction": "Please critique whether the following solution to the question is correct.",
             "input": f"Question:\nWhat is {i} + 1?\n\nSolution:\n{i + 1}", "output": f"Right.\nConclusion: right [END]"}
            for i in range(3)]
    path = tmp_path / "WebInstruct-CFT-3.json"
    path.write_text(json.dumps(rows, indent=2))
    assert [n for n, _ in read_rows(path)] == [1, 2, 3]
    records = load_source(path, "webinstruct-cft")
    assert [r.question for r in records] == [f"What is {i} + 1?" for i in range(3)] and records[0].verdict == "right"
    # JSON lines in a .json file still read line by line; an array of non-objects names the element.
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r) for r in rows))
    assert len(list(read_rows(lines))) == 3
    bad = tmp_path / "bad.json"
    bad.write_text('[{"a": 1}, 7]')
    with pytest.raises(RecordError, match=r"bad.json:2: element 2: expected a JSON object, got int"):
        list(read_rows(bad))
