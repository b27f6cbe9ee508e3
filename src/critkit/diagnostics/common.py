"""What every probe shares: which records are usable, the CGD input, model labels, output files.

A probe measures a model on the CGD training input: the user message is the teacher's refinement
request `cgd_refine_user(question, response, critique)` (or `cgd_no_critique_user` without the
critique), rendered with the model's chat template and add_generation_prompt=True; the target
answer is `refined`, or `reference` where no refined answer exists. Records that cannot be used
are counted by reason, never dropped silently and never fatal.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..prompts import load_prompt, render
from ..data.records import Record, RecordError, atomic_path, decode_meta, read_rows

INPUT_NOTE = ("user message = cgd_refine_user(question, response, critique) (cgd_no_critique_user without the "
              "critique), model chat template with add_generation_prompt=True; target = record.refined, else "
              "record.reference; target tokens appended after the generation prompt")


@dataclass(frozen=True)
class Sample:
    id: str
    question: str
    response: str
    critique: str
    target: str
    target_field: str  # "refined" or "reference": which field the target came from
    gold: str | None


def _text(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def load_samples(records: str | os.PathLike | Iterable[Record], limit: int | None = None,
                 need_gold: bool = False) -> tuple[list[Sample], dict]:
    """The first `limit` usable samples and a report {records_read, used, skipped: {reason: n}, ...}.

    A row that is not a valid record (unknown field, empty question) is skipped like any other
    unusable record: one bad row should not cost a diagnostic run over thousands of good ones.
    """
    skipped: Counter = Counter()
    targets: Counter = Counter()
    invalid: list[str] = []
    samples: list[Sample] = []
    read = 0

    def rows() -> Iterator[Record | RecordError]:
        if isinstance(records, (str, os.PathLike)):
            for number, row in read_rows(records):
                try:
                    yield Record.from_dict(decode_meta(row), records, number)
                except RecordError as exc:
                    yield exc
        else:
            yield from records

    for rec in rows():
        if limit is not None and len(samples) >= limit:
            break
        read += 1
        if isinstance(rec, RecordError):
            skipped["invalid record"] += 1
            if len(invalid) < 5:
                invalid.append(str(rec))
            continue
        response, critique = _text(rec.response), _text(rec.critique)
        target, field = (_text(rec.refined), "refined") if _text(rec.refined) else (_text(rec.reference), "reference")
        gold = rec.gold.strip() if isinstance(rec.gold, str) and rec.gold.strip() else None
        reason = ("no response" if response is None else "no critique" if critique is None
                  else "no refined or reference answer" if target is None
                  else "no gold answer" if need_gold and gold is None else None)
        if reason:
            skipped[reason] += 1
            continue
        targets[field] += 1
        samples.append(Sample(rec.id, rec.question, response, critique, target, field, gold))
    report = {"records_read": read, "used": len(samples), "skipped": dict(skipped), "target_from": dict(targets)}
    if invalid:
        report["invalid_examples"] = invalid
    return samples, report


# ------------------------------------------------------------------------------- model input

_PLACEHOLDER = re.compile(r"\{(question|response|critique)\}")  # the same one-pass fill as prompts.render


def cgd_user(sample: Sample, critique: str | None) -> tuple[str, dict[str, tuple[int, int]]]:
    """The CGD user message and the character span of each inserted text in it.

    The spans come from filling the template here, placeholder by placeholder, instead of
    searching the result: a student answer such as "Answer" would also match the template's own
    "Student's Initial Answer" label.
    """
    name = "cgd_no_critique_user" if critique is None else "cgd_refine_user"
    values = {"question": sample.question, "response": sample.response, "critique": critique}
    template, parts, spans, pos, length = load_prompt(name), [], {}, 0, 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(template[pos:m.start()])
        length += m.start() - pos
        spans[m.group(1)] = (length, length + len(values[m.group(1)]))
        parts.append(values[m.group(1)])
        length += len(values[m.group(1)])
        pos = m.end()
    parts.append(template[pos:])
    text = "".join(parts)
    if text != render(name, **{k: v for k, v in values.items() if v is not None}):
        raise RuntimeError(f"prompt {name!r}: spans computed for a text that differs from prompts.render")
    return text, spans


def messages(sample: Sample, critique: str | None) -> list[dict[str, str]]:
    return [{"role": "user", "content": cgd_user(sample, critique)[0]}]


def chat_text(tokenizer, sample: Sample, critique: str | None) -> str:
    return tokenizer.apply_chat_template(messages(sample, critique), tokenize=False, add_generation_prompt=True)


def encode(tokenizer, sample: Sample, critique: str | None, with_target: bool = True) -> tuple[list[int], int]:
    """(token ids, prompt length): chat prompt, then the target's tokens appended.

    add_special_tokens=False because the chat template already wrote its special tokens (a second
    BOS would shift every position), as in backends.TransformersBackend.
    """
    prompt = tokenizer(chat_text(tokenizer, sample, critique), add_special_tokens=False)["input_ids"]
    target = tokenizer(sample.target, add_special_tokens=False)["input_ids"] if with_target else []
    return list(prompt) + list(target), len(prompt)


# ------------------------------------------------------------------------------- models


def model_labels(models: list[str], labels: list[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(models):
            raise ValueError(f"{len(labels)} labels for {len(models)} models; give one label per model or none")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct: {labels}")
        return list(labels)
    out: list[str] = []
    for name in models:
        path = Path(name)
        # runs/x/models/cgd/final -> cgd/final: "final" alone would not say which run it is.
        label = f"{path.parent.name}/{path.name}" if path.name in ("final", "") or path.name.startswith("checkpoint") else path.name
        base, k = label or name, 2
        while label in out:
            label, k = f"{base}#{k}", k + 1
        out.append(label)
    return out


def each_model(models: list[str], labels: list[str], **load_options) -> Iterator[tuple[str, str, object, object]]:
    """(label, name, model, tokenizer), one model in memory at a time."""
    from ..engine.models import load_model, load_tokenizer

    for name, label in zip(models, labels):
        model = load_model(name, **load_options)
        yield label, name, model, load_tokenizer(name)
        del model
        gc.collect()


def max_positions(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


# ------------------------------------------------------------------------------- statistics


def describe(values: list[float]) -> dict:
    import numpy as np

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(x):
        return {"n": 0, "mean": None, "std": None, "sem": None, "median": None}
    std = float(x.std(ddof=1)) if len(x) > 1 else None
    return {"n": int(len(x)), "mean": float(x.mean()), "std": std,
            "sem": std / math.sqrt(len(x)) if std is not None else None, "median": float(np.median(x))}


def paired_t(a: list[float | None], b: list[float | None]) -> dict:
    """scipy's paired t-test on the samples both have; t and p are None below two pairs."""
    from scipy.stats import ttest_rel

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    out = {"n": len(pairs), "mean_difference": None, "t": None, "p": None}
    if pairs:
        out["mean_difference"] = sum(x - y for x, y in pairs) / len(pairs)
    if len(pairs) >= 2:
        res = ttest_rel([x for x, _ in pairs], [y for _, y in pairs])
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)  # nan when all differences are equal
    return out


def fmt(value, spec: str = ".3g") -> str:
    """A number for a summary line; None (no test possible) reads as n/a."""
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def pairwise_t(values: dict[str, list[float | None]]) -> list[dict]:
    """A paired t-test for every pair of models (first minus second)."""
    return [{"a": a, "b": b, **paired_t(values[a], values[b])} for a, b in itertools.combinations(values, 2)]


# ------------------------------------------------------------------------------- output


def _clean(obj):
    # JSON has no NaN: scipy returns nan for a t-test on constant differences.
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _clean(obj.item())
    return obj


def write_json(path: Path, result: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(result), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    plt = pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
