"""Evaluation throughput: critkit's generation against lm-evaluation-harness's HF backend.

Same model (the embedded SmolLM2-135M-Instruct, fp32, CPU), same GSM8K test questions, same
prompt text (Qwen2.5-Math cot prompt through the chat template), greedy, the same limit of new
tokens, both run in this one invocation, one after the other. Both outputs are graded with
critkit's grader so accuracy can be compared too. Model loading is not timed.

    make bench-eval          # creates .venv-lmeval with lm-eval 0.4.13 and runs this
    python benchmarks/eval_throughput.py --lmeval-python .venv-lmeval/bin/python --questions 64
    python benchmarks/eval_throughput.py --only critkit ...   # one engine, e.g. for repeated whole-process timing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from critkit.engine.backends import Sampling, TransformersBackend
from critkit.evaluation.benchmarks import BENCHMARKS, load_benchmark
from critkit.grading import grade
from critkit.training.methods import answer_prompt
from critkit.engine.models import resolve_model


def _row(name: str, outputs: list[str], seconds: float, golds: list[str], tokenizer) -> dict:
    tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
    correct = sum(grade(o, g) for o, g in zip(outputs, golds))
    return {"engine": name, "seconds": round(seconds, 1), "questions_per_minute": round(60 * len(outputs) / seconds, 1),
            "generated_tokens": tokens, "tokens_per_second": round(tokens / seconds, 1), "correct": correct, "n": len(outputs)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lmeval-python", default=".venv-lmeval/bin/python")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--lmeval-batch-size", default="16",
                        help="comma-separated: lm-eval runs once per batch size; the ratio is against its fastest")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--only", choices=["lmeval", "critkit"],
                        help="run one engine (critkit: one pass, no stop-at-answer), to time each as a whole process")
    parser.add_argument("-o", "--output", default="eval_throughput.json")
    args = parser.parse_args()

    problems, _ = load_benchmark(BENCHMARKS["gsm8k"], limit=args.questions)
    golds = [p.gold for p in problems]
    backend = TransformersBackend("embedded", batch_size=args.batch_size, progress=False)
    prompts = [backend.render(answer_prompt(p.question)) for p in problems]
    rows = []

    for lm_batch in [] if args.only == "critkit" else [int(b) for b in str(args.lmeval_batch_size).split(",")]:
        job = {"model": resolve_model("embedded"), "prompts": prompts, "max_new_tokens": args.max_new_tokens,
               "batch_size": lm_batch, "until": ["<|im_end|>"]}
        done = subprocess.run([args.lmeval_python, "benchmarks/_lmeval_generate.py"], input=json.dumps(job),
                              capture_output=True, text=True, check=True)
        result = json.loads(done.stdout)
        rows.append(_row(f"lm-eval 0.4.13 hf (batch {lm_batch})", result["outputs"], result["seconds"], golds, backend.tokenizer))
        print(json.dumps(rows[-1]), flush=True)
    peers = list(rows)

    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    for stop in {None: (False, True), "critkit": (False,), "lmeval": ()}[args.only]:
        backend.stop_at_answer = stop
        start = time.perf_counter()
        outs = backend.generate([answer_prompt(p.question) for p in problems], sampling)
        label = f"critkit (batch {args.batch_size}{', stop at answer' if stop else ''})"
        rows.append(_row(label, [o[0] for o in outs], time.perf_counter() - start, golds, backend.tokenizer))
        print(json.dumps(rows[-1]), flush=True)

    base = max(peers or rows, key=lambda r: r["questions_per_minute"])  # the peer at its fastest batch size
    print(f"| engine | seconds | questions/min | generated tok/s | accuracy | questions/min vs fastest lm-eval |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['seconds']} | {r['questions_per_minute']} | {r['tokens_per_second']} | "
              f"{r['correct']}/{r['n']} | {r['questions_per_minute'] / base['questions_per_minute']:.2f}x |")
    with open(args.output, "w") as fh:
        json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
