"""Command line: each subcommand parses its flags and calls one library function."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _config_path(name: str) -> str:
    """A config file path, or the name of a packaged run config (quickstart, cft-7b, cft-32b, cgd-8b)."""
    from .config import ConfigError, find_config

    try:
        return str(find_config(name))
    except ConfigError as exc:
        raise SystemExit(f"critkit: {exc}") from None


def _sampling(args) -> "Sampling":
    from .engine.backends import Sampling

    return Sampling(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, n=args.n,
                    seed=args.seed, stop=tuple(args.stop or ()))


def _add_model_flags(p: argparse.ArgumentParser, who: str, default: str | None) -> None:
    p.add_argument(f"--{who}", default=default, help=f"{who} model: HF id, local path, 'embedded'" +
                   (", or 'reference' (offline teacher: grades with math-verify, writes from the reference solution)" if who == "teacher" else ""))
    p.add_argument("--backend", default="auto", choices=["auto", "transformers", "vllm", "openai"],
                   help="auto: openai when --base-url is given, else local transformers; vllm: in-process vLLM on GPUs")
    p.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (openai backend)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences decoded together, refilled as they end (transformers backend)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def _backend(args, name: str):
    from .engine.backends import make_backend
    from .synth.stages import REFERENCE

    if name == REFERENCE:
        return REFERENCE
    # The job flags (retries, limits, timeout) exist on the synthesis stages only.
    return make_backend(name, args.backend, base_url=args.base_url, api_key_env=args.api_key_env,
                        concurrency=args.concurrency, batch_size=args.batch_size, timeout=getattr(args, "timeout", None),
                        max_tries=getattr(args, "max_tries", None), rpm=getattr(args, "rpm", None),
                        tpm=getattr(args, "tpm", None))


def _add_request_flags(p: argparse.ArgumentParser, items: str = "records") -> None:
    """Flags of the durable runners (synth/jobs.py, evaluation/durable.py): retries, limits, --retry-failed."""
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (connect and each read; openai backend)")
    p.add_argument("--max-tries", type=int, default=6,
                   help="tries per request on 429 / 5xx / timeouts / broken connections / garbled or empty replies, with "
                        f"backoff; then the {items[:-1]} is failed")
    p.add_argument("--rpm", type=float, help="requests-per-minute limit (openai backend)")
    p.add_argument("--tpm", type=float, help="tokens-per-minute limit (openai backend; prompt chars/4 + max tokens, corrected by usage)")
    p.add_argument("--retry-failed", action="store_true", help=f"also redo the {items} that failed in an earlier run")


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the durable stage runner (critkit/synth/jobs.py): resume, retries, limits, shards, prices."""
    _add_request_flags(p)
    p.add_argument("--shard", help="i/n: process only shard i of n (stable hash of the record id); merge with `critkit merge`")
    p.add_argument("--prices", help="YAML file: {model: {prompt: P, completion: C}} per million tokens")
    p.add_argument("--price-prompt", type=float, help="price per million prompt tokens of this run's model")
    p.add_argument("--price-completion", type=float, help="price per million completion tokens of this run's model")


def cmd_stage(args) -> None:
    from .synth.jobs import format_summary, load_prices, parse_shard, run_stage

    who = args.student if args.command == "respond" else args.teacher
    prices = load_prices(args.prices, who, args.price_prompt, args.price_completion)
    summary = run_stage(args.command, args.input, args.output, _backend(args, who), _sampling(args),
                        style=getattr(args, "style", "cft"), prompt=getattr(args, "prompt", "plain"),
                        retry_failed=args.retry_failed, shard=parse_shard(args.shard), prices=prices,
                        reference_critique=getattr(args, "reference_critique", "verdict"))
    print(format_summary(summary))


def cmd_merge(args) -> None:
    from .synth.jobs import format_summary, load_prices, merge_shards

    print(format_summary(merge_shards(args.shards, args.output, stage=args.stage, prices=load_prices(args.prices))))


def cmd_stats(args) -> None:
    from .synth.stats import run_stats

    print(run_stats(args.file, png=args.png, tokenizer=args.tokenizer))


def cmd_data(args) -> None:
    from .data.demo import make_demo
    from .data.records import write_records
    from .data.sources import load_source

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
    from .training.methods import build_pairs
    from .data.records import read_records, write_jsonl

    rows, skipped = build_pairs(args.method, read_records(args.input), verified_only=args.verified_only)
    write_jsonl(args.output, rows)
    print(f"{args.method}: wrote {len(rows)} pairs to {args.output}")
    if skipped:
        print(f"skipped {sum(skipped.values())} records: " + ", ".join(f"{n} {why}" for why, n in skipped.most_common()))
    if args.max_length:  # what TRL's truncation will cut, in the student's tokens (truncation.py)
        from .engine.models import load_tokenizer
        from .training.truncation import count_truncation

        print(count_truncation(rows, load_tokenizer(args.model), args.max_length).line(args.model))


def _train_config_from_args(args):
    from .training.train_config import load_train_config

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():  # `critkit train key=value ...`, no config file
        config, overrides = None, [config, *overrides]
    return load_train_config(_config_path(config) if config else None, overrides)


def cmd_train(args) -> None:
    from .training.train import train

    final = train(_train_config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model saved to {final}")


def cmd_estimate(args) -> None:
    from .training.estimate import estimate, format_estimate, run_launch

    cfg = _train_config_from_args(args)
    launch = args.launch if args.launch is not None else run_launch(args.config)
    print(format_estimate(estimate(cfg, devices=args.devices, launch=None if launch == "none" else launch)))


def cmd_configs(args) -> None:
    from .config import packaged_config_text, packaged_configs

    if args.name:
        sys.stdout.write(packaged_config_text(args.name))
        return
    configs = packaged_configs()
    width = max(map(len, configs))
    titles = {"": "run configs (critkit run NAME, critkit train NAME):",
              "ablations": "ablation configs (critkit ablate NAME, without the ablations/ prefix):",
              "accelerate": "accelerate configs (critkit configs NAME > FILE, then "
                            "accelerate launch --config_file FILE -m critkit train CONFIG):"}
    folder = None
    for name, path in configs.items():  # grouped by folder, top level first
        if name.rpartition("/")[0] != folder:
            folder = name.rpartition("/")[0]
            print(titles.get(folder, f"{folder} configs:"))
        print(f"  {name:<{width}}  {path}")


def _lm_eval(args) -> None:
    """`critkit eval --lm-eval-tasks`: lm-eval's own tasks on the model (evaluation/lmeval.py)."""
    import json

    from .evaluation.lmeval import run_lm_eval

    if args.backend == "openai" or args.base_url:
        raise SystemExit("critkit: error: --lm-eval-tasks runs the model in-process (hf or vllm), not through --base-url")
    model_args = json.loads(args.lm_eval_model_args) if args.lm_eval_model_args else {}
    if args.backend == "vllm":  # the same vLLM settings as critkit's own vllm backend
        for flag, key in (("tensor_parallel_size", "tensor_parallel_size"), ("gpu_memory_utilization", "gpu_memory_utilization"),
                          ("max_model_len", "max_model_len")):
            if getattr(args, flag, None) is not None:
                model_args.setdefault(key, getattr(args, flag))
    try:
        scores = run_lm_eval(args.model, args.lm_eval_tasks.split(","), args.output, args.lm_eval_include,
                             engine="vllm" if args.backend == "vllm" else "hf", include_defaults=not args.lm_eval_local_only,
                             limit=args.limit, num_fewshot=args.lm_eval_num_fewshot, apply_chat_template=args.lm_eval_chat_template,
                             batch_size=int(size) if (size := args.lm_eval_batch_size) and size.isdigit() else size, model_args=model_args, seed=args.seed)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"critkit: error: {exc}") from None
    print("| lm-eval task | score | n | metric |\n|---|---|---|---|")
    for s in scores.values():
        score = "–" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}"
        print(f"| {s['benchmark']} | {score} | {s['n']} | {s['metric']} |")
    print(f"  lm-eval: results in {args.output}/lmeval.json, per-sample logs in {args.output}/lmeval_samples/")


def _judge(args):
    """mt_bench's judge: an OpenAI-compatible server, with the request flags (retries, limits) of the model's."""
    from .engine.backends import make_backend

    if "mt_bench" not in (args.benchmarks or []):
        return None
    if not args.judge or not args.judge_base_url:
        raise SystemExit("critkit: error: mt_bench is graded by a judge: give --judge MODEL --judge-base-url URL")
    return make_backend(args.judge, "openai", base_url=args.judge_base_url, api_key_env=args.judge_api_key_env,
                        concurrency=args.concurrency, timeout=args.timeout, max_tries=args.max_tries, rpm=args.rpm, tpm=args.tpm)


def cmd_eval(args) -> None:
    from .engine.backends import make_backend
    from .evaluation.evaluate import evaluate

    if args.benchmarks is None:  # gsm8k unless only lm-eval tasks are asked for
        args.benchmarks = [] if args.lm_eval_tasks else ["gsm8k"]
    judge = _judge(args)  # before the model loads: a missing judge is an error at once
    if "ifeval" in args.benchmarks:  # and so is a missing lmeval extra
        from .evaluation.ifeval import verifiers

        try:
            verifiers()
        except ImportError as exc:
            raise SystemExit(f"critkit: error: {exc}") from None
    if args.lm_eval_tasks:
        _lm_eval(args)
        if not args.benchmarks:
            return
    backend = make_backend(args.model, args.backend, base_url=args.base_url, api_key_env=args.api_key_env,
                           concurrency=args.concurrency, batch_size=args.batch_size, stop_at_answer=args.stop_at_answer,
                           timeout=args.timeout, max_tries=args.max_tries, rpm=args.rpm, tpm=args.tpm,
                           kv_cache_gib=args.kv_cache_gib, max_model_len=args.max_model_len,
                           gpu_memory_utilization=args.gpu_memory_utilization, tensor_parallel_size=args.tensor_parallel_size)
    scores = evaluate(backend, args.benchmarks, args.output, _sampling(args), limit=args.limit, mode=args.mode,
                      rounds=args.rounds, retry_failed=args.retry_failed, judge=judge,
                      judge_max_new_tokens=args.judge_max_new_tokens)
    extra = [k for k in next(iter(scores.values()), {}) if k.startswith(("pass@", "maj@"))]
    pct = lambda s, k, digits=1: "–" if s.get(k) is None else f"{100 * s[k]:.{digits}f}"  # noqa: E731
    # accuracy (and pass@k, maj@k) over the answered questions: a failed request is not a wrong answer.
    print("| benchmark | accuracy | n | failed | no answer | critique-format |" + "".join(f" {k} |" for k in extra))
    print("|---" * (6 + len(extra)) + "|")
    for name, s in scores.items():
        print(f"| {s['benchmark']} | {pct(s, 'accuracy')} | {s['n']} | {s['failed']} | {pct(s, 'no_answer', 0)}% | "
              f"{pct(s, 'critique_format', 0)}% |" + "".join(f" {pct(s, k)} |" for k in extra))
    for name, s in scores.items():
        run = s["this_run"]
        print(f"  {s['benchmark']}: this run sent {run['sent']} requests ({run['retries']} retries); "
              f"{run['resumed']} of {run['samples']} samples were done before"
              + (f"; {run['retried_failed']} failed ones tried again" if run["retried_failed"] else ""))
        for problem in run["journal_problems"]:
            print(f"  {s['benchmark']}: journal: {problem}")
        if run["superseded"]:
            print(f"  {s['benchmark']}: {run['superseded']} samples of other questions or prompts moved to {run['superseded_file']}")
        if s["failed"]:
            print(f"  {s['benchmark']}: {s['failed']} failed, not scored (e.g. {s['failed_examples'][0]['id']}: "
                  f"{s['failed_examples'][0]['error'][:160]}); rerun with --retry-failed to try them again")
        if s["bad_rows"]:
            print(f"  {name}: {s['bad_rows']} unusable rows, e.g. {s['bad_examples'][0]}")
        if "prompt_level_strict_acc" in s:  # IFEval's four metrics (evaluation/ifeval.py); accuracy is prompt-level strict
            print(f"  {name}: prompt-level strict {pct(s, 'prompt_level_strict_acc')}, loose {pct(s, 'prompt_level_loose_acc')}; "
                  f"instruction-level strict {pct(s, 'inst_level_strict_acc')}, loose {pct(s, 'inst_level_loose_acc')} "
                  f"({s['instructions']} instructions; sentences split by {s['sentence_model']})")
            if s["verifier_errors"]:
                print(f"  {name}: {s['verifier_errors']} responses the verifiers could not check, not scored "
                      f"(e.g. {s['verifier_error_examples'][0]})")
        if "score" in s:  # MT-Bench (evaluation/mt_bench.py): mean judge rating, not an accuracy
            rating = lambda k: "–" if s[k] is None else f"{s[k]:.2f}"  # noqa: E731
            print(f"  {name}: score {rating('score')} (turn 1 {rating('turn_1')}, turn 2 {rating('turn_2')}) from "
                  f"{s['ratings']} ratings by {s['judge']}; {s['unparsable']} judgments without a rating, not counted")


def cmd_run(args) -> None:
    from .run import load_run_config, run

    seeds = [f"seeds={args.seeds}"] if args.seeds is not None else []
    run(load_run_config(_config_path(args.config), [*args.overrides, *seeds]))


def cmd_ablate(args) -> None:
    from .ablate import ablate, find_config, load_ablation

    seeds = [f"seeds={args.seeds}"] if args.seeds is not None else []
    ablate(*load_ablation(find_config(args.config, "ablations"), [*args.overrides, *seeds]))


def cmd_report(args) -> None:
    from .report.html import write_html_report
    from .report.tables import write_collection

    table = write_collection([Path(r) for r in args.runs], Path(args.output), title=args.title)
    print((Path(args.output) / "table.md").read_text())
    print(f"wrote {args.output}/table.md, table.csv, table.png ({len(table['models'])} models)")
    for run in args.runs:  # each run's own page: its tables, synthesis statistics and samples
        print(f"wrote {write_html_report(run, samples=args.html_samples, seed=args.seed)}")


def cmd_view(args) -> None:
    from .report.view import view

    try:
        view(args.run_dir, port=args.port)
    except OSError as exc:  # no such folder, or the port is taken
        raise SystemExit(f"critkit: error: {exc}") from None


def cmd_select(args) -> None:
    """With the run's own evaluation settings (its config.yaml) unless flags change them, so the
    choice, and the outputs it caches under select/, are those `critkit run` with select: true makes."""
    import dataclasses

    import yaml

    from .config import ConfigError
    from .engine.backends import Sampling, make_backend
    from .evaluation.select import select_checkpoints
    from .run import RunConfig, evaluation_backend, evaluation_sampling, validation_tests

    run_dir = Path(args.run_dir)
    flags = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("batch_size", args.batch_size)) if v is not None}
    if (run_dir / "config.yaml").exists():
        raw = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        cfg = RunConfig(**{k: v for k, v in raw.items() if k in RunConfig.__dataclass_fields__})
        cfg = dataclasses.replace(cfg, output_dir=str(run_dir), eval={**cfg.eval, **flags})
        sampling, tests = evaluation_sampling(cfg), validation_tests(cfg)
        load = lambda path: evaluation_backend(cfg, path)  # noqa: E731
    else:
        sampling, tests = Sampling(max_new_tokens=flags.get("max_new_tokens", 512)), []
        load = lambda path: make_backend(path, "transformers", batch_size=flags.get("batch_size", 32))  # noqa: E731
    try:
        choice = select_checkpoints(run_dir, args.method, validation=args.validation, limit=args.limit, sampling=sampling,
                                    load=load, tests=tests)
    except (ValueError, FileNotFoundError) as exc:  # a validation split that leaks; no split or no checkpoint
        raise ConfigError(str(exc)) from None
    for label, c in choice.items():
        scores = ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in c["scores"].items())
        print(f"{label}: best {c['best']} ({scores}); written to {c['path']}")


def cmd_serve(args) -> None:
    from .engine.serve import run_server

    run_server(args.model, args.host, args.port, args.batch_size)


# ------------------------------------------------------------------------------- diagnose


def cmd_diagnose(args) -> None:
    from .diagnostics import run_probe
    from .data.records import RecordError

    options = {k: getattr(args, k) for k in ("max_new_tokens", "nonsense", "seed", "batch_size") if hasattr(args, k)}
    try:
        result = run_probe(args.probe, args.records, args.models, labels=args.labels, limit=args.limit,
                           output=args.output, **options)
    except RecordError:
        raise  # main() reports it with the file and line
    except ValueError as exc:  # labels that do not match the models, a model the attention probe cannot hook
        raise SystemExit(f"critkit: error: {exc}") from None
    print("\n".join(result["summary"]))
    print(f"wrote {' and '.join(result['files'])}")


def _add_diagnose_parser(sub) -> None:
    """`critkit diagnose PROBE`: the CGD appendix C probes, each on several models and one records file."""
    d = sub.add_parser("diagnose", help="why critique training works: entropy, gradnorm, attention, counterfactual probes (CGD appendix C)")
    probes = d.add_subparsers(dest="probe", required=True)
    helps = {
        "entropy": "entropy of the first answer token given question + answer + critique, paired t-test between models (CGD Table 9)",
        "gradnorm": "gradient L2 norm of the loss on the target answer, with and without the critique (CGD Table 10)",
        "attention": "attention shares of generated tokens over problem / student answer / critique, per layer and "
                     "phase; loads the models with eager attention so the weights exist (CGD Figures 9-11)",
        "counterfactual": "accuracy given the factual critique vs a nonsense critique (CGD Table 11)",
    }
    for name, help_text in helps.items():
        p = probes.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--records", "-i", required=True, help="records file with question, response, critique and "
                       "refined (or reference) fields" + (", and gold" if name == "counterfactual" else ""))
        p.add_argument("--models", nargs="+", default=["embedded"], help="models to compare: 'embedded', HF ids, "
                       "checkpoint or LoRA adapter folders")
        p.add_argument("--labels", nargs="+", help="one name per model for tables and plots (default: from the path)")
        p.add_argument("--limit", type=int, help="first N usable records")
        p.add_argument("--output", "-o", default="runs/diagnose", help=f"folder for {name}.json and {name}.png")
        if name in ("attention", "counterfactual"):
            p.add_argument("--max-new-tokens", type=int, default=64 if name == "attention" else 512)
        if name == "counterfactual":
            p.add_argument("--nonsense", default="other", choices=["other", "fixed"],
                           help="other: a different record's critique (seeded per record); fixed: one irrelevant text")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--batch-size", type=int, default=8)
        p.set_defaults(fn=cmd_diagnose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="critkit", description="Critique Fine-Tuning and Critique-Guided Distillation, end to end.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="convert a source file (or the demo task) to records")
    p.add_argument("source", help="a data file, or 'demo' for the generated demo task")
    p.add_argument("--output", "-o", required=True, help="records file (.jsonl/.parquet/folder), or a folder for demo")
    p.add_argument("--format", default="auto", help="source mapping: auto, gsm8k, math, webinstruct-cft, webinstruct-sub, gsm8k-noisy, metamath, numina, acemath, critkit")
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
        p.add_argument("--output", "-o", required=True,
                       help="records .jsonl to write: appended as items finish; rerun the same command to resume")
        _add_job_flags(p)
        if name == "respond":
            _add_model_flags(p, "student", "embedded")
            p.add_argument("--prompt", default="plain", choices=["plain", "cot", "base"],
                           help="plain (default, as the CGD code): the question as the only message; cot: Qwen2.5-Math "
                                "system prompt + question; base: 'Question: ...\\n\\nAnswer:' for base models")
        else:
            _add_model_flags(p, "teacher", "reference")
        if name == "critique":
            p.add_argument("--style", default="cft", choices=["cft", "cgd"], help="which paper's teacher prompt")
            p.add_argument("--reference-critique", default="verdict", choices=["verdict", "answer", "solution"],
                           help="--teacher reference: what its critique holds besides the verdict (the default "
                                "withholds the reference solution, CGD's target: docs/synthesis.md)")
        p.set_defaults(fn=cmd_stage)

    p = sub.add_parser("build", help="training pairs for one method")
    p.add_argument("--method", "-m", required=True, help="one of: sft, sft-verified, sft-teacher, sft-gold, cft, distilled-sft, cgd, cgd-no-critique")
    p.add_argument("--input", "-i", required=True)
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--verified-only", action="store_true",
                   help="keep only records whose teacher verdict agrees with math-verify's grade of the response")
    p.add_argument("--max-length", type=int, help="also count the pairs that training's truncation at this many tokens "
                                                  "(sft.max_length) cuts before their last line, or drops")
    p.add_argument("--model", default="embedded", help="with --max-length: the student whose tokenizer and chat template count")
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("merge", help="join the outputs of `--shard i/n` runs, refusing missing or overlapping shards")
    p.add_argument("shards", nargs="+", help="the shard output files")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--stage", choices=["respond", "critique", "refine", "solve"], help="default: read from the files")
    p.add_argument("--prices", help="YAML file: {model: {prompt: P, completion: C}} per million tokens")
    p.set_defaults(fn=cmd_merge)

    p = sub.add_parser("stats", help="statistics of a synthesized set; writes a PNG of length histograms")
    p.add_argument("file", help="records .jsonl (a stage output)")
    p.add_argument("--png", help="where to write the histograms (default: FILE with .stats.png)")
    p.add_argument("--tokenizer", default="embedded", help="tokenizer for lengths: a model name or path, or 'whitespace'")
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("train", help="fine-tune with TRL SFTTrainer; overrides as key=value (SFTConfig fields)")
    p.add_argument("config", nargs="?", help="YAML config or packaged name")
    p.add_argument("overrides", nargs="*", help="e.g. data=pairs.jsonl learning_rate=1e-5 peft.r=16")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("estimate", help="memory and time a training config needs, before loading any weights")
    p.add_argument("config", nargs="?", help="YAML config or packaged name")
    p.add_argument("overrides", nargs="*", help="as for train, e.g. data=pairs.jsonl per_device_train_batch_size=4")
    p.add_argument("--devices", type=int, help="GPUs the run will use (default: the launch's num_processes, WORLD_SIZE or 1)")
    p.add_argument("--launch", help="accelerate config the training runs under (e.g. accelerate/zero3; 'none': one "
                                    "process); default: a run config's `launch`. It decides the precision scheme")
    p.set_defaults(fn=cmd_estimate)

    p = sub.add_parser("configs", help="list the packaged configs, or print one: critkit configs accelerate/zero3 > zero3.yaml")
    p.add_argument("name", nargs="?", help="e.g. quickstart or accelerate/zero3; without it, list every packaged config and its path")
    p.set_defaults(fn=cmd_configs)

    p = sub.add_parser("eval", help="evaluate a model on benchmarks")
    _add_model_flags(p, "model", "embedded")
    p.add_argument("--benchmarks", nargs="+", help="names (gsm8k, math500, ..., ifeval, mt_bench), spec .yaml files or records .jsonl "
                   "(default: gsm8k, or none with --lm-eval-tasks)")
    p.add_argument("--output", "-o", default="runs/eval")
    p.add_argument("--lm-eval-tasks", help="lm-evaluation-harness tasks, comma-separated (bbh,leaderboard_musr,...), run by "
                   "lm-eval itself on the model (pip install -e '.[lmeval]'); results in OUTPUT/lmeval.json")
    p.add_argument("--lm-eval-include", action="append", help="folder of lm-eval task YAMLs (repeatable)")
    p.add_argument("--lm-eval-local-only", action="store_true", help="index only --lm-eval-include folders, not lm-eval's "
                   "~14,700 own task configs (~35 s)")
    p.add_argument("--lm-eval-num-fewshot", type=int, help="lm-eval: few-shot examples (default: each task's own)")
    p.add_argument("--lm-eval-batch-size", help="lm-eval: batch size (default: auto on a GPU, 8 on CPU)")
    p.add_argument("--lm-eval-chat-template", action="store_true", help="lm-eval: wrap prompts in the model's chat template, "
                   "few-shot examples as turns (as the Open LLM Leaderboard runs instruct models)")
    p.add_argument("--lm-eval-model-args", help='lm-eval: extra model_args as JSON, e.g. \'{"parallelize": true}\'')
    p.add_argument("--limit", type=int, help="first N questions of each benchmark")
    p.add_argument("--mode", default="direct", choices=["direct", "self-critique", "self-critique-2stage"],
                   help="direct answers, or CFT appendix A.4 self-critique (single pass / two stages)")
    p.add_argument("--rounds", type=int, default=8, help="self-critique-2stage: most solve attempts")
    p.add_argument("--stop-at-answer", action="store_true", help="end each answer after its first complete \\boxed{} (faster; "
                   "text after the answer is not kept, so format-drift counts see less)")
    p.add_argument("--kv-cache-gib", type=float, help="transformers backend: memory the key/value cache may take "
                   "(default: what is free on the GPU); fewer rows decode together when the batch would not fit")
    p.add_argument("--max-model-len", type=int, help="vllm backend: context length; a longer prompt fails alone")
    p.add_argument("--gpu-memory-utilization", type=float, help="vllm backend: share of GPU memory it may take (0.9)")
    p.add_argument("--tensor-parallel-size", type=int, help="vllm backend: GPUs per model")
    p.add_argument("--judge", help="mt_bench: the judge model, served by an OpenAI-compatible server at --judge-base-url")
    p.add_argument("--judge-base-url", help="mt_bench: the judge's server, e.g. http://127.0.0.1:8001/v1")
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the judge's API key")
    p.add_argument("--judge-max-new-tokens", type=int, default=2048, help="mt_bench: the judge's longest judgment (FastChat: 2048)")
    _add_request_flags(p, "samples")
    p.set_defaults(fn=cmd_eval, max_new_tokens=1024)

    p = sub.add_parser("run", help="the whole pipeline from a run config; rerun to resume")
    p.add_argument("config", help="YAML config or packaged name (quickstart)")
    p.add_argument("overrides", nargs="*", help="e.g. output_dir=runs/x methods=[sft-gold] learning_rate=1e-4")
    p.add_argument("--seeds", type=int, help="train every method with N training seeds (seed, seed+1, ...); "
                   "the report shows mean ± std over them")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("ablate", help="run the variants of an ablation config and write one table (markdown, CSV, PNG)")
    p.add_argument("config", help="ablation YAML or packaged name (cft-table9-mix, cgd-fig5-ratio, ...)")
    p.add_argument("overrides", nargs="*", help="e.g. base=quickstart output_dir=runs/abl synth.teacher=reference "
                   "eval.limit=50 variants.NAME.KEY=VALUE")
    p.add_argument("--seeds", type=int, help="training seeds per method in every variant")
    p.set_defaults(fn=cmd_ablate)

    p = sub.add_parser("report", help="collect runs into a models x benchmarks table (markdown, CSV, PNG)")
    p.add_argument("runs", nargs="+", help="run folders (each with eval/<model>/<benchmark>/scores.json)")
    p.add_argument("--output", "-o", default="runs/report")
    p.add_argument("--title", default="critkit results")
    p.add_argument("--html-samples", type=int, default=500, help="report.html: rows per set (synthesis, each benchmark) "
                   "it holds, a sample drawn with --seed; `critkit view` shows every row")
    p.add_argument("--seed", type=int, default=0, help="seed of report.html's sample of rows")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("view", help="browse a run's report and every sample row on http://127.0.0.1:PORT/")
    p.add_argument("run_dir", help="a run folder")
    p.add_argument("--port", type=int, default=8765)
    p.set_defaults(fn=cmd_view)

    p = sub.add_parser("select", help="evaluate every saved checkpoint on a validation split and keep the best")
    p.add_argument("run_dir")
    p.add_argument("--method", help="one set's checkpoints, every seed of it (default: every set of the run)")
    p.add_argument("--validation", help="records .jsonl or spec; default: the run's records/validation.jsonl")
    p.add_argument("--limit", type=int)
    p.add_argument("--max-new-tokens", type=int, help="default: the run's eval.max_new_tokens (512 without a config.yaml)")
    p.add_argument("--batch-size", type=int, help="default: the run's eval.batch_size (32 without a config.yaml)")
    p.set_defaults(fn=cmd_select)

    p = sub.add_parser("serve", help="OpenAI-compatible chat server for a local model (loopback, for tests and laptops)")
    p.add_argument("--model", default="embedded")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(fn=cmd_serve)

    _add_diagnose_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a `nargs="*"` positional at the first flag, so in
    # `critkit run quickstart --seeds 3 output_dir=x` the override after the flag is left over.
    if extra and isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from .engine.backends import BackendError
    from .config import ConfigError
    from .synth.jobs import JobError
    from .data.records import RecordError

    try:
        args.fn(args)
    except (RecordError, ConfigError, JobError, BackendError) as exc:
        print(f"critkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Synthesis stages and evaluations keep every finished record or sample in their output; say how to go on.
        print("critkit: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
