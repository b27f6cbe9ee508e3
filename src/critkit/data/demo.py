"""The embedded demo task: short math problems that critkit generates itself.

Why not GSM8K: the embedded 135M model answers about 1 in 64 GSM8K questions and CPU training runs
at ~75-100 tokens/s, so nothing measurable can be learned from GSM8K in a 10-minute quickstart.
These problems have one-line solutions that end in \\boxed{}, a verifiable gold answer, and are
hard enough that the untrained model gets few right (it rarely boxes an answer and its arithmetic
is poor) while a few minutes of training moves accuracy a lot. Train and test splits are
disjoint by question text.
"""

from __future__ import annotations

import random

from .records import Record

__all__ = ["make_demo", "KINDS"]


def _largest(rng: random.Random) -> tuple[str, str, str]:
    xs = rng.sample(range(10, 100), 4)
    listed = ", ".join(map(str, xs))
    top = max(xs)
    return (f"What is the largest of the numbers {listed}?",
            f"Compare the numbers {listed}. The largest is {top}.\n\\boxed{{{top}}}", str(top))


def _sum(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"What is {a} + {b}?", f"{a} + {b} = {a + b}.\n\\boxed{{{a + b}}}", str(a + b)


def _two_step(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    c = rng.randint(1, a + b)
    return (f"What is {a} + {b} - {c}?",
            f"{a} + {b} = {a + b}. Then {a + b} - {c} = {a + b - c}.\n\\boxed{{{a + b - c}}}", str(a + b - c))


KINDS = {"largest": _largest, "sum": _sum, "two-step": _two_step}


def make_demo(train: int = 96, test: int = 96, seed: int = 0, kinds: tuple[str, ...] = tuple(KINDS),
              validation: int = 0) -> tuple[list[Record], ...]:
    """(train, test) records, plus a validation split when asked for (for checkpoint selection);
    kinds rotate so each split holds them in equal shares, and no question is in two splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[Record]] = {"train": [], "test": [], "validation": []}
    for split, size in (("test", test), ("train", train), ("validation", validation)):
        attempts = 0
        while len(splits[split]) < size:
            attempts += 1
            if attempts > 100 * (size + 1):
                raise ValueError(f"cannot draw {size} distinct {split} problems; ask for fewer")
            kind = kinds[len(splits[split]) % len(kinds)]
            question, solution, gold = KINDS[kind](rng)
            if question in seen:
                continue
            seen.add(question)
            rid = f"demo-{split}-{len(splits[split])}"
            splits[split].append(Record(rid, question, gold=gold, reference=solution,
                                        meta={"source": "critkit-demo", "kind": kind, "seed": seed}))
    if validation:
        return splits["train"], splits["test"], splits["validation"]
    return splits["train"], splits["test"]
