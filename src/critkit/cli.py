"""Command line: each subcommand parses its flags and calls one library function."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path


def _config_path(name: str) -> str:
    """A config file path, or the name of a packaged config (quickstart, cft-7b, cft-32b, cgd-8b)."""
    if Path(name).exists():
        return name
    packaged = resources.files("critkit").joinpath("configs", f"{name}.yaml")
    if packaged.is_file():
        return str(packaged)
    known = sorted(p.name.removesuffix(".yaml") for p in resources.files("critkit").joinpath("configs").iterdir()
                   if p.name.endswith(".yaml"))
    raise SystemExit(f"critkit: no config file {name!r} and no packaged config of that name (packaged: {', '.join(known)})")


def _sampling(args) -> "Sampling":
    from .backends import Sampling

    return Sampling(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, n=args.n,
                    seed=args.seed, stop=tuple(args.stop or ()))


def _add_model_flags(p: argparse.ArgumentParser, who: str, default: str | None) -> None:
    p.add_argument(f"--{who}", default=default, help=f"{who} model: HF id, local path, 'embedded'" +
                   (", or 'reference' (offline teacher: grades with math-verify, writes from the reference solution)" if who == "teacher" else ""))
    p.add_argument("--backend", default="auto", choices=["auto", "transformers", "openai"],
                   help="auto: openai when --base-url is given, else local transformers")
    p.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (openai backend)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per batch (transformers backend)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def _backend(args, name: str):
    from .backends import make_backend
    from .synth import REFERENCE

    if name == REFERENCE:
        return REFERENCE
    return make_backend(name, args.backend, base_url=args.base_url, api_key_env=args.api_key_env,
                        concurrency=args.concurrency, batch_size=args.batch_size)


def cmd_stage(args) -> None:
    from . import synth
    from .records import read_records, write_records

    records = read_records(args.input)
    sampling = _sampling(args)
    if args.command == "respond":
        out, report = synth.respond(records, _backend(args, args.student), sampling, prompt=args.prompt)
    elif args.command == "critique":
        out, report = synth.critique(records, _backend(args, args.teacher), sampling, style=args.style)
    else:
        out, report = getattr(synth, args.command)(records, _backend(args, args.teacher), sampling)
    write_records(args.output, out)
    print(report.line(args.command))
    print(f"wrote {len(out)} records to {args.output}")


def cmd_data(args) -> None:
    from .demo import make_demo
    from .records import write_records
    from .sources import load_source

    if args.source == "demo":
        train, test = make_demo(train=args.train, test=args.test, seed=args.seed)
        out = Path(args.output)
        write_records(out / "train.jsonl", train)
        write_records(out / "test.jsonl", test)
        print(f"wrote {len(train)} train and {len(test)} test records to {out}/")
        return
    records = load_source(args.source, args.format, limit=args.limit)
    write_records(args.output, records)
    print(f"wrote {len(records)} records to {args.output}")


def cmd_build(args) -> None:
    from .methods import build_pairs
    from .records import read_records, write_jsonl

    rows, skipped = build_pairs(args.method, read_records(args.input))
    write_jsonl(args.output, rows)
    print(f"{args.method}: wrote {len(rows)} pairs to {args.output}")
    if skipped:
        print(f"skipped {sum(skipped.values())} records: " + ", ".join(f"{n} {why}" for why, n in skipped.most_common()))


def cmd_train(args) -> None:
    from .train import load_train_config, train

    cfg = load_train_config(_config_path(args.config) if args.config else None, args.overrides)
    print(f"model saved to {train(cfg)}")


def cmd_eval(args) -> None:
    from .backends import make_backend
    from .evaluate import evaluate

    backend = make_backend(args.model, args.backend, base_url=args.base_url, api_key_env=args.api_key_env,
                           concurrency=args.concurrency, batch_size=args.batch_size)
    scores = evaluate(backend, args.benchmarks, args.output, _sampling(args), limit=args.limit)
    print(f"| benchmark | accuracy | n | no answer |\n|---|---|---|---|")
    for name, s in scores.items():
        print(f"| {s['benchmark']} | {100 * s['accuracy']:.1f} | {s['n']} | {100 * s['no_answer']:.0f}% |")
        if s["bad_rows"]:
            print(f"  {name}: {s['bad_rows']} unusable rows, e.g. {s['bad_examples'][0]}")


def cmd_run(args) -> None:
    from .run import load_run_config, run

    run(load_run_config(_config_path(args.config), args.overrides))


def cmd_serve(args) -> None:
    from .serve import run_server

    run_server(args.model, args.host, args.port, args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="critkit", description="Critique Fine-Tuning and Critique-Guided Distillation, end to end.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="convert a source file (or the demo task) to records")
    p.add_argument("source", help="a data file, or 'demo' for the generated demo task")
    p.add_argument("--output", "-o", required=True, help="records file (.jsonl/.parquet/folder), or a folder for demo")
    p.add_argument("--format", default="auto", help="source mapping: auto, gsm8k, math, webinstruct-cft, gsm8k-noisy, metamath, numina, critkit")
    p.add_argument("--limit", type=int)
    p.add_argument("--train", type=int, default=96, help="demo: train problems")
    p.add_argument("--test", type=int, default=96, help="demo: test problems")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_data)

    stages = {"respond": "student answers y' to each question", "critique": "teacher critique c and verdict",
              "refine": "teacher refined answer from (question, answer, critique)", "solve": "teacher's own solution"}
    for name, help_text in stages.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--input", "-i", required=True, help="records file")
        p.add_argument("--output", "-o", required=True, help="records file to write")
        if name == "respond":
            _add_model_flags(p, "student", "embedded")
            p.add_argument("--prompt", default="cot", choices=["cot", "base"], help="cot: Qwen2.5-Math chat prompt; base: 'Question: ...\\n\\nAnswer:'")
        else:
            _add_model_flags(p, "teacher", "reference")
        if name == "critique":
            p.add_argument("--style", default="cft", choices=["cft", "cgd"], help="which paper's teacher prompt")
        p.set_defaults(fn=cmd_stage)

    p = sub.add_parser("build", help="training pairs for one method")
    p.add_argument("--method", "-m", required=True, help="one of: sft, sft-verified, sft-teacher, sft-gold, cft, distilled-sft, cgd, cgd-no-critique")
    p.add_argument("--input", "-i", required=True)
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("train", help="fine-tune with TRL SFTTrainer; overrides as key=value (SFTConfig fields)")
    p.add_argument("config", nargs="?", help="YAML config or packaged name")
    p.add_argument("overrides", nargs="*", help="e.g. data=pairs.jsonl learning_rate=1e-5 peft.r=16")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model on benchmarks")
    _add_model_flags(p, "model", "embedded")
    p.add_argument("--benchmarks", nargs="+", default=["gsm8k"], help="names (gsm8k, math500, ...), spec .yaml files or records .jsonl")
    p.add_argument("--output", "-o", default="runs/eval")
    p.add_argument("--limit", type=int, help="first N questions of each benchmark")
    p.set_defaults(fn=cmd_eval, max_new_tokens=1024)

    p = sub.add_parser("run", help="the whole pipeline from a run config; rerun to resume")
    p.add_argument("config", help="YAML config or packaged name (quickstart)")
    p.add_argument("overrides", nargs="*", help="e.g. output_dir=runs/x methods=[sft-gold] learning_rate=1e-4")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("serve", help="OpenAI-compatible chat server for a local model (loopback, for tests and laptops)")
    p.add_argument("--model", default="embedded")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(fn=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from .records import RecordError
    from .config import ConfigError

    try:
        args.fn(args)
    except (RecordError, ConfigError) as exc:
        print(f"critkit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
