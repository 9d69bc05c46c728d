"""Strict, typed configs: frozen dataclasses filled from YAML presets and ``key=value`` overrides.

One frozen dataclass per entry point; every field has a type, a default and a help string
(``field(default=..., metadata={"help": ...})``, see :func:`opt`). Presets live in ``configs/<protocol>/*.yaml`` and
may name one ``_base_`` preset (one level of inheritance). Unknown keys and wrongly typed values are errors that
name the key and the valid choices. The config is never mutated: derived values (global batch, scaled lr) go into a
separate resolved object that the entry point writes next to it.

Command line (built from the dataclass, no per-runner argparse boilerplate)::

    python -m benchmarks.voc07_svm --preset tiny --ckpt model.pth --low-shot layers=feat4,feat5 solver.tol=1e-6
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A preset or override does not fit the config dataclass; the message says which key and how to fix it."""


def opt(default: Any, help: str, identity: bool | str = True,  # noqa: A002 - "help" reads best here
        positive: bool = False) -> Any:
    """A dataclass field with a default and a one-line help string (shown by ``--help``).

    Every number a config holds (an ``int`` or ``float`` field, or each item of a tuple of them) must be finite and
    not negative: ``lr=nan`` or ``epochs=-1`` is refused when the config is parsed, not hours later. ``positive=True``
    also refuses 0 (learning rates, sizes, batch sizes, epochs, intervals: where 0 means a division by zero, a loop
    that never ends or a run that trains nothing).

    ``identity=False`` marks fields that do not change results (output folder, ``force``, worker counts): they
    are left out of :func:`config_hash`, so reruns that only differ in them are recognised as the same run.
    ``identity="when_set"``: in the hash only when it differs from its default, so a field added later (such as
    ``rehearsal``) keeps the hashes, and so the records, of every existing run.
    """
    if identity not in (True, False, "when_set"):
        raise ValueError(f"identity={identity!r}: True, False or 'when_set'")
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (immutable) default, configs are frozen")
    return dataclasses.field(default=default, metadata={"help": help, "identity": identity, "positive": positive})


# ---------------------------------------------------------------- loading ---------------------------------------


def load_config(cls: type[T], preset: str | Path | None = None, overrides: Sequence[str] = (),
                preset_dir: str | Path | None = None) -> T:
    """Build ``cls`` from defaults, then the preset (if any), then ``key=value`` overrides, in that order.

    Args:
        cls: a frozen dataclass type.
        preset: a YAML path, or a preset name looked up as ``<preset_dir>/<name>.yaml``.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML scalars and type-checked.
        preset_dir: the folder preset names are looked up in.

    Raises:
        ConfigError: unknown preset, unknown key, or a value of the wrong type.
    """
    values: dict[str, Any] = {}
    if preset is not None:
        values = _read_preset(_preset_path(preset, preset_dir))
        if "preset" in {f.name for f in dataclasses.fields(cls)}:
            # A config with a `preset` field carries its preset's name (records and run folders use it).
            values.setdefault("preset", Path(preset).stem)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        _set_dotted(values, key.strip(), _parse_scalar(raw))
    return _build(cls, values, where=str(preset) if preset else "overrides")


def _preset_path(preset: str | Path, preset_dir: str | Path | None) -> Path:
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{path}: preset file not found")
        return path
    folder = Path(preset_dir) if preset_dir else CONFIG_ROOT
    candidate = folder / f"{preset}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ConfigError(f"unknown preset {preset!r} in {folder}; valid: {', '.join(known) or '(none)'}")
    return candidate


def _read_preset(path: Path, allow_base: bool = True) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a YAML mapping of config keys")
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not allow_base:
        raise ConfigError(f"{path}: _base_ may only be used one level deep")
    merged = _read_preset(path.parent / base, allow_base=False)
    _deep_update(merged, data)
    return merged


def _deep_update(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def _parse_scalar(raw: str) -> Any:
    """Parse an override value as a YAML scalar ("3" -> 3, "a,b" stays a string and is split for tuples)."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _build(cls: type[T], values: dict[str, Any], where: str, prefix: str = "") -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}' for {cls.__name__}; valid keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}", where)
        _check_number(kwargs[name], fields[name], f"{prefix}{name}", where)
    return cls(**kwargs)


def _check_number(value: Any, f: dataclasses.Field, key: str, where: str) -> None:
    """Refuse a non-finite or negative number (and 0 in a ``positive`` field): see :func:`opt`."""
    for number in value if isinstance(value, tuple) else (value,):
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {key}={number!r} must be a finite number")
        if number < 0 or (number == 0 and f.metadata.get("positive")):
            bound = "positive" if f.metadata.get("positive") else "at least 0"
            raise ConfigError(f"{where}: {key}={number!r} must be {bound}")


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _build(hint, value, where, prefix=f"{key}.")
        raise ConfigError(f"{where}: {key} is a section; set its fields as {key}.<name>=value")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [_parse_scalar(v.strip()) for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, args[0], key, where) for v in value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key}={value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise ConfigError(f"{key}: unsupported config type {hint}")
    raise ConfigError(f"{where}: {key}={value!r} must be of type {getattr(hint, '__name__', hint)}")


# ---------------------------------------------------------------- command line ---------------------------------


def parse_args(cls: type[T], argv: Sequence[str] | None = None, preset_dir: str | Path | None = None,
               description: str = "") -> T:
    """Parse ``[--preset NAME] [--field value | --flag | key=value ...]`` into ``cls``.

    ``--some-field value`` is shorthand for ``some_field=value``; a bare ``--flag`` sets a bool field to True.
    ``--help`` prints every field with its type, default and help string.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(describe(cls, description, preset_dir))
        raise SystemExit(0)
    hints = typing.get_type_hints(cls)
    preset, overrides = None, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name = arg[2:].replace("-", "_")
            name, eq, inline = name.partition("=")
            if name == "preset":  # a preset file/name, not a plain field
                preset, i = (inline, i + 1) if eq else (_next(argv, i, arg), i + 2)
                continue
            if name not in hints:
                raise ConfigError(f"unknown option {arg!r}; valid: --preset, {_flags(cls)}")
            if hints[name] is bool and not eq:
                overrides.append(f"{name}=true")
                i += 1
                continue
            value, i = (inline, i + 1) if eq else (_next(argv, i, arg), i + 2)
            overrides.append(f"{name}={value}")
        elif "=" in arg:
            overrides.append(arg)
            i += 1
        else:
            raise ConfigError(f"unexpected argument {arg!r}; use --preset NAME, --field value or key=value")
    return load_config(cls, preset, overrides, preset_dir=preset_dir)


def _next(argv: list[str], i: int, flag: str) -> str:
    if i + 1 >= len(argv):
        raise ConfigError(f"{flag} needs a value")
    return argv[i + 1]


def _flags(cls: type) -> str:
    return ", ".join(f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls))


def describe(cls: type, description: str = "", preset_dir: str | Path | None = None, prefix: str = "") -> str:
    """Human-readable list of fields (type, default, help) for ``--help``."""
    lines = [description.strip(), ""] if description and not prefix else []
    if not prefix and preset_dir is not None and Path(preset_dir).is_dir():
        lines.append(f"presets ({preset_dir}): " + ", ".join(sorted(p.stem for p in Path(preset_dir).glob("*.yaml"))))
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            lines.append(describe(hint, prefix=f"{prefix}{f.name}."))
            continue
        type_name = getattr(hint, "__name__", str(hint).replace("typing.", ""))
        lines.append(f"  {prefix}{f.name} ({type_name}, default {f.default!r}): {f.metadata.get('help', '')}")
    return "\n".join(line for line in lines if line is not None)


# ---------------------------------------------------------------- serialisation -------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-JSON view of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any) -> str:
    """Short sha256 of the canonical JSON of a config's identity fields: the key for idempotent reruns."""
    canonical = json.dumps(_identity(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _identity(cfg: Any) -> Any:
    if not dataclasses.is_dataclass(cfg):
        return json.loads(json.dumps(cfg))
    return {
        f.name: _identity(getattr(cfg, f.name))
        for f in dataclasses.fields(cfg)
        if f.metadata.get("identity", True) is True
        or (f.metadata.get("identity") == "when_set" and getattr(cfg, f.name) != f.default)
    }
