"""YAML configs: loading (with YAML 1.2 floats) and `key=value` command-line overrides."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

__all__ = ["ConfigError", "load_yaml", "apply_overrides", "find_config", "packaged_configs", "packaged_config_text"]


class ConfigError(ValueError):
    """A bad config value, named by its field, found before any model is loaded."""


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-5` is a string; every ML config means a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def apply_overrides(raw: dict, overrides: list[str], top: set[str], default: tuple[str, ...]) -> dict:
    """Apply `key=value` / `a.b.key=value` overrides to a config mapping (values parsed as YAML).

    A key whose first part is not a top-level field (`top`) goes under `default`: in a training
    config `learning_rate=1e-5` means `sft.learning_rate`, as TRL users would write it.
    """
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        parts = key.lstrip("-").replace("-", "_").split(".")
        if parts[0] not in top:
            parts = [*default, *parts]
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = load_yaml(value)
    return raw


def packaged_configs() -> dict[str, Path]:
    """Config files shipped with critkit, by the name `critkit configs NAME` takes.

    Run configs (`quickstart`, `cft-7b`, ...; `critkit run NAME`, `critkit train NAME`) first, then
    accelerate launch configs (`accelerate/ddp`, `accelerate/fsdp`, `accelerate/zero3`, ...).
    """
    from importlib import resources

    root = Path(str(resources.files("critkit").joinpath("configs")))
    files = sorted(root.rglob("*.yaml"), key=lambda p: (len(p.relative_to(root).parts), p.as_posix()))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in files}


def find_config(name: str, folder: str = "", relative_to: Path | None = None) -> Path:
    """A config file: a path (as given, or next to `relative_to`), or a packaged config's name
    within `folder` (e.g. "ablations"; "" for the run configs)."""
    for candidate in (Path(name), *((relative_to / name,) if relative_to else ())):
        if candidate.is_file():
            return candidate
    packaged = packaged_configs()
    prefix = f"{folder}/" if folder else ""
    found = packaged.get(prefix + name.removesuffix(".yaml"))
    if found is not None:
        return found
    known = sorted(n.removeprefix(prefix) for n in packaged if n.startswith(prefix) and "/" not in n.removeprefix(prefix))
    raise ConfigError(f"no config file {name!r} and no packaged {folder + ' ' if folder else ''}config of that name "
                      f"(packaged: {', '.join(known)})")


def packaged_config_text(name: str) -> str:
    """The text of a packaged config (`quickstart`, `accelerate/zero3`, ...), to copy and edit."""
    configs = packaged_configs()
    path = configs.get(name.removesuffix(".yaml"))
    if path is None:
        raise ConfigError(f"no packaged config {name!r}; packaged: {', '.join(configs)}")
    return path.read_text(encoding="utf-8")
