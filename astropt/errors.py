"""Errors a user can fix: one clear line at the command line, a traceback only with ``--debug``.

Every command-line entry point catches :class:`UserError` (and ``FileNotFoundError``)
and prints its message; anything else is a bug and keeps its traceback. Concrete
errors subclass it beside the code that raises them (a busy run folder, a corrupt
file, a bad sample under ``data.strict``, a full disk during a checkpoint).
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the message explains and the user can fix (bad path, file, config, disk)."""


#: What a command line reports in one line (the rest are bugs: traceback).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


class TrainingDiverged(UserError, RuntimeError):
    """A non-finite loss or gradient (pretraining or finetuning): the run stopped before
    applying the update; lower the learning rate or use float32, then resume."""
