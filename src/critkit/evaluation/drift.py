"""Format drift: outputs that look like critiques, not answers.

CGD found CFT models drifting into critique-writing; every benchmark counts the share of its
outputs that carry one of these markers (the reports' critique-format column). Its own module so
that evaluate.py and the chat benchmarks (ifeval.py, mt_bench.py), which evaluate.py calls, share it.
"""

from __future__ import annotations

__all__ = ["CRITIQUE_MARKERS", "critique_share"]

CRITIQUE_MARKERS = ("Conclusion: right", "Conclusion: wrong", "[END]", "Critique:")


def critique_share(texts: list[str]) -> float | None:
    """The share of `texts` that look like critiques; None for no texts."""
    return sum(any(m in t for m in CRITIQUE_MARKERS) for t in texts) / len(texts) if texts else None
