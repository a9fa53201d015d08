"""Frozen dataclass configs loaded from YAML, with unknown keys rejected and the closest key suggested."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")
# The built-in run configs (quick, camvid_cpu, cityscapes_r101_r18, ...) live in configs/ beside this module, which
# loads them: here in the contract, below both readers of a run config, the training loader
# (nfdseg.distill.config.load_run_config) and `nfdseg data check --config` (which needs no torch).
PRESET_DIR = Path(__file__).resolve().parent / "configs"
USER_BASE = "quick"  # a user's run config builds on the quick preset unless it names another `base:`


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(valid))}"


# YAML 1.1 reads bare off/no/false as False and on/yes/true as True; a choice field that offers "off" or "on" takes
# them back as those words, so `train.amp: off` in a file or `--set train.amp=off` means what it says.
YAML_BOOL_WORDS = {False: "off", True: "on"}


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:  # a field with a fixed set of values: the message lists them
        if isinstance(value, bool) and YAML_BOOL_WORDS[value] in args:
            value = YAML_BOOL_WORDS[value]  # YAML reads a bare `off` (`train.amp=off`) as false
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"'{where}' must be one of {', '.join(map(str, args))}", seen=repr(value),
                              fix=f"{hint}set {where} to one of: {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a mapping", seen=repr(value), fix="write it as `key: value` lines")
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where) if len(non_none) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}' must be a list", seen=repr(value), fix="write it as [a, b, ...]")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"'{where}' must have {len(args)} items", seen=repr(value))
        return tuple(_coerce(a, v, where) for a, v in zip(args, value)) if args else tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a mapping", seen=repr(value))
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"'{where}' must be {tp.__name__}", seen=f"{value!r} ({type(value).__name__})")
    return value


def choices(cls: type, field_name: str) -> tuple[Any, ...]:
    """The allowed values of a `Literal[...]` field of dataclass `cls` (for CLI choices: one home per list)."""
    tp = typing.get_type_hints(cls)[field_name]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is not typing.Literal:
        raise TypeError(f"{cls.__name__}.{field_name} is not a Literal field")
    return typing.get_args(tp)


def check_choices(obj: Any, where: str = "") -> None:
    """Check every `Literal[...]` field of a (nested) dataclass instance, e.g. one built in code, not from YAML."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, full = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_choices(value, full)
        elif typing.get_origin(hints[f.name]) is typing.Literal:
            choices = typing.get_args(hints[f.name])
            if isinstance(value, bool):  # only YAML text turns a bare off/on into a choice; in code it is a slip
                raise ConfigError(f"'{full}' must be one of {', '.join(map(str, choices))}", seen=repr(value),
                                  fix=f"write the word, e.g. {full}={YAML_BOOL_WORDS[value]!r}")
            _coerce(hints[f.name], value, full)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise ConfigError naming the closest valid key, and a
    `Literal[...]` field refuses a value outside its set, listing the valid values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{full}'", seen=f"{key}: {value!r}", fix=_suggest(key, list(fields))
            )
        kwargs[key] = _coerce(hints[key], value, full)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"incomplete config section '{where or cls.__name__}'", seen=str(e)) from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain JSON/YAML-able view of a (nested) dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", fix="pass an existing YAML file, or omit it for defaults")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML", seen=str(e).splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top", seen=type(data).__name__)
    return data


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn CLI `a.b=value` strings into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value", fix="write e.g. train.iters=200")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


@dataclasses.dataclass(frozen=True)
class ConfigLayer:
    """One file of a config's base chain: label (a preset's name, or the file's absolute path), its mapping
    without `base`, and whether it is a preset."""

    label: str
    data: dict[str, Any]
    builtin: bool


def preset_path(name: str, preset_dir: Path) -> Path:
    """The preset `name` (preset_dir/NAME.yaml); ConfigError listing the presets when there is none."""
    path = Path(preset_dir) / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(p.stem for p in sorted(Path(preset_dir).glob("*.yaml")))
        raise ConfigError(f"no built-in config named '{name}'", fix=f"use a YAML path or one of: {names}")
    return path


def _source_path(name: str, relative_to: Path | None, preset_dir: Path) -> tuple[Path, bool]:
    """(path, is preset) for a config named by path (tried beside the including file first) or by preset name."""
    path = Path(name)
    if relative_to is not None and not path.is_absolute() and (relative_to / path).is_file():
        return relative_to / path, False
    if not path.suffix and not path.exists():
        return preset_path(name, preset_dir), True
    return path, False


def config_layers(source: str | Path, preset_dir: Path, user_base: str = "none",
                  relative_to: Path | None = None, chain: tuple[str, ...] = ()) -> list[ConfigLayer]:
    """The config `source` (a YAML path or a preset name in preset_dir) and the files under it, base first.

    Each file names what it builds on with `base:` (a preset name, a YAML path tried relative to that file first,
    or none); a preset without it stands on nothing, any other file on `user_base`. A loop of bases or a `base:`
    that is not a string is a ConfigError. Merge the layers' mappings in order with deep_update."""
    path, builtin = _source_path(str(source), relative_to, preset_dir)
    label = path.stem if builtin else str(path.resolve())
    if label in chain:
        raise ConfigError("config bases form a loop", seen=" -> ".join(chain + (label,)),
                          fix=f"make one of them build on a preset (base: {user_base}) or on nothing (base: none)")
    data = load_yaml(path)
    base = data.pop("base", "none" if builtin else user_base)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"'base' in {path} must be a preset name or a YAML path", seen=repr(base),
                          fix="e.g. base: quick, base: cityscapes_r101_r18, base: ../team.yaml or base: none")
    below = ([] if base is None or base.lower() == "none"
             else config_layers(base, preset_dir, user_base, path.parent, chain + (label,)))
    return below + [ConfigLayer(label, data, builtin)]


def run_config_layers(source: str | Path) -> list[ConfigLayer]:
    """The run config `source` (a YAML path or a preset name in PRESET_DIR) over its `base:` chain, base first: the
    one resolver of both the training loader (nfdseg.distill.config.load_run_config) and `nfdseg data check`."""
    return config_layers(source, PRESET_DIR, user_base=USER_BASE)
