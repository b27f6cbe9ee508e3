"""The manual cannot silently rot: every `critkit ...` command line in README.md and docs/*.md
must name a subcommand that exists, use only flags that subcommand's parser accepts (spelled out
in full: argparse would also take an abbreviation, which breaks as soon as another flag shares the
prefix), and name packaged configs that ship. Tables of configs are checked the same way.

Commands are read from fenced code blocks and from inline code spans that start with `critkit`;
a block's lines joined by a trailing backslash are one command. Words in capitals (CONFIG, NAME,
RUN_DIR) are placeholders. The checker is first run on a page with known mistakes, so a checker
that finds nothing is caught.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from critkit.cli import build_parser
from critkit.config import packaged_configs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Subcommands whose first positional is a run config (packaged name or a file) or an ablation config.
CONFIG_POSITIONAL = {"run": "", "train": "", "estimate": "", "ablate": "ablations", "configs": None}
SHELL_BREAKS = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "&"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands_in(text: str) -> list[str]:
    """Every `critkit ...` command of a markdown page (from the word after `critkit` on)."""
    found = []
    for language, block in re.findall(r"```([^\n]*)\n(.*?)```", text, re.S):
        if language.strip() in ("python", "yaml", "json"):
            continue  # not shell: `import critkit` is no command
        found += block.replace("\\\n", " ").splitlines()
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [span for span in re.findall(r"`([^`\n]+)`", outside) if span.startswith("critkit ")]
    commands = []
    for line in found:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote in prose: not a command line
            continue
        for i, token in enumerate(tokens):
            # `critkit ...`, `.venv/bin/critkit ...`, `python -m critkit ...`, `accelerate launch ... -m critkit ...`
            if (token == "critkit" and (i == 0 or tokens[i - 1] == "-m")) or token.endswith("/critkit"):
                rest = []
                for t in tokens[i + 1:]:
                    if t in SHELL_BREAKS:
                        break
                    rest.append(t)
                commands.append(shlex.join(rest))
                break
    return commands


def _placeholder(word: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", word)) or word in ("...", "…")


def check_command(command: str, parser: argparse.ArgumentParser, configs: dict[str, Path]) -> list[str]:
    """What is wrong with one command line (empty when nothing is)."""
    tokens = [t for t in shlex.split(command) if t not in ("[", "]")]
    tokens = [t.strip("[]") for t in tokens]
    if not tokens:
        return ["`critkit` without a subcommand"]
    problems = []
    name, args = tokens[0], tokens[1:]
    subs = _subparsers(parser)
    if _placeholder(name):
        return []
    if name not in subs:
        return [f"unknown subcommand {name!r} (known: {', '.join(subs)})"]
    sub = subs[name]
    nested = _subparsers(sub)
    if nested and args and not args[0].startswith("-") and not _placeholder(args[0]):
        if args[0] not in nested:
            return [f"critkit {name}: unknown {name} subcommand {args[0]!r} (known: {', '.join(nested)})"]
        sub, args = nested[args[0]], args[1:]
    for token in args:
        if token.startswith("-") and not re.fullmatch(r"-?\d[\d.e-]*", token):
            flag = token.split("=", 1)[0]
            if flag not in sub._option_string_actions:
                problems.append(f"critkit {name}: no flag {flag}")
    if name in CONFIG_POSITIONAL:
        positional = next((t for t in args if not t.startswith("-") and "=" not in t), None)
        if positional and not _placeholder(positional) and not positional.endswith((".yaml", ".yml")):
            folder = CONFIG_POSITIONAL[name]
            key = positional if folder is None or "/" in positional else (f"{folder}/{positional}" if folder else positional)
            if key not in configs:
                problems.append(f"critkit {name}: no packaged config {positional!r}")
    return problems


def table_configs(text: str) -> list[str]:
    """Config names in the first column of tables headed `config` or `ablation config`."""
    names, in_table = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.strip().startswith("|") else None
        if cells is None:
            in_table = False
        elif cells[0] in ("config", "ablation config"):
            in_table = cells[0]
        elif in_table and not set(cells[0]) <= set("-: "):
            names += [("ablations/" if in_table == "ablation config" else "") + n for n in re.findall(r"`([^`]+)`", cells[0])]
    return names


def check_page(text: str, parser, configs) -> list[str]:
    problems = [f"{c!r}: {p}" for c in commands_in(text) for p in check_command(c, parser, configs)]
    problems += [f"table names {n!r}, which is no packaged config" for n in table_configs(text) if n not in configs]
    return problems


# ---------------------------------------------------------------------------- the checker can fail


BROKEN_PAGE = """
```bash
critkit eval --model embedded --benchmark gsm8k     # --benchmarks is the flag
critkit evaluate --model x
critkit run no-such-config \\
    --seeds 3
critkit diagnose entropy --records r.jsonl --no-such-flag 1
critkit ablate cft-table99-mix
```
Inline: `critkit train nonexistent-recipe lr=1`.

| config | what |
| --- | --- |
| `accelerate/zero9` | a launch config that does not ship |
"""


def test_the_checker_finds_every_kind_of_mistake():
    problems = check_page(BROKEN_PAGE, build_parser(), packaged_configs())
    text = "\n".join(problems)
    assert "no flag --benchmark" in text  # an abbreviation argparse would accept is still refused
    assert "unknown subcommand 'evaluate'" in text
    assert "no packaged config 'no-such-config'" in text
    assert "no flag --no-such-flag" in text
    assert "no packaged config 'cft-table99-mix'" in text
    assert "no packaged config 'nonexistent-recipe'" in text
    assert "accelerate/zero9" in text
    assert len(problems) == 7, problems


def test_the_checker_passes_good_commands():
    good = """```bash
critkit eval --model embedded --benchmarks gsm8k -o runs/e   # comment
critkit run quickstart --seeds 3 output_dir=runs/x
accelerate launch --config_file zero3.yaml -m critkit train cft-7b \\
    model=Qwen/Qwen2.5-Math-7B data=runs/x/cft.jsonl
critkit ablate cgd-table4-lr base=quickstart
critkit configs accelerate/zero3 > zero3.yaml
critkit diagnose counterfactual --records r.jsonl --nonsense fixed
```
`critkit ablate NAME [key=value ...]`, `critkit estimate CONFIG [--devices N]`."""
    assert check_page(good, build_parser(), packaged_configs()) == []
    assert len(commands_in(good)) == 8


# ------------------------------------------------------------------------------------ the pages


def test_the_manual_exists():
    assert (ROOT / "docs" / "README.md").exists() and len(PAGES) >= 9
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 160  # two screens, about


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_the_docs_parses(page):
    text = page.read_text(encoding="utf-8")
    assert check_page(text, build_parser(), packaged_configs()) == []


def test_the_docs_are_read_at_all():
    # Guards the extraction itself: the pages hold many commands, and the README's links resolve.
    total = sum(len(commands_in(p.read_text(encoding="utf-8"))) for p in PAGES)
    assert total >= 40, total
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
