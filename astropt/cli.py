"""The ``astropt`` console script: ``astropt COMMAND [CONFIG.toml] [key=value ...]``.

Every subcommand is a :class:`astropt.options.Command` (an options dataclass
beside the code it configures, and a function that runs it) named ``COMMAND``
in its module; the scripts of the checkout (``train.py``, ``sample.py``,
``probe/*.py``, ``data/make_synthetic_survey.py``, ``python -m astropt.X``)
run the same objects, so every spelling accepts the same options.
"""

from __future__ import annotations

import difflib
import importlib
import sys

#: name -> (module whose ``COMMAND`` it runs, one-line summary). Registering a
#: subcommand is one line here.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("astropt.train", "pretrain a model (torchrun-aware)"),
    "embed": ("astropt.embed", "export embeddings of a split (resumable)"),
    "probe": ("astropt.probe", "linear probes, baselines and label-efficiency curves"),
    "maps": ("astropt.maps", "UMAP maps coloured by catalogue properties"),
    "sample": ("astropt.generate", "complete galaxies from their central patches"),
    "survey": ("astropt.simulate.writer", "write the built-in synthetic survey"),
    "scaling": ("astropt.scaling.cli", "scaling-law studies: run, probe, fit"),
    "quickstart": ("astropt.quickstart", "the whole science loop on the synthetic survey"),
    "finetune": ("astropt.finetune.trainer", "finetune on labels: probe, lora or full (torchrun)"),
    "predict": ("astropt.predict", "per-galaxy predictions of a finetuned model (resumable)"),
    "sweep": ("astropt.finetune.sweep", "label-efficiency sweeps of finetuning (resumable)"),
    "index": ("astropt.search.index", "nearest-neighbour index of an embedding export (faiss)"),
    "search": ("astropt.search.query", "neighbours of a galaxy id or an image file"),
    "anomalies": ("astropt.search.anomalies", "rank galaxies by oddity (k-NN, isolation forest)"),
    "view": ("astropt.search.view", "a local page: UMAP map, click a galaxy, its neighbours"),
    "realbench": ("astropt.realbench", "pretrain on labelled real folders, probe every label"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: astropt COMMAND [CONFIG.toml] [key=value ...]   (astropt COMMAND --help: every key)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"astropt: error: unknown command '{name}'{hint}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    if hasattr(module, "COMMAND"):
        from astropt.options import run_command

        return run_command(module.COMMAND, rest, f"astropt {name}")
    return module.main(rest)  # a command still on its own parser


if __name__ == "__main__":
    raise SystemExit(main())
