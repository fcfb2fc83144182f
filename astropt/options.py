"""Typed options for every command: dataclasses, TOML files, ``key=value`` and flags.

The one parser of the project. A command's options are a dataclass; its
settable keys are the dataclass's fields, and a field that is itself a
dataclass is a *section* whose fields are written ``section.key`` (``[section]``
in TOML). A ``dict`` field whose metadata names ``keys_of=SomeDataclass`` is a
*partial* section: ``section.key`` is checked and typed against
``SomeDataclass`` but only the keys actually given are stored (for example the
data options of ``astropt embed``, completed from the checkpoint later).

Sources apply in order: the dataclass defaults, a TOML file (which may name a
``base`` TOML of its own, relative to itself), then command-line entries.
Every key is checked: an unknown one fails naming the nearest valid key, and
a value is parsed by its field's type (bool, int, float, str, ``None`` for
optional fields, a choice for ``Literal`` fields, lists as TOML or comma
separated text).

The command line of every command (``astropt NAME ...`` and the scripts that
wrap it) is read by :func:`parse_command_line`: ``CONFIG.toml``, ``key=value``,
and ``--flag value`` / ``--flag=value`` / ``--bool-flag`` / ``--no-bool-flag``
as spellings of ``flag=value`` (dashes become underscores), plus the bare
arguments a command declares as positional keys. This module imports nothing
from the project, so any module may describe its command here.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from astropt.errors import EXPECTED_ERRORS, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged
    import tomli as tomllib


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied; the message says why and how to fix it."""


#: Where the shipped run configurations live (package data, so they exist after ``pip install``).
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"

#: An entry to apply: ``(dotted key, value, where it came from)``.
Entry = tuple[str, Any, str]


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself when it exists, else the shipped file that ``configs/REST`` names.

    README commands say ``configs/quickstart.toml``; from the checkout that is
    the file, and from any other folder (after ``pip install``) it is the copy
    shipped inside the package. A path that exists neither way is returned as
    given (the caller reports it).
    """
    path = Path(path)
    if path.exists():
        return path
    parts = path.parts
    if parts and parts[0] == "configs":
        packaged = PACKAGED_CONFIGS.joinpath(*parts[1:])
        if packaged.exists():
            return packaged
    return path


# ------------------------------------------------------------------ keys
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _partial_of(f: dataclasses.Field) -> type | None:
    return f.metadata.get("keys_of")


def partial_section(keys_of: type, exclude: tuple[str, ...] = (), **defaults: Any) -> Any:
    """A ``dict`` field holding only the given keys of ``keys_of`` (checked and typed as there).

    ``exclude`` names keys that may not be set here (say why in the field's note);
    ``defaults`` are stored before any source applies.
    """
    return field(
        default_factory=lambda: dict(defaults),
        metadata={"keys_of": keys_of, "exclude": tuple(exclude)},
    )


def option_keys(cls: type) -> dict[str, Any]:
    """Every settable dotted key of the options dataclass ``cls`` with its type."""
    keys: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        inner = _partial_of(f) or (tp if _is_section(tp) else None)
        if inner is None:
            keys[f.name] = tp
            continue
        exclude = f.metadata.get("exclude", ())
        for name, sub_tp in option_keys(inner).items():
            if name not in exclude:
                keys[f"{f.name}.{name}"] = sub_tp
    return keys


def sections(cls: type) -> tuple[str, ...]:
    """Names of ``cls``'s fields written as ``[section]`` tables."""
    hints = _hints(cls)
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if f.init and (_partial_of(f) or _is_section(hints[f.name]))
    )


def nearest_key(key: str, keys: list[str]) -> str | None:
    """The valid key closest to a misspelt one (also matching a key written without its section)."""
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    # "n_layer" written without its section: match on the last component.
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    return by_leaf[close[0]] if close else None


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` naming the candidate nearest to ``key``, or ``""``."""
    hint = nearest_key(key, list(candidates))
    return f"; did you mean '{hint}'?" if hint else ""


def unknown_key(key: str, keys: Mapping[str, Any], origin: str, table_names=()) -> ConfigError:
    """The one-line error for a key no field has, naming the nearest valid key."""
    suggestion = did_you_mean(key, [*keys, *(f"[{s}]" for s in table_names)])
    return ConfigError(f"unknown config key '{key}' ({origin}){suggestion}")


def table_fields(
    cls: type, table: dict, origin: str, *, exclude: Iterable[str] = ()
) -> dict[str, Any]:
    """The entries of a TOML ``table`` as init fields of the dataclass ``cls``, parsed by type.

    For tables inside a config file (the rungs of a scaling ladder, ...): an
    unknown key raises :class:`ConfigError` naming the nearest field
    (``origin`` says where the table came from), each value is parsed by
    :func:`coerce`. Fields in ``exclude`` are not accepted. Returns
    ``{field: value}`` for the keys present, ready for ``cls(**values)``.
    """
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in set(exclude)]
    values = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"unknown key '{key}' ({origin}){did_you_mean(key, names)}")
        values[key] = coerce(value, hints[key], key)
    return values


# ---------------------------------------------------------------- values
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def type_name(tp: Any) -> str:
    """A readable name of a field type (``one of 'a', 'b'`` for a ``Literal``)."""
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _parse_literal_text(text: str) -> Any:
    """A TOML value written on the command line (lists, quoted strings)."""
    return tomllib.loads(f"v = {text}")["v"]


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (a command-line string or a TOML value) as the field type ``tp``.

    Raises :class:`ConfigError` naming ``key``, the expected type and the value.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        return _coerce_literal(value, tp, key)
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        return _coerce_container(value, tp, key)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key} must be a path, got {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """``X | None`` takes none/null; otherwise the first member type that accepts ``value``."""
    args = typing.get_args(tp)
    members = [a for a in args if a is not type(None)]
    if type(None) in args and (
        value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))
    ):
        return None
    errors = []
    for member in members:
        try:
            return coerce(value, member, key)
        except ConfigError as error:
            errors.append(str(error))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: cannot use {value!r} as {tp}")


def _coerce_literal(value: Any, tp: Any, key: str) -> Any:
    """One of the ``Literal`` choices (of the same type), or an error naming the nearest."""
    choices = typing.get_args(tp)
    candidate = value
    if isinstance(value, str) and not all(isinstance(c, str) for c in choices):
        try:
            candidate = _parse_literal_text(value)
        except Exception:
            candidate = value
    if candidate in choices and type(candidate) is type(next(c for c in choices if c == candidate)):
        return candidate
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"{key} must be {type_name(tp)}, got {value!r}{suggestion}")


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _coerce_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            pass
        try:  # "1e6" is a fine way to write a step count
            number = float(text)
            if number.is_integer():
                return int(number)
        except ValueError:
            pass
    raise ConfigError(f"{key} must be an integer, got {value!r}")


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(f"{key} must be a number, got {value!r}")


def _coerce_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be a string, got {value!r}")


_SCALARS: dict[type, Callable[[Any, str], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
}


def _coerce_container(value: Any, tp: Any, key: str) -> Any:
    """A list, tuple or dict: from TOML text, comma-separated text (lists) or a value."""
    container = typing.get_origin(tp) or tp
    if isinstance(value, str) and container is not dict and not value.lstrip().startswith("["):
        # Comma-separated text: "a,b" is ["a", "b"]; "" is the empty list.
        value = [part.strip() for part in value.split(",")] if value.strip() else []
    elif isinstance(value, str):
        try:
            value = _parse_literal_text(value)
        except Exception as error:
            raise ConfigError(
                f"{key} must be a {container.__name__} written as TOML, got {value!r}"
            ) from error
    if container is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return dict(value)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list, got {value!r}")
    item_types = [a for a in typing.get_args(tp) if a is not Ellipsis]
    items = [
        coerce(v, item_types[0], f"{key}[{i}]") if item_types else v for i, v in enumerate(value)
    ]
    return container(items)


# ------------------------------------------------------------------ files
def flatten(table: dict, table_names: tuple[str, ...], prefix: str = "") -> list[tuple[str, Any]]:
    """``[(dotted key, value)]`` of a nested table whose sub-tables ``table_names`` are sections."""
    items: list[tuple[str, Any]] = []
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key in table_names:
            items.extend(flatten(value, table_names, key + "."))
        else:
            items.append((key, value))
    return items


def read_file(path: Path, table_names: tuple[str, ...], seen: tuple[Path, ...] = ()) -> list[Entry]:
    """``(key, value, origin)`` entries of a TOML (or saved JSON) config, bases first."""
    path = resolve_config_path(path).resolve()
    if path in seen:
        raise ConfigError(f"config files include each other: {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix == ".json":
        table = json.loads(path.read_text())
    else:
        try:
            with open(path, "rb") as handle:
                table = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from error
    entries: list[Entry] = []
    base = table.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a path string, got {base!r}")
        entries.extend(read_file(path.parent / base, table_names, (*seen, path)))
    entries.extend((key, value, str(path)) for key, value in flatten(table, table_names))
    return entries


def parse_override(text: str) -> tuple[str, str]:
    """``"model.n_layer=6"`` -> ``("model.n_layer", "6")``."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. model.n_layer=6)")
    return key, value.strip()


# ---------------------------------------------------------------- building
def build_options(cls: type, entries: list[Entry]) -> Any:
    """An instance of ``cls`` from its defaults and ``entries`` applied in order (checked)."""
    keys = option_keys(cls)
    table_names = sections(cls)
    values: dict[str, Any] = {}
    for key, value, origin in entries:
        if key not in keys:
            raise unknown_key(key, keys, origin, table_names)
        values[key] = coerce(value, keys[key], key)
    return _construct(cls, values)


def _construct(cls: type, values: dict[str, Any], base: Any = None) -> Any:
    """``cls(...)`` from dotted ``values`` over ``base`` (an instance) or the field defaults.

    A section starts from its field's default instance, so a config whose
    ``optim`` defaults differ from ``OptimConfig()``'s keeps them.
    """
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        prefix = f.name + "."
        given = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
        if _partial_of(f):
            start = getattr(base, f.name) if base is not None else f.default_factory()  # type: ignore[misc]
            kwargs[f.name] = {**start, **given}
        elif _is_section(hints[f.name]):
            if base is not None:
                start = getattr(base, f.name)
            elif f.default_factory is not dataclasses.MISSING:
                start = f.default_factory()
            else:
                start = None
            kwargs[f.name] = _construct(hints[f.name], given, start)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError("missing required " + ", ".join(f"'{name}'" for name in missing))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error


def as_dict(options: Any) -> dict:
    """Options as a nested JSON-ready dict (what a run saves as its resolved config)."""
    return json.loads(json.dumps(dataclasses.asdict(options), default=str))


# ------------------------------------------------------------------ help
def field_notes(cls: type) -> dict[str, str]:
    """The comment written beside (or just above) each field in ``cls``'s source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    notes: dict[str, str] = {}
    above: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#: ").strip())
            continue
        match = re.match(r"(\w+)\s*:[^=#]*(?:=.*?)?(?:#\s*(.*))?$", stripped)
        if match and not stripped.startswith(("def ", "class ", "@")):
            note = match.group(2) or " ".join(above)
            if note:
                notes[match.group(1)] = note
        above = []
    return notes


def option_defaults(cls: type) -> dict[str, Any]:
    """Dotted key -> default (``"required"`` marks fields without one)."""
    out: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        inner = _partial_of(f) or (hints[f.name] if _is_section(hints[f.name]) else None)
        if inner is not None:
            given = f.default_factory() if _partial_of(f) else {}  # type: ignore[misc]
            for key, value in option_defaults(inner).items():
                out[f"{f.name}.{key}"] = given.get(key, value)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = _REQUIRED
    return out


class _Required:
    def __repr__(self) -> str:
        return "required"


_REQUIRED = _Required()


def describe_options(
    cls: type, skip: tuple[str, ...] = (), spellings: Mapping[str, str] | None = None
) -> str:
    """Every key with its type, default and note (the ``--help`` listing).

    ``spellings``: extra flag spellings by key (``{"data.path": "--data"}``), shown beside it.
    """
    keys = option_keys(cls)
    defaults = option_defaults(cls)
    notes = field_notes(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        inner = _partial_of(f) or (hints[f.name] if _is_section(hints[f.name]) else None)
        if inner is not None:
            notes.update({f"{f.name}.{k}": v for k, v in field_notes(inner).items()})
    lines = []
    for key in keys:
        if key in skip:
            continue
        default = defaults.get(key, _REQUIRED)
        shown = "required" if default is _REQUIRED else f"default {default!r}"
        extra = f"; {spellings[key]}" if spellings and key in spellings else ""
        lines.append(f"  {key} ({type_name(keys[key])}, {shown}{extra})")
        if key in notes:
            lines.append(f"      {notes[key]}")
    return "\n".join(lines)


# --------------------------------------------------------------- commands
@dataclass(frozen=True)
class Command:
    """One command-line program: its options dataclass and what to do with them.

    ``run(options)`` returns the exit status. ``positional``: keys that bare
    arguments fill, in order (``astropt probe emb.parquet``). ``flags``: extra
    spellings, ``{"--data": "data.path"}``; a spelling ending in ``.`` takes a
    ``KEY=VALUE`` value under that section (``--data-opt K=V`` is ``data.K=V``).
    ``forward``: ``(field, keys)``: keys that are not the command's own but in
    ``keys()`` are collected as ``key=value`` strings into the list field
    ``field`` (the training overrides of ``astropt quickstart``). ``load``
    replaces :func:`build_options` for option classes with their own rules
    (the run config). ``examples`` are shown by ``--help``. A list key given by
    the same flag twice collects both (``--combo A --combo B``).
    """

    options: type
    run: Callable[[Any], int]
    description: str
    positional: tuple[str, ...] = ()
    flags: Mapping[str, str] = field(default_factory=dict)
    forward: tuple[str, Callable[[], Mapping[str, Any]]] | None = None
    load: Callable[[list[Entry]], Any] | None = None
    keys: Callable[[], Mapping[str, Any]] | None = None
    skip_keys: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    #: a bare ``X.toml`` fills the first positional key instead of being this command's
    #: options file (``astropt sweep FINETUNE.toml``: the config every run starts from)
    toml_is_positional: bool = False

    def option_keys(self) -> Mapping[str, Any]:
        return self.keys() if self.keys is not None else option_keys(self.options)


_KEY = re.compile(r"^[A-Za-z_][\w.]*$")


def _looks_like_override(token: str) -> bool:
    key, sep, _ = token.partition("=")
    return bool(sep) and bool(_KEY.match(key))


def _is_list(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(tp))
    return origin in (list, tuple) or tp in (list, tuple)


def parse_command_line(command: Command, argv: list[str]) -> tuple[Path | None, list[Entry]]:
    """``(config file, entries)`` of a command line; flags become their ``key=value`` entries.

    Raises :class:`ConfigError` for an unknown flag (naming the nearest key), a
    flag without its value, or more bare arguments than positional keys.
    """
    keys = command.option_keys()
    aliases = key_aliases(command)
    config: Path | None = None
    entries: list[Entry] = []
    positional = list(command.positional)
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            spelled = f"--{name}"
            key = command.flags.get(spelled, name.replace("-", "_"))
            alias = aliases.get(key, "")
            if alias.startswith("!"):  # --quiet: an inverted boolean, resolved later
                entries.append((key, value if eq else True, spelled))
                continue
            key = alias or key
            if key.endswith("."):  # --data-opt KEY=VALUE
                if not eq:
                    if i >= len(argv):
                        raise ConfigError(f"{spelled} needs a KEY=VALUE argument")
                    value, i = argv[i], i + 1
                sub, value = parse_override(value)
                entries.append((key + sub, value, spelled))
                continue
            if key not in keys and key.startswith("no_") and keys.get(key[3:]) is bool and not eq:
                entries.append((key[3:], False, spelled))
                continue
            if key not in keys:
                raise unknown_key(key, keys, spelled, ())
            if eq:
                entries.append((key, value, spelled))
            elif keys[key] is bool:
                entries.append((key, True, spelled))
            elif _is_list(keys[key]):
                values = []
                while i < len(argv) and not argv[i].startswith("--"):
                    if _looks_like_override(argv[i]):
                        break
                    values.append(argv[i])
                    i += 1
                if not values:
                    raise ConfigError(f"{spelled} needs at least one value")
                earlier = [e for e in entries if e[0] == key and e[2] == spelled]
                if earlier:  # a repeated flag adds to its list
                    before = earlier[-1][1]
                    values = [*(before if isinstance(before, list) else [before]), *values]
                    entries.remove(earlier[-1])
                entries.append((key, values if len(values) > 1 else values[0], spelled))
            else:
                if i >= len(argv):
                    raise ConfigError(f"{spelled} needs a value")
                entries.append((key, argv[i], spelled))
                i += 1
        elif _looks_like_override(token):
            key, value = parse_override(token)
            entries.append((key, value, "command line"))
        elif config is None and token.endswith(".toml") and not command.toml_is_positional:
            config = Path(token)
        elif positional:
            entries.append((positional.pop(0), token, "command line"))
        elif config is None:  # a run folder's config.json, or a config without the suffix
            config = Path(token)
        else:
            raise ConfigError(
                f"unexpected argument {token!r}: options are key=value (or --key value)"
            )
    return config, entries


#: One name per concept across commands, each with the other commands' spelling kept
#: as an alias: ``(shared, old)``. A command that has one of the two keys accepts the
#: other as the same key (``astropt train out=runs/x``, ``astropt embed
#: init_from=runs/x``); ``quiet=true`` is ``progress=false``.
SHARED_KEYS: tuple[tuple[str, str], ...] = (
    ("out_dir", "out"),
    ("out", "out_dir"),
    ("init_from", "checkpoint"),
    ("checkpoint", "init_from"),
)
INVERTED_ALIASES: dict[str, str] = {"quiet": "progress"}


def key_aliases(command: Command) -> dict[str, str]:
    """``{alias: key}`` of ``command``: the spellings of :data:`SHARED_KEYS` it lacks.

    A key another command has under the alias stays that command's own, and a
    key forwarded to another config (``astropt sweep out_dir=...``) is not aliased.
    """
    own = command.option_keys()
    forwarded = command.forward[1]() if command.forward is not None else {}
    aliases = {}
    for key, alias in SHARED_KEYS:
        if key in own and alias not in own and alias not in forwarded:
            aliases[alias] = key
    for alias, key in INVERTED_ALIASES.items():
        if key in own and alias not in own and alias not in forwarded:
            aliases[alias] = "!" + key
    return aliases


def _resolve_aliases(command: Command, entries: list[Entry]) -> list[Entry]:
    aliases = key_aliases(command)
    resolved = []
    for key, value, origin in entries:
        target = aliases.get(key)
        if target is None:
            resolved.append((key, value, origin))
        elif target.startswith("!"):  # quiet=true is progress=false
            resolved.append((target[1:], not coerce(value, bool, key), origin))
        else:
            resolved.append((target, value, origin))
    return resolved


def options_from_command_line(command: Command, argv: list[str]) -> Any:
    """The resolved options of ``command`` for ``argv`` (file, then entries in order)."""
    config, entries = parse_command_line(command, argv)
    table_names = sections(command.options)
    all_entries = [] if config is None else read_file(config, table_names)
    all_entries = _resolve_aliases(command, all_entries + entries)
    if command.forward is not None:
        target, forward_keys = command.forward
        own, extra = command.option_keys(), forward_keys()
        forwarded = []
        for key, value, origin in all_entries:
            if key not in own and key not in extra:
                raise unknown_key(key, {**own, **extra}, origin, table_names)
            if key not in own:
                forwarded.append(f"{key}={value}")
        given = [coerce(v, own[target], target) for k, v, _ in all_entries if k == target]
        all_entries = [e for e in all_entries if e[0] in own and e[0] != target]
        combined = [*(given[-1] if given else []), *forwarded]
        all_entries.append((target, combined, "command line"))
    if command.load is not None:
        return command.load(all_entries)
    return build_options(command.options, all_entries)


def command_help(command: Command, prog: str) -> str:
    """``--help`` text: usage, description, every key with its note, examples."""
    positional = " ".join(f"[{name}]" for name in command.positional)
    spellings: dict[str, list[str]] = {}
    for flag, key in command.flags.items():
        spellings.setdefault(key.rstrip("."), []).append(flag)
    spelled = {key: "also " + ", ".join(flags) for key, flags in spellings.items()}
    lines = [
        f"usage: {prog} {'' if command.toml_is_positional else '[CONFIG.toml] '}"
        f"{positional + ' ' if positional else ''}[key=value ...]",
        "",
        command.description,
        "",
        "Options are key=value (or --key value, --key=value; --flag / --no-flag for true/false;",
        "dashes or underscores). A CONFIG.toml sets the same keys; key=value after it wins.",
        "--print-config prints the resolved options as JSON and exits.",
    ]
    for key, flags in spellings.items():
        if key not in command.option_keys():  # a section spelling such as --data-opt
            lines.append(f"{', '.join(flags)} KEY=VALUE is {key}.KEY=VALUE.")
    aliases = key_aliases(command)
    if aliases:
        named = [
            f"{alias} (= not {key[1:]})" if key.startswith("!") else f"{alias} (= {key})"
            for alias, key in aliases.items()
        ]
        lines.append("Also spelled as in other commands: " + ", ".join(named) + ".")
    lines += ["", "keys:", _describe(command, spelled)]
    if command.examples:
        lines += ["", "examples:", *(f"  {example}" for example in command.examples)]
    return "\n".join(lines)


def _describe(command: Command, spelled: Mapping[str, str]) -> str:
    return describe_options(command.options, skip=command.skip_keys, spellings=spelled)


@dataclass(frozen=True)
class CommandGroup:
    """Commands under one name, picked by the first argument (``astropt scaling run ...``)."""

    description: str
    commands: Mapping[str, Command]


def group_help(group: CommandGroup, prog: str) -> str:
    width = max(map(len, group.commands))
    lines = [f"usage: {prog} {{{','.join(group.commands)}}} ...", "", group.description, ""]
    lines += [
        f"  {name:<{width}}  {command.description.split('. ')[0]}"
        for name, command in group.commands.items()
    ]
    lines += ["", f"{prog} NAME --help lists the keys of each."]
    return "\n".join(lines)


def run_and_print_summary(
    name: str, work: Callable[[], dict], expected: tuple[type[BaseException], ...] = ()
) -> int:
    """The tail of a training command: run ``work`` (every ``torchrun`` process does) and
    print the summary it returns as JSON on rank 0; returns the exit status.

    Ctrl-C prints ``NAME: interrupted`` and returns 130; an ``expected`` error becomes a
    :class:`~astropt.errors.UserError`: like the errors of
    :data:`astropt.errors.EXPECTED_ERRORS` it reaches :func:`run_command`, which prints it
    in one line and returns 2.
    """
    import os

    try:
        summary = work()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except expected as error:
        if isinstance(error, UserError):
            raise
        raise UserError(str(error)) from error
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=float))
    return 0


def run_command(command: Command | CommandGroup, argv: list[str] | None, prog: str) -> int:
    """Parse ``argv`` for ``command`` and run it; returns the exit status.

    A torchrun rank that joined a process group does not return: it leaves with
    its status through :func:`astropt.distributed.exit_launched` (no
    interpreter teardown, where gloo threads can abort a finished rank).

    ``--help`` prints every key; a config problem prints one line
    ``PROG: error: ...`` and returns 2, and so does an expected failure (a missing
    or corrupt file, a busy folder: :data:`astropt.errors.EXPECTED_ERRORS`).
    ``--debug`` lets every error raise with its traceback. A :class:`CommandGroup` takes the
    command's name first.
    """
    status = _parse_and_run(command, argv, prog)
    launcher = sys.modules.get("astropt.distributed")  # not imported: no process group joined
    return status if launcher is None else launcher.exit_launched(status)


def _parse_and_run(command: Command | CommandGroup, argv: list[str] | None, prog: str) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if isinstance(command, CommandGroup):
        if not argv or argv[0] in ("-h", "--help"):
            print(group_help(command, prog), file=sys.stdout if argv else sys.stderr)
            return 0 if argv else 2
        name, rest = argv[0], argv[1:]
        if name not in command.commands:
            hint = nearest_key(name, list(command.commands))
            suggestion = f"; did you mean '{hint}'?" if hint else ""
            print(f"{prog}: error: unknown command '{name}'{suggestion}", file=sys.stderr)
            return 2
        return _parse_and_run(command.commands[name], rest, f"{prog} {name}")
    if "-h" in argv or "--help" in argv:
        print(command_help(command, prog))
        return 0
    print_config = "--print-config" in argv
    debug = "--debug" in argv
    argv = [a for a in argv if a not in ("--print-config", "--debug")]
    try:
        options = options_from_command_line(command, argv)
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    if print_config:
        print(json.dumps(as_dict(options), indent=2, sort_keys=True))
        return 0
    try:
        return command.run(options)
    except ConfigError as error:
        if debug:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except EXPECTED_ERRORS as error:
        if debug:
            raise
        print(f"{prog}: error: {error} (--debug shows the traceback)", file=sys.stderr)
        return 2


def parse_or_print_config(parser, argv: list[str]):
    """Parse ``argv`` with an :mod:`argparse` ``parser`` (the benchmark scripts'); with
    ``--print-config`` among them print the parsed options as JSON, like the ``astropt``
    commands do, and return None (the caller stops)."""
    wanted = "--print-config" in argv
    args = parser.parse_args([word for word in argv if word != "--print-config"])
    if wanted:
        print(json.dumps(vars(args), indent=2))
        return None
    return args
