"""report.html: one self-contained page per run folder, opened from disk with no network.

It shows the run's accuracy table with 95% intervals and the paired difference from the base
model, the plots the run already drew (report.png, loss.png, inlined as base64), the synthesis
statistics, and a per-sample browser (question, student answer, teacher critique and verdict with
the verifier's grade, refinement, and every model's output side by side) with filters. The page
holds a bounded, seeded sample of the rows (`samples` per set), so a 50K-record run stays a few MB;
`critkit view RUN_DIR` (view.py) serves the same page with every row, paged from the files.

Everything from the run is escaped: the tables through html.escape, the rows as JSON inside a
<script type="application/json"> with <, > and & written as \\u escapes (so no text can close the
script element), and the page's script builds the browser with textContent, never innerHTML. A
Content-Security-Policy lets the page load nothing but its own inline script, styles and images.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from importlib import resources
from pathlib import Path

from ..data.records import atomic_path
from .claims import CLAIM_HEADERS, CLAIMS_NOTE, claim_rows
from .samples import BASE, SYNTHESIS, FLAGS, RunSamples
from .summary import SynthStats, accuracy_table, build_info, read_json, stage_counts, step_times, synth_stats
from .tables import glance, glance_lines

__all__ = ["write_html_report", "render_page", "script_json", "DEFAULT_SAMPLES"]

DEFAULT_SAMPLES = 500  # rows per set (synthesis, each benchmark) that report.html holds
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_RAW_BYTES = 256 * 1024  # a JSON file shown raw; bigger ones are named, not inlined
MAX_PROBLEMS = 200
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")
CSP_LIVE = CSP + "; connect-src 'self'"  # view.py's page fetches its rows from the server that sent it

e = html.escape


def write_html_report(run_dir: str | Path, out: str | Path | None = None, samples: int = DEFAULT_SAMPLES,
                      seed: int = 0, title: str | None = None) -> Path:
    """Write RUN_DIR/report.html (or `out`); returns its path."""
    root = Path(run_dir)
    out = Path(out) if out else root / "report.html"
    page = render_page(root, samples=samples, seed=seed, title=title)
    with atomic_path(out) as tmp:  # a reader never sees half a page
        tmp.write_text(page, encoding="utf-8")
    return out


def render_page(run_dir: str | Path, samples: int = DEFAULT_SAMPLES, seed: int = 0, title: str | None = None,
                live: bool = False, index: RunSamples | None = None, stats: SynthStats | None = None) -> str:
    """The page as a string: with a seeded sample of rows, or (live) for view.py's /api/rows.
    `index` and the `stats` it fed as it indexed may be given (view.py keeps the index)."""
    root = Path(run_dir)
    problems: list[str] = []
    results = read_json(root / "results.json", problems)
    results = results if isinstance(results, dict) else {}
    if index is None:
        stats = SynthStats()
        index = RunSamples(root, results, on_synth=stats.add)  # one pass over the synthesis file for both
    problems += index.problems
    counts = index.counts()
    title = title or _run_title(root)
    data: dict = {"mode": "live" if live else "static", "sets": index.sets, "models": index.models, "base": BASE,
                  "counts": counts, "flags": list(FLAGS), "synthesis": SYNTHESIS}
    if live:
        holds = (f"Served by <code>critkit view</code>: every row of the run ({_n(sum(counts.values()))}), read from "
                 "the files a page at a time.")
    else:
        rows = index.sample(samples, seed)
        held = {s: sum(1 for r in rows if r["set"] == s) for s in index.sets}
        data.update(rows=rows, held=held)
        holds = _holds(root, counts, held, samples, seed)
    body = [
        f"<header><h1>{e(title)}</h1><p class=muted>{e(str(root.resolve()))} · page written "
        f"{e(time.strftime('%Y-%m-%d %H:%M'))}</p><p>{holds}</p>"
        "<nav><a href=#results>Results</a> <a href=#synthesis>Synthesis</a> <a href=#browser>Samples</a> "
        "<a href=#files>Files</a></nav></header>",
        _results_section(root, index, results, problems),
        _synthesis_section(root, index, stats, problems),
        _browser_section(),
        _files_section(root, results, problems),
    ]
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta http-equiv=Content-Security-Policy content=\"{CSP_LIVE if live else CSP}\">"
            f"<meta name=viewport content=\"width=device-width, initial-scale=1\"><title>{e(title)}</title>"
            f"<style>{_asset('report.css')}</style></head><body>\n" + "\n".join(body) +
            f"\n<script type=application/json id=critkit-data>{script_json(data)}</script>"
            f"\n<script>{_asset('report.js')}</script>\n</body></html>\n")


def _holds(root: Path, counts: dict, held: dict, samples: int, seed: int) -> str:
    """What the page holds of each set, in words."""
    if not counts:
        return "No per-sample outputs found (no synth/*.jsonl, no eval/*/*/samples.jsonl)."
    text = "This page holds " + "; ".join(f"{e(s)}: {_n(held[s])} of {_n(n)} rows" for s, n in counts.items())
    if all(held[s] == n for s, n in counts.items()):
        return text + " (every row)."
    return (text + f" (a sample drawn with seed {seed}, at most {_n(samples)} rows per set). "
            f"<code>critkit view {e(str(root))}</code> browses every row.")


def script_json(value) -> str:
    """JSON that is safe inside <script>: no '<' (so no '</script>'), '>' or '&' appears raw, and
    NaN or infinities (which JSON.parse rejects) become null."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(value), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _asset(name: str) -> str:
    return resources.files("critkit.report").joinpath("assets", name).read_text(encoding="utf-8")


def _run_title(root: Path) -> str:
    import yaml

    try:
        config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        config = None
    name = config.get("name") if isinstance(config, dict) else None
    return f"critkit: {name or root.name}"


# ------------------------------------------------------------------------------------- pieces


def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else "–"


def _count(x) -> str:
    return f"{int(x):,}" if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else "?"


def _pct(x, digits: int = 1) -> str:
    return "–" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='data {cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _raw(value, summary: str) -> str:
    return f"<details class=raw><summary>{e(summary)}</summary><pre>{e(json.dumps(value, indent=1, ensure_ascii=False, default=str))}</pre></details>"


def _image(path: Path, caption: str, problems: list[str]) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(f"{path}: {exc}; not shown")
        return ""
    if len(data) > MAX_IMAGE_BYTES:
        return f"<p class=muted>{e(path.name)} is {len(data) // 1024} KB: not inlined, open it from the run folder.</p>"
    return (f"<figure><img alt=\"{e(caption)}\" src=\"data:image/png;base64,{base64.b64encode(data).decode()}\">"
            f"<figcaption>{e(caption)}</figcaption></figure>")


def _histogram(values: list[int], label: str, bins: int = 24) -> str:
    """An inline SVG histogram of lengths (values sorted), with the median marked."""
    if not values:
        return ""
    lo, hi = values[0], values[-1]
    width = max(1, math.ceil((hi - lo + 1) / bins))
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, (v - lo) // width)] += 1
    top, w, h = max(counts), 240, 40
    bars = "".join(f"<rect x={i * w / bins:.1f} y={h - h * c / top:.1f} width={w / bins - 1:.1f} height={h * c / top:.1f}>"
                   f"<title>{lo + i * width}–{lo + (i + 1) * width - 1}: {c}</title></rect>" for i, c in enumerate(counts) if c)
    median = values[len(values) // 2]
    x = w * (median - lo) / (width * bins)
    return (f"<svg class=hist viewBox='0 0 {w} {h + 14}' role=img aria-label='{e(label)} lengths'>{bars}"
            f"<line x1={x:.1f} x2={x:.1f} y1=0 y2={h} class=median /><text x=0 y={h + 12}>{lo}</text>"
            f"<text x={w} y={h + 12} text-anchor=end>{hi}</text></svg>")


# ------------------------------------------------------------------------------------ sections


def _results_section(root: Path, index: RunSamples, results: dict, problems: list[str]) -> str:
    table = accuracy_table(index, problems)
    out = ["<section id=results><h2>Results</h2>"]
    if table:
        benches = index.benchmarks
        # A checkpoint chosen on validation (select: true) is named in results.json.
        chosen = {m: r["checkpoint"] for m, r in results.items() if isinstance(r, dict) and isinstance(r.get("checkpoint"), dict)}
        headers = ["model", *(["checkpoint"] if chosen else []), *(f"{e(b)} accuracy %" for b in benches),
                   *(f"Δ {e(b)} vs {BASE}" for b in benches), "critique-format", "no answer", "scores"]
        rows = []
        for model in index.models:
            cells = table.get(model)
            if not cells:
                continue
            accs, deltas = [], []
            for b in benches:
                c = cells.get(b)
                failed = f", {_count(c['failed'])} failed" if c and c.get("failed") else ""
                if c and "score" in c["scores"]:  # MT-Bench: a mean judge rating (1-10), not an accuracy
                    score = c["scores"]["score"]
                    accs.append(f"{'–' if not isinstance(score, (int, float)) else f'{score:.2f}'}/10 <span class=muted>"
                                f"({_count(c['scores'].get('ratings'))} ratings{failed})</span>")
                else:
                    accs.append("–" if not c else f"{_pct(c['accuracy'])} <span class=muted>± {_pct(c.get('ci95'))} "
                                f"({_count(c['correct'])}/{_count(c['answered'])} answered{failed})</span>")
                d = (c or {}).get("delta")
                deltas.append("–" if not d else f"<span class='{'sig' if d['significant'] else ''}'>"
                              f"{100 * d['difference']:+.1f} ± {_pct(d['ci95_half_width'])}</span>"
                              f" <span class=muted>(n={d['n']})</span>")
            shares = lambda key: [s["scores"].get(key) for s in cells.values() if isinstance(s["scores"].get(key), (int, float))]  # noqa: E731
            avg = lambda xs: f"{_pct(sum(xs) / len(xs), 0)}%" if xs else "–"  # noqa: E731
            checkpoint = [e(str(chosen.get(model, {}).get("name", "–")))] if chosen else []
            rows.append([f"<b>{e(model)}</b>", *checkpoint, *accs, *deltas, avg(shares("critique_format")), avg(shares("no_answer")),
                         _raw({b: c["scores"] for b, c in cells.items()}, "scores.json")])
        out.append(_table(headers, rows, "results"))
        glances = {m: glance({b: c["scores"] for b, c in table[m].items()}) for m in index.models if table.get(m)}
        if glance_lines(glances):  # only when a general benchmark (IFEval, MT-Bench) was evaluated, as in report.md
            mt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
            out.append("<h3 id=glance>Drift at a glance</h3>" + _table(
                ["model", "math avg %", "IFEval %", "MT-Bench", "critique-format"],
                [[f"<b>{e(m)}</b>", _pct(g["math_avg"]), _pct(g["ifeval"]), mt(g["mt_bench"]),
                  "–" if g["critique_format"] is None else f"{_pct(g['critique_format'], 0)}%"] for m, g in glances.items()]))
            out.append("<p class=note>Math: mean accuracy over the math benchmarks; IFEval: prompt-level strict accuracy; "
                       "MT-Bench: mean judge rating (1-10); critique-format: share of outputs that look like critiques.</p>")
        out.append("<p class=note>Accuracy: mean over each question's samples (over the answered ones: a failed request "
                   "is not a wrong answer), ± the half-width of its 95% interval "
                   "(normal approximation, as report.png draws it). Δ: paired difference from "
                   f"<code>{BASE}</code> on the same questions with its 95% interval, as in report.md and results.json; "
                   "<span class=sig>bold</span> when the interval excludes 0.</p>")
    else:
        out.append("<p class=muted>No evaluation results (eval/&lt;model&gt;/&lt;benchmark&gt;/scores.json) yet.</p>")
    seeded = {name: entry for name, entry in results.items() if isinstance(entry, dict) and isinstance(entry.get("seeds"), dict)}
    if seeded:
        benches = list(dict.fromkeys(b for entry in seeded.values() for b in (entry.get("mean") or {})))
        pm = lambda m, s: "–" if m is None else f"{_pct(m)} ± {_pct(s or 0.0)}"  # noqa: E731
        rows = [[e(name), str(len(entry["seeds"])),
                 *(pm((entry.get("mean") or {}).get(b), (entry.get("std") or {}).get(b)) for b in benches),
                 *(pm((entry.get("delta_mean") or {}).get(b), (entry.get("delta_std") or {}).get(b)) for b in benches)]
                for name, entry in seeded.items()]
        out.append("<h3>Over training seeds</h3>" + _table(["set", "seeds", *(f"{e(b)} %" for b in benches),
                                                              *(f"Δ {e(b)}" for b in benches)], rows))
        out.append("<p class=note>Mean ± sample standard deviation over the seeds that finished (results.json).</p>")
    claims = claim_rows(read_json(root / "claims.json", problems), problems)  # the papers' claims (claims.py)
    if claims:
        out.append("<h3 id=claims>Claims</h3>" + _table([e(h) for h in CLAIM_HEADERS], [[e(c) for c in row] for row in claims])
                   + f"<p class=note>{e(CLAIMS_NOTE)}</p>")
    # The run's own plots: report.png (accuracy), loss.png, and select/accuracy.png (checkpoints) when there.
    pngs = sorted(root.glob("*.png")) + sorted(root.glob("select/*.png"))
    figures = [_image(p, str(p.relative_to(root)), problems) for p in pngs]
    if figures:
        out.append("<div class=figures>" + "".join(figures) + "</div>")
    steps = step_times(root, problems)
    if steps:
        out.append("<details><summary>Step times (steps.jsonl)</summary>" + _table(
            ["step", "seconds", "runs"], [[e(s), f"{sec:.1f}", str(k)] for s, sec, k in steps]) + "</details>")
    return "".join(out) + "</section>"


def _synthesis_section(root: Path, index: RunSamples, stats: SynthStats | None, problems: list[str]) -> str:
    out = ["<section id=synthesis><h2>Synthesis</h2>"]
    files = stage_counts(root)
    if not files:
        return out[0] + "<p class=muted>No synthesis files (synth/*.jsonl).</p></section>"
    out.append("<p>" + " → ".join(f"<code>{e(name)}</code> {_n(k)} lines" for name, k in files) + "</p>")
    s = stats.result() if stats else synth_stats(index.synth_path, problems)
    v, check = s["verdicts"], s["verify"]
    said = sum(v.values())
    rows = [["records", _n(s["records"])]]
    if s["status"]:
        rows.append(["job status", e(", ".join(f"{k} {n}" for k, n in sorted(s["status"].items())))])
    if said:
        rows.append(["teacher verdicts", f"right {_n(v.get('right', 0))}, wrong {_n(v.get('wrong', 0))}, unparsed "
                     f"{_n(v.get('unparsed', 0))} ({_pct(v.get('unparsed', 0) / said)}% unparsed); right share "
                     f"{_pct(s['right_share'])}%"])
        rows.append(["teacher vs verifier (math-verify)", f"{_pct(check['agreement'])}% agree: {_n(check.get('agrees', 0))} agree, "
                     f"{_n(check.get('disagrees', 0))} disagree, {_n(check.get('unverifiable (no gold)', 0))} without gold, "
                     f"{_n(check.get('unverifiable (verdict unparsed)', 0))} with no verdict"])
    labels = s["labels"]
    if labels:
        rows.append(["teacher vs human labels", f"{_pct(labels.get('agreement_of_parsed'))}% of {_n(labels.get('parsed'))} parsed "
                     f"verdicts agree; {_pct(labels.get('agreement_of_all'))}% of all {_n(labels.get('labelled'))}"])
    out.append(_table(["", ""], rows, "kv"))
    if s["lengths"]:
        heads = ["field", "n", "mean", "p10", "p50", "p90", "p99", "max", "histogram"]
        out.append("<h3>Lengths (whitespace words)</h3>" + _table(heads, [
            [e(name), _n(d["n"]), f"{d['mean']:.0f}", *(f"{d[f'p{q}']:.0f}" for q in (10, 50, 90, 99)), _n(d["max"]),
             _histogram(s["_raw_lengths"][name], name)] for name, d in s["lengths"].items()]))
        out.append(f"<p class=note>Over every record of <code>{e(str(index.synth_path.relative_to(root)))}</code>; "
                   "<code>critkit stats FILE</code> gives the same in model tokens.</p>")
    builds = build_info(root, problems)
    if builds:
        rows = []
        for name, info in builds:
            pairs = info.get("pairs")
            skipped = info.get("skipped") if isinstance(info.get("skipped"), dict) else {}
            notes = [str(n) for n in info.get("notes") or []] + ([str(info["shortfall"])] if info.get("shortfall") else [])
            rows.append([e(name), e(" + ".join(map(str, pairs)) if isinstance(pairs, list) else str(pairs)),
                         e(", ".join(f"{k}: {n}" for k, n in skipped.items()) or "none"), e("; ".join(notes))])
        out.append("<h3>Training sets</h3>" + _table(["set", "pairs", "skipped", "notes"], rows))
    return "".join(out) + "</section>"


def _browser_section() -> str:
    flags = {"disagree": "teacher ≠ verifier", "unparsed": "verdict unparsed", "critique_format": "critique-format output",
             "failed": "failed"}
    boxes = "".join(f"<label><input type=checkbox class=flag value={k}> {e(label)}</label>" for k, label in flags.items())
    return ("<section id=browser><h2>Samples</h2><div class=filters>"
            "<label>set <select id=f-set><option value=''>all</option></select></label>"
            "<label>model <select id=f-model><option value=''>all</option></select></label>"
            "<label title='right: at least half of the samples graded correct; gained / lost: a higher / lower "
            f"fraction correct than {BASE} on the same question'>outcome <select id=f-outcome><option value=''>any</option>"
            "<option value=right>right</option><option value=wrong>wrong</option>"
            f"<option value=gained>gained vs {BASE}</option><option value=lost>lost vs {BASE}</option></select></label>"
            f"{boxes}<label>search <input id=f-q type=search placeholder='text in question, answers, critique'></label>"
            "<button id=f-reset type=button>reset</button></div>"
            "<p id=status class=muted>loading…</p><div class=scroll><table id=samples><thead></thead><tbody></tbody></table></div>"
            "<div class=pager><button id=prev type=button>← previous</button> <span id=pageinfo></span> "
            "<button id=next type=button>next →</button></div></section>")


def _files_section(root: Path, results: dict, problems: list[str]) -> str:
    out = ["<section id=files><h2>Files</h2>"]
    config = root / "config.yaml"
    if config.is_file():
        out.append(f"<details class=raw><summary>config.yaml</summary><pre>{e(config.read_text(encoding='utf-8', errors='replace'))}</pre></details>")
    for path in sorted(root.glob("*.json")):
        if path.stat().st_size > MAX_RAW_BYTES:
            out.append(f"<p class=muted>{e(path.name)}: {path.stat().st_size // 1024} KB, not inlined.</p>")
            continue
        value = results if path.name == "results.json" and results else read_json(path, problems)
        if value is not None:
            out.append(_raw(value, path.name))
    if problems:
        shown = problems[:MAX_PROBLEMS]
        more = f"<li>… and {len(problems) - len(shown)} more</li>" if len(problems) > len(shown) else ""
        out.append(f"<h3 id=problems>Problems reading the run ({len(problems)})</h3><ul class=problems>"
                   + "".join(f"<li>{e(p)}</li>" for p in shown) + more + "</ul>")
    return "".join(out) + "</section>"
