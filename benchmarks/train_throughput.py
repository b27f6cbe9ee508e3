"""Training throughput: critkit's default training against TRL's SFTTrainer with padded batches.

Same model (the embedded SmolLM2-135M-Instruct, full fine-tuning, fp32, CPU), same CFT pairs
(real model solutions to GSM8K test questions from ../shared/data/noisy, critiqued by the offline
reference teacher), same batch size, learning rate, max length and seed. Each engine trains in
its own process (so peak memory is its own), alternating critkit / TRL for `--rounds` rounds in
this one invocation. Reported: supervised (completion) tokens per second of training time (model
loading and dataset preparation excluded), and peak resident memory of the process.

The peer is TRL 1.16's SFTTrainer as a TRL user would run it, with two settings made equal to
critkit's CPU defaults so that only batching and the loss differ: fp32 instead of TRL's default
bf16 autocast (several times slower on this CPU) and no gradient checkpointing.

    python benchmarks/train_throughput.py --pairs 48 --batch-size 8 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOISY = ROOT.parent / "shared" / "data" / "noisy" / "gsm8k_test_model_solutions.jsonl"


def make_pairs(path: Path, n: int, seed: int = 0) -> None:
    from critkit.synth import stages as synth
    from critkit.engine.backends import Sampling
    from critkit.training.methods import build_pairs
    from critkit.data.records import write_jsonl
    from critkit.data.sources import load_source

    records = load_source(str(NOISY), "gsm8k-noisy", None)
    random.Random(seed).shuffle(records)
    records, _ = synth.critique(records[:n], synth.REFERENCE, Sampling(), style="cft")
    rows, _ = build_pairs("cft", records)
    write_jsonl(path, rows)


def _settings(args) -> dict:
    return {"learning_rate": 1e-5, "per_device_train_batch_size": args.batch_size, "num_train_epochs": 1,
            "max_length": 1024, "seed": 0, "logging_steps": 1, "report_to": [], "save_strategy": "no",
            "bf16": False, "gradient_checkpointing": False, "disable_tqdm": True, "dataset_num_proc": None}


def _supervised_tokens(trainer) -> int:
    return sum(sum(1 for label in row["labels"] if label != -100) for row in trainer.train_dataset)


def run_engine(engine: str, pairs: str, args) -> dict:
    """Train once in this process and return the figures."""
    from trl import SFTConfig, SFTTrainer

    from critkit.engine.models import load_model, load_tokenizer
    from critkit.training.train import TrainConfig, _load_pairs, _make_trainer_class, sft_defaults

    dataset = _load_pairs(pairs, None)
    tokenizer = load_tokenizer("embedded", padding_side="right")
    if engine == "trl":
        model = load_model("embedded", dtype="float32").train()
        config = SFTConfig(output_dir=tempfile.mkdtemp(), **_settings(args))
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    else:  # critkit's defaults, as `critkit train` sets them
        from critkit.training.attention import register

        cfg = TrainConfig(model="embedded", data=pairs, output_dir=tempfile.mkdtemp(), sft=_settings(args))
        config = SFTConfig(**sft_defaults(cfg))
        model = load_model("embedded", dtype="float32", attn_implementation=register()).train()
        trainer = _make_trainer_class()(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    supervised = _supervised_tokens(trainer)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"engine": engine, "padding_free": bool(config.padding_free), "seconds": round(seconds, 1),
            "supervised_tokens": supervised, "supervised_tokens_per_second": round(supervised / seconds, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_training_mib": round(rss_before / 1024), "steps": result.global_step,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=48, help="CFT pairs to train on (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="critkit/TRL alternations")
    parser.add_argument("--engine", choices=["critkit", "trl"], help=argparse.SUPPRESS)  # child process
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output", default="train_throughput.json")
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.pairs_file, args)))
        return 0

    pairs = Path(tempfile.mkdtemp()) / "cft_pairs.jsonl"
    make_pairs(pairs, args.pairs)
    rows = []
    for round_ in range(args.rounds):
        for engine in ("critkit", "trl"):
            cmd = [sys.executable, __file__, "--engine", engine, "--pairs-file", str(pairs),
                   "--batch-size", str(args.batch_size)]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode:
                sys.stderr.write(done.stderr[-4000:])
                return done.returncode
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["round"] = round_
            rows.append(row)
            print(json.dumps(row), flush=True)
    median = {e: statistics.median(r["supervised_tokens_per_second"] for r in rows if r["engine"] == e)
              for e in ("critkit", "trl")}
    peak = {e: max(r["peak_rss_mib"] for r in rows if r["engine"] == e) for e in ("critkit", "trl")}
    summary = {"pairs": args.pairs, "batch_size": args.batch_size, "rounds": args.rounds, "runs": rows,
               "median_supervised_tokens_per_second": median, "ratio": round(median["critkit"] / median["trl"], 2),
               "peak_rss_mib": peak}
    Path(args.output).write_text(json.dumps(summary, indent=1))
    print(f"critkit {median['critkit']:.1f} vs TRL {median['trl']:.1f} supervised tok/s: "
          f"{summary['ratio']:.2f}x; peak RSS {peak['critkit']} vs {peak['trl']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
