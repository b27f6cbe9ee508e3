"""Diagnostics: why critique training works (CGD appendix C), one probe per module.

- entropy: entropy of the first answer token given the critique (CGD Table 9)
- gradnorm: gradient norm on the target answer with and without the critique (CGD Table 10)
- attention: attention shares over problem / student answer / critique while generating,
  per layer and generation phase, from eager attention (CGD Figures 9-11)
- counterfactual: accuracy given the factual vs a nonsense critique (CGD Table 11)

Each probe runs on any list of models (base, SFT, CFT, CGD checkpoints, LoRA adapter folders) and
one records file; `run_probe` writes `<probe>.json` and `<probe>.png` into an output folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..data.records import Record
from . import attention, counterfactual, entropy, gradnorm
from .common import load_samples, model_labels, write_json

__all__ = ["PROBES", "run_probe", "load_samples"]

# probe name -> (module, whether records need a gold answer)
PROBES = {"entropy": (entropy, False), "gradnorm": (gradnorm, False), "attention": (attention, False),
          "counterfactual": (counterfactual, True)}


def run_probe(probe: str, records: str | os.PathLike | Iterable[Record], models: list[str],
              labels: list[str] | None = None, limit: int | None = None, output: str | os.PathLike | None = None,
              **options) -> dict:
    """Run one probe on every model; with `output`, write <output>/<probe>.json and .png.

    `options` go to the probe: max_new_tokens (attention, counterfactual); nonsense, seed and
    batch_size (counterfactual).
    """
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; known: {', '.join(PROBES)}")
    if not models:
        raise ValueError("give at least one model")
    module, need_gold = PROBES[probe]
    names = model_labels(models, labels)
    samples, report = load_samples(records, limit=limit, need_gold=need_gold)
    fn = getattr(module, probe)
    if probe == "counterfactual" and output is not None:
        options = {**options, "journal_dir": Path(output)}  # the probe that generates keeps its answers there as it goes
    result = fn(samples, list(models), names, **options)
    result = {"probe": result.pop("probe"),
              "records": str(records) if isinstance(records, (str, os.PathLike)) else "<records>",
              "limit": limit, "data": report, "models": [{"label": l, "model": m} for l, m in zip(names, models)],
              **result}
    skipped = ", ".join(f"{n} {why}" for why, n in report["skipped"].items())
    result["summary"] = [f"{report['used']} samples from {report['records_read']} records"
                         + (f" (skipped {skipped})" if skipped else "")] + result["summary"]
    if output is not None:
        out = Path(output)
        write_json(out / f"{probe}.json", result)
        module.plot(result, out / f"{probe}.png")
        result["files"] = [str(out / f"{probe}.json"), str(out / f"{probe}.png")]
    return result
