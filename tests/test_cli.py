"""One command-line convention: every command, every spelling, every documented command line.

Each subcommand of the ``astropt`` console script is an options dataclass read
by :mod:`astropt.options`; the scripts of the checkout (``train.py``,
``sample.py``, ``probe/*.py``, ``data/make_synthetic_survey.py``,
``python -m astropt.X``) run the same commands. These tests parse only
(``--print-config``); the commands themselves are tested in their own files.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import runpy
import shlex
import typing
from pathlib import Path
from typing import Any, Literal

import pytest

from astropt import cli, options
from astropt.errors import UserError
from astropt.options import (
    Command,
    CommandGroup,
    ConfigError,
    option_defaults,
    option_keys,
    options_from_command_line,
    resolve_config_path,
    run_command,
)

REPO = Path(__file__).resolve().parent.parent


def _commands() -> dict[str, Command]:
    """Every command by its full name (``"scaling fit"`` for a command of a group)."""
    found = {}
    for name, (module, _) in cli.SUBCOMMANDS.items():
        command = getattr(importlib.import_module(module), "COMMAND", None)
        if isinstance(command, CommandGroup):
            found.update({f"{name} {sub}": c for sub, c in command.commands.items()})
        elif command is not None:
            found[name] = command
    return found


COMMANDS = _commands()
#: Subcommands still on a parser of their own (moving with the train/ restructure).
PENDING: set[str] = set()


def test_every_subcommand_uses_the_one_parser():
    assert {name.split()[0] for name in COMMANDS} == set(cli.SUBCOMMANDS) - PENDING


# ------------------------------------------------------------- unknown keys
def _misspell(key: str) -> str:
    """Drop one letter of the last component (``max_points`` -> ``max_pints``)."""
    head, _, leaf = key.rpartition(".")
    i = len(leaf) // 2
    leaf = leaf[:i] + leaf[i + 1 :]
    return f"{head}.{leaf}" if head else leaf


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unknown_key_is_one_line_naming_the_nearest_key(name, capsys):
    command = COMMANDS[name]
    keys = [k for k in command.option_keys() if len(k.rpartition(".")[2]) >= 6]
    for key in keys[:3] + keys[-2:]:
        wrong = _misspell(key)
        if wrong in command.option_keys():
            continue
        for argv in ([f"{wrong}=1"], [f"--{wrong.replace('_', '-')}", "1"]):
            assert run_command(command, argv, f"astropt {name}") == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1, err
            assert f"unknown config key '{wrong}'" in err
            assert f"did you mean '{key}'?" in err, err


# ------------------------------------------------------------ user errors
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_user_error_exits_2_from_every_command(name, capsys, monkeypatch, tmp_path):
    # The same failures from every command: a config file that is not there (parsing),
    # and a user error or a missing file raised while the command runs.
    command = COMMANDS[name]
    if not command.toml_is_positional:
        assert run_command(command, [str(tmp_path / "missing.toml")], f"astropt {name}") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "missing.toml" in err, err
    monkeypatch.setattr(options, "options_from_command_line", lambda command, argv: None)
    for error in (UserError("the folder is busy"), FileNotFoundError("no such file: x.fits")):

        def fail(_options, error=error):
            raise error

        failing = dataclasses.replace(command, run=fail)
        assert run_command(failing, [], f"astropt {name}") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(error) in err, err


def test_shared_key_names_accept_the_other_commands_spelling():
    # out_dir/out, init_from/checkpoint, progress/quiet: one concept, both spellings everywhere.
    seen = set()
    for name, command in COMMANDS.items():
        for alias, key in options.key_aliases(command).items():
            seen.add(alias)
            flag = [f"--{alias}"] if key.startswith("!") else [f"--{alias}", "true"]
            for argv in ([f"{alias}=true"], flag):
                _, entries = options.parse_command_line(command, argv)
                resolved = options._resolve_aliases(command, entries)
                expected = (key[1:], False) if key.startswith("!") else (key, "true")
                assert [e[:2] for e in resolved] == [expected], (name, argv, resolved)
    assert {"out", "out_dir", "checkpoint", "init_from", "quiet"} <= seen
    train = options_from_command_line(COMMANDS["train"], ["out=runs/a", "checkpoint=runs/b"])
    assert (train.out_dir, train.init_from) == ("runs/a", "runs/b")
    survey = options_from_command_line(COMMANDS["survey"], ["out=s", "--quiet"])
    assert survey.progress is False


def test_console_script_names_the_nearest_command(capsys):
    assert cli.main(["prob", "emb.parquet"]) == 2
    assert "did you mean 'probe'?" in capsys.readouterr().err


# ---------------------------------------------------------- flag == key=value
def _value_for(tp: Any, default: Any) -> str | None:
    """A command-line value of type ``tp`` different from ``default`` (None: none found)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, typing.get_origin(int | None)):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return _value_for(members[0], default)
    if origin is Literal:
        choices = [c for c in typing.get_args(tp) if c != default]
        return str(choices[-1]) if choices else None
    if tp is bool:
        return "false" if default else "true"
    if tp is int:
        return "7" if default != 7 else "8"
    if tp is float:
        return "0.25" if default != 0.25 else "0.5"
    if tp is str:
        return "some/where"
    if origin in (list, tuple):
        item = typing.get_args(tp)[0]
        return {int: "1,2", str: "a,b"}.get(item)
    return None


def _outcome(command: Command, argv: list[str]) -> Any:
    try:
        return dataclasses.asdict(options_from_command_line(command, argv))
    except ConfigError as error:
        return ("error", str(error).split(" (")[0])


#: Keys a command needs beyond its required fields before anything else can be checked.
NEEDS = {"survey": ["out=s"]}


def _required(name: str, command: Command) -> list[str]:
    keys = command.option_keys()
    return NEEDS.get(name, []) + [
        f"{f.name}={4 if keys[f.name] is int else 'req'}"
        for f in dataclasses.fields(command.options)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_spelling_equals_its_key_value_spelling(name):
    command = COMMANDS[name]
    base = _required(name, command)
    assert not isinstance(_outcome(command, base), tuple), _outcome(command, base)
    defaults = _outcome(command, base)
    checked = 0
    key_defaults = option_defaults(command.options)
    for key, tp in command.option_keys().items():
        value = _value_for(tp, key_defaults.get(key))
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        by_key = _outcome(command, [*base, f"{key}={value}"])
        if tp is not bool:  # a bool flag takes no separate value (--flag, --no-flag, --flag=x)
            assert _outcome(command, [*base, flag, value]) == by_key, key
        assert _outcome(command, [*base, f"{flag}={value}"]) == by_key, key
        if tp is bool:
            spelled = flag if value == "true" else "--no-" + flag[2:]
            assert _outcome(command, [*base, spelled]) == by_key, key
        assert by_key != defaults or isinstance(by_key, tuple), key  # the value took effect
        checked += 1
    assert checked >= min(3, len(command.option_keys()))


def test_older_spellings_of_embed_and_sample_are_their_keys():
    embed = COMMANDS["embed"]
    flags = [
        "--checkpoint", "runs/x", "--data", "runs/s", "--source", "synthetic", "--split", "val",
        "--image-size", "32", "--num-workers", "2", "--data-opt", "synthetic_n=50",
        "--data-opt", "synthetic_test_fraction=1.0", "--no-progress", "--baselines",
        "--out", "e.parquet",
    ]  # fmt: skip
    keys = [
        "checkpoint=runs/x", "data.path=runs/s", "data.source=synthetic", "split=val",
        "data.image_size=32", "data.num_workers=2", "data.synthetic_n=50",
        "data.synthetic_test_fraction=1", "progress=false", "baselines=true", "out=e.parquet",
    ]  # fmt: skip
    by_flags = options_from_command_line(embed, flags)
    assert by_flags == options_from_command_line(embed, keys)
    assert by_flags.data == {
        "source": "synthetic",
        "path": "runs/s",
        "image_size": 32,
        "num_workers": 2,
        "synthetic_n": 50,
        "synthetic_test_fraction": 1.0,
    }
    # What the checkpoint decides cannot be set beside it.
    with pytest.raises(ConfigError, match="unknown config key 'data.patch_size'"):
        options_from_command_line(embed, ["checkpoint=x", "out=y", "data.patch_size=8"])
    sample = COMMANDS["sample"]
    assert options_from_command_line(
        sample, ["--checkpoint", "r", "--data", "d", "--prefix", "4", "--n", "5", "--out", "g.png"]
    ) == options_from_command_line(
        sample, ["checkpoint=r", "data.path=d", "prefix=4", "n=5", "out=g.png"]
    )


def test_positional_lists_and_config_files(tmp_path):
    probe = COMMANDS["probe"]
    opts = options_from_command_line(
        probe, ["emb.parquet", "--targets", "mag_g", "redshift>0.5", "--label-sizes", "30,all"]
    )
    assert opts.embeddings == "emb.parquet"
    assert opts.targets == ["mag_g", "redshift>0.5"]
    assert opts.label_sizes == ["30", "all"]
    assert opts == options_from_command_line(
        probe, ["embeddings=emb.parquet", "targets=mag_g,redshift>0.5", "label_sizes=30,all"]
    )
    with pytest.raises(ConfigError, match="neither a count nor 'all'"):
        options_from_command_line(probe, ["emb.parquet", "label_sizes=30,most"])
    with pytest.raises(ConfigError, match="unexpected argument 'extra'"):
        options_from_command_line(probe, ["emb.parquet", "c.toml", "extra"])
    with pytest.raises(ConfigError, match="missing required 'embeddings'"):
        options_from_command_line(probe, ["out=report"])
    # A TOML file sets the same keys; the command line wins over it.
    toml = tmp_path / "maps.toml"
    toml.write_text('embeddings = "emb.parquet"\nproperties = ["mag_g", "redshift"]\nseed = 3\n')
    maps = COMMANDS["maps"]
    opts = options_from_command_line(maps, [str(toml), "seed=4", "--no-stamps"])
    assert (opts.embeddings, opts.properties, opts.seed, opts.stamps) == (
        "emb.parquet",
        ["mag_g", "redshift"],
        4,
        False,
    )
    toml.write_text('embeddings = "e"\nmax_pionts = 3\n')
    with pytest.raises(ConfigError, match=r"maps.toml\); did you mean 'max_points'\?"):
        options_from_command_line(maps, [str(toml)])


def test_quickstart_forwards_training_keys_and_finds_its_config_anywhere(tmp_path, monkeypatch):
    quickstart = COMMANDS["quickstart"]
    opts = options_from_command_line(quickstart, ["--out", "q", "--fast", "model.n_layer=2"])
    assert (opts.out, opts.fast, opts.overrides) == ("q", True, ["model.n_layer=2"])
    with pytest.raises(ConfigError, match="did you mean 'model.n_layer'"):
        options_from_command_line(quickstart, ["model.n_layers=2"])
    monkeypatch.chdir(tmp_path)  # no configs/ here: the packaged file is used
    assert resolve_config_path(opts.config) == REPO / "astropt" / "configs" / "quickstart.toml"


def test_scaling_commands_keep_their_spellings(capsys):
    run = COMMANDS["scaling run"]
    flags = [
        "--ladder", "configs/scaling/cpu", "--budgets", "1e10,3e10", "--data-sizes", "",
        "--rungs", "w32-l2,w64-l3", "--probe", "compute", "--dry-run", "data.path=runs/s",
    ]  # fmt: skip
    opts = options_from_command_line(run, flags)
    assert opts.budgets == [1e10, 3e10] and opts.data_sizes == [] and opts.dry_run
    assert opts.rungs == ["w32-l2", "w64-l3"] and opts.overrides == ["data.path=runs/s"]
    with pytest.raises(ConfigError, match="did you mean 'model.n_layer'"):
        options_from_command_line(run, ["ladder=x", "model.n_layr=3"])
    fit = options_from_command_line(COMMANDS["scaling fit"], ["r.jsonl", "--no-curves"])
    assert (fit.results, fit.curves) == ("r.jsonl", False)
    scaling = importlib.import_module(cli.SUBCOMMANDS["scaling"][0]).COMMAND
    assert run_command(scaling, ["fti", "r.jsonl"], "astropt scaling") == 2
    assert "did you mean 'fit'?" in capsys.readouterr().err


def test_help_lists_every_key_with_its_note(capsys):
    for name, command in COMMANDS.items():
        assert run_command(command, ["--help"], f"astropt {name}") == 0
        text = capsys.readouterr().out
        for key in command.option_keys():
            if key not in command.skip_keys:
                # The key's line, then its note on the next line.
                assert re.search(rf"^  {re.escape(key)} \(.*\n      \S", text, flags=re.M), (
                    name,
                    key,
                )
    assert run_command(COMMANDS["embed"], ["--help"], "astropt embed") == 0
    text = capsys.readouterr().out
    assert "  thumbnails (int, default 0)\n      store SxS RGB thumbnails" in text
    assert "data.path (str, default ''; also --data)" in text


# ------------------------------------------------ documented command lines
#: The command lines of DESIGN.md section 7 (the design document is not part of the checkout).
DESIGN_COMMANDS = """
python data/make_synthetic_survey.py --out DIR --n 10000 --image-size 128 --seed 0
python train.py configs/quickstart.toml out_dir=runs/x max_iters=200
torchrun --nproc_per_node=N train.py configs/astropt-095M.toml data.source=hf data.path=Smith42/galaxies
python sample.py --checkpoint runs/x --data DIR --prefix 64 --out grid.png
python -m astropt.embed --checkpoint runs/x --data DIR --out emb.parquet
python probe/linear_probe.py emb.parquet --out report/
python probe/umap_maps.py emb.parquet --out report/umap.png
python finetune.py configs/finetune-quickstart.toml init_from=runs/x mode=lora label_column=galaxy10
python -m astropt.predict --checkpoint runs/ft --data DIR --out preds.parquet
"""


def _readme_commands() -> list[str]:
    """The command lines of the README and of every docs page."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    lines = []
    for block in re.findall(r"```(?:bash|text)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("python", "torchrun", "astropt ")):
                lines.append(line)
    return lines


def _entry_point(words: list[str]):
    """``(main, argv)`` of a documented command line; None when its entry point is not here."""
    if words[0] == "torchrun":
        words = ["python", *[w for w in words[1:] if not w.startswith("-")]]
    if words[0] == "astropt":
        return cli.main, words[1:]
    if words[1] == "-m":
        try:
            module = importlib.import_module(words[2])
        except ModuleNotFoundError:
            return None
        return module.main, words[3:]
    script = REPO / words[1]
    if not script.is_file():
        return None
    return runpy.run_path(str(script), run_name="documented")["main"], words[2:]


DOCUMENTED = sorted(set(_readme_commands()) | set(DESIGN_COMMANDS.strip().splitlines()))


@pytest.mark.parametrize("line", DOCUMENTED)
def test_documented_command_lines_parse(line, capsys, monkeypatch):
    found = _entry_point(shlex.split(line.replace("$NODE_RANK", "0")))
    if found is None:
        pytest.skip(f"entry point of {line!r} is not in this checkout yet")
    main, argv = found
    monkeypatch.chdir(REPO)
    assert main([*argv, "--print-config"]) == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    assert isinstance(printed, dict) and printed


def test_documented_commands_were_found():
    assert any(line.startswith("python -m astropt.embed") for line in DOCUMENTED)
    assert any(line.startswith("python probe/linear_probe.py") for line in DOCUMENTED)
    assert sum(line.startswith("torchrun") for line in DOCUMENTED) >= 2


@dataclasses.dataclass
class _Inner:
    width: int = 3


@dataclasses.dataclass
class _Outer:
    name: str
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_sections_of_a_nested_dataclass():
    assert option_keys(_Outer) == {"name": str, "inner.width": int}
    outer = options_from_command_line(Command(_Outer, print, ""), ["--inner.width", "5", "name=a"])
    assert outer == _Outer("a", _Inner(5))
