"""Plots from the logs a run already keeps: training loss per step (CGD Figures 6 and 8 show loss
and accuracy over training) and validation accuracy per checkpoint. Read from train_log.json and
selection.json, so no logging service is needed; TensorBoard event files are written as well when
tensorboard is installed (train.py)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_losses", "plot_run_losses", "plot_checkpoint_accuracy", "loss_points"]


def loss_points(log_history: list[dict]) -> tuple[list[int], list[float]]:
    """(steps, losses) of the training-loss entries of a Trainer log history."""
    rows = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    return [s for s, _ in rows], [float(l) for _, l in rows]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(histories: dict[str, list[dict]], path: str | Path, title: str = "training loss") -> Path | None:
    """One line per model: loss against optimizer step. None when no history has a loss."""
    curves = {name: loss_points(h) for name, h in histories.items()}
    curves = {name: c for name, c in curves.items() if c[0]}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, (steps, losses) in curves.items():
        ax.plot(steps, losses, label=name, marker="." if len(steps) < 40 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_run_losses(models_dir: Path, path: Path, title: str) -> Path | None:
    """Every train_log.json under a run's models/ folder, one curve each (named by its folder)."""
    histories = {}
    for log in sorted(models_dir.rglob("train_log.json")):
        name = str(log.parent.relative_to(models_dir))
        histories[name] = json.loads(log.read_text()).get("log_history", [])
    return plot_losses(histories, path, title)


def plot_checkpoint_accuracy(scores: dict[str, dict[str, float]], path: str | Path,
                             title: str = "validation accuracy per checkpoint") -> Path | None:
    """scores: {model: {"checkpoint-20": acc, ..., "final": acc}}; x is the step, "final" last."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    drawn = False
    for name, by_checkpoint in scores.items():
        steps = sorted((int(k.split("-")[-1]), v) for k, v in by_checkpoint.items() if k.startswith("checkpoint-"))
        if not steps:
            continue
        ax.plot([s for s, _ in steps], [100 * v for _, v in steps], marker="o", label=name)
        drawn = True
        if "final" in by_checkpoint:
            ax.scatter([steps[-1][0]], [100 * by_checkpoint["final"]], marker="*", s=90, zorder=3)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step (checkpoint)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
