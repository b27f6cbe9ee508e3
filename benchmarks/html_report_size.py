"""report.html and `critkit view` on a big run: page size, time to first paint, server memory.

Writes a synthetic run folder shaped like `critkit run`'s (config.yaml, synth/{respond,critique,
refine,solve}.jsonl with --records records, eval/<model>/test/{samples.jsonl,scores.json} for
--models models on --questions questions, results.json, report.md/report.png via tables.py), then:

1. writes report.html with --samples rows per set (several sizes) and reports its size and the
   time to write it;
2. opens it in headless Chromium (tests/browser.py, Debian's /usr/bin/chromium) --repeat times
   and reports first-contentful-paint and the time until the first page of sample rows is built
   (medians), with any console error;
3. starts `critkit view` on the folder (in a child process, so its memory is its own), reports
   the index time and resident memory, the latency of /api/rows pages (a filter, a text search),
   and the live page's first paint in Chromium.

    python benchmarks/html_report_size.py [--records 50000] [--questions 5000] [--models 4] \
        [-o benchmarks/results/html_report_size.json]

Not a test: timings depend on the machine; the figures go to README with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from critkit.data.records import write_jsonl  # noqa: E402
from critkit.report.html import write_html_report  # noqa: E402
from critkit.report.tables import write_report  # noqa: E402

WORDS = ("the of to and a in is that for it as with be on by this are we from at an which so then "
         "number sum value equation solve step answer total each first second since therefore").split()
LATEX = ["$x^2 + 3x - 4 = 0$", "\\frac{a}{b}", "$\\sqrt{2}$", "\\sum_{i=1}^{n} i", "$\\pi r^2$"]


def _text(rng: random.Random, words: int) -> str:
    out = []
    for i in range(words):
        out.append(rng.choice(WORDS) if rng.random() > 0.04 else rng.choice(LATEX))
        if i % 18 == 17:
            out.append("\n")
    return " ".join(out)


def make_run(root: Path, records: int, questions: int, models: int, seed: int = 0) -> dict:
    """A run folder with `records` synthesized records and `models` models' eval samples."""
    rng = random.Random(seed)
    (root / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(f"name: html-bench\noutput_dir: {root}\nseed: {seed}\n")
    rows = []
    for i in range(records):
        gold = str(rng.randint(1, 999))
        said = rng.choice(["right", "wrong", "wrong", "unparsed"] if i % 50 == 0 else ["right", "wrong"])
        graded = rng.choice(["right", "wrong"])
        critique = _text(rng, rng.randint(80, 320)) + f"\nConclusion: {said} [END]"
        refined = _text(rng, rng.randint(60, 240)) + f"\n\\boxed{{{gold}}}"
        rows.append({"id": f"train-{i}", "question": f"Problem {i}: " + _text(rng, rng.randint(20, 80)), "gold": gold,
                     "reference": None, "response": _text(rng, rng.randint(60, 260)) + f" \\boxed{{{rng.randint(1, 999)}}}",
                     "critique": critique, "verdict": said, "refined": refined, "teacher_solution": None,
                     "meta": {"source": "bench", "critique": {"teacher": "bench", "output": critique},
                              "verify": {"graded": graded, "agrees": None if said == "unparsed" else said == graded},
                              "refine": {"teacher": "bench", "output": refined}}})
    write_jsonl(root / "synth" / "solve.jsonl", rows)
    for stage in ("respond", "critique", "refine"):  # the same lines (a real run's earlier files hold fewer fields)
        os.link(root / "synth" / "solve.jsonl", root / "synth" / f"{stage}.jsonl")
    names = ["base", *(f"method{k}" for k in range(1, models))]
    for m, name in enumerate(names):
        samples = []
        for q in range(questions):
            qrng = random.Random(f"{seed}:{q}")
            gold = str(qrng.randint(1, 999))
            right = rng.random() < 0.3 + 0.1 * m
            answer = gold if right else str(rng.randint(1, 999))
            text = _text(rng, rng.randint(40, 200)) + (" Conclusion: wrong [END]" if rng.random() < 0.05 * m else "")
            samples.append({"id": f"test-{q}", "question": f"Test question {q}: " + _text(qrng, qrng.randint(20, 60)),
                            "gold": gold, "responses": [text + f"\n\\boxed{{{answer}}}"], "extracted": [answer],
                            "correct": [right]})
        write_jsonl(root / "eval" / name / "test" / "samples.jsonl", samples)
        n, correct = len(samples), sum(s["correct"][0] for s in samples)
        fmt = sum("[END]" in s["responses"][0] for s in samples) / n
        (root / "eval" / name / "test" / "scores.json").write_text(json.dumps(
            {"benchmark": "test", "model": name, "n": n, "correct": correct, "accuracy": correct / n, "no_answer": 0.0,
             "critique_format": fmt}))
    write_report(root / "eval", names, ["test"], root, title="critkit: html-bench")
    return {"records": records, "questions": questions, "models": names, **data_bytes(root)}


def data_bytes(root: Path) -> dict:
    """Bytes of the synthesis file and of all eval samples (hard links counted once)."""
    return {"synth_jsonl_bytes": (root / "synth" / "solve.jsonl").stat().st_size,
            "eval_jsonl_bytes": sum(p.stat().st_size for p in root.glob("eval/*/*/samples.jsonl"))}


def page_timing(url: str, repeat: int, live: bool = False) -> dict:
    from browser import Browser

    paints, built, errors = [], [], []
    for _ in range(repeat):
        with Browser() as b:
            b.open(url)
            if live:
                b.wait_for("document.body.dataset.loading === '0'")
            rows = b.evaluate("document.querySelectorAll('#samples tbody tr.sample').length")
            fcp = b.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime")
            done = b.evaluate("Number(document.body.dataset.firstRowsMs) || null")
            paints.append(fcp)
            built.append(done)
            errors += b.errors
    med = lambda xs: statistics.median(x for x in xs if x is not None) if any(x is not None for x in xs) else None  # noqa: E731
    return {"first_contentful_paint_ms": med(paints), "rows_built_ms": med(built), "runs": repeat,
            "rows_shown": rows, "console_errors": errors}


def _get(url: str) -> tuple[float, dict]:
    start = time.perf_counter()
    with urllib.request.urlopen(url) as resp:
        body = json.loads(resp.read())
    return 1000 * (time.perf_counter() - start), body


def view_figures(run: Path, repeat: int) -> dict:
    """`critkit view` in a child process: index time, memory, API latencies, live first paint."""
    port = 8900 + os.getpid() % 500
    proc = subprocess.Popen([sys.executable, "-m", "critkit", "view", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = time.perf_counter()
    try:
        line = proc.stdout.readline()  # printed once the index is built and the port is bound
        ready_s = time.perf_counter() - start
        ticks = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ready_cpu_s = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime: load-independent
        rss = next((int(x.split()[1]) for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                    if x.startswith("VmRSS:")), None)
        base = f"http://127.0.0.1:{port}"
        timings = {}
        for name, query in [("first page", "offset=0&limit=50"), ("page 400", "offset=20000&limit=50"),
                            ("filter unparsed", "flags=unparsed&limit=50"),
                            ("filter lost vs base", "model=method1&outcome=lost&limit=50"),
                            ("search, 50 hits", "q=conclusion:%20right&limit=50"),
                            ("search, no hit (reads every row)", "q=zzzz-not-there&limit=50")]:
            ms = []
            for _ in range(3):  # a text search is cached after its first scan: the first call is reported apart
                t, body = _get(f"{base}/api/rows?{query}")
                ms.append(t)
            timings[name] = {"first_ms": ms[0], "again_ms_median": statistics.median(ms[1:]), "total": body["total"],
                             "rows": len(body["rows"])}
        rss_after = next((int(x.split()[1]) for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                          if x.startswith("VmRSS:")), None)
        live = page_timing(base + "/", repeat, live=True)
        return {"started": line.strip(), "ready_s": ready_s, "ready_cpu_s": ready_cpu_s, "rss_mb_after_index": rss and rss / 1024,
                "rss_mb_after_queries": rss_after and rss_after / 1024, "api": timings, "live_page": live}
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--questions", type=int, default=5_000)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--samples", default="100,500,2000", help="rows per set in report.html, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="page loads per measurement (median)")
    ap.add_argument("--run-dir", default="/tmp/critkit-html-bench/run")
    ap.add_argument("--output", "-o", help="write the figures as JSON here")
    args = ap.parse_args()

    run = Path(args.run_dir)
    if not (run / "results.json").exists():
        start = time.perf_counter()
        shape = make_run(run, args.records, args.questions, args.models)
        shape["made_in_s"] = time.perf_counter() - start
    else:
        shape = {"reused": str(run), **data_bytes(run)}
    print(json.dumps(shape), flush=True)
    # Timings on a shared machine stretch with its load; the CPU seconds do not.
    figures: dict = {"machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": os.getloadavg()[0]},
                     "command": " ".join(sys.argv), "run": shape, "pages": {}}
    have_chromium = Path("/usr/bin/chromium").exists()
    for n in map(int, args.samples.split(",")):
        out = run.parent / f"report-{n}.html"
        start, cpu = time.perf_counter(), time.process_time()
        write_html_report(run, out, samples=n)
        entry = {"bytes": out.stat().st_size, "write_s": time.perf_counter() - start, "write_cpu_s": time.process_time() - cpu}
        if have_chromium:
            entry["browser"] = page_timing(out.resolve().as_uri(), args.repeat)
        figures["pages"][n] = entry
        print(n, json.dumps(entry), flush=True)
    figures["view"] = view_figures(run, args.repeat) if have_chromium else "no /usr/bin/chromium"
    print(json.dumps(figures["view"], indent=1), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
