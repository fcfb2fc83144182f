"""Files that are either whole or absent, and weights that fit their model or say why not.

The bottom of the import order: nothing here imports from ``astropt``, so every
other module may use it.

* :func:`atomic_write` / :func:`atomic_write_text`: a file is written under a
  hidden temporary name in its folder and renamed onto the target, so a crash
  never leaves a half-written file where a good one was. The result has the
  usual permissions (``0o666`` less the umask), not ``mkstemp``'s owner-only ones.
* :func:`atomic_write_dir` / :func:`recover_atomic_dirs`: the same for a whole
  folder (a training checkpoint). The previous folder is kept as ``.NAME.old``
  for the instant between two renames; :func:`recover_atomic_dirs` finishes or
  undoes a replacement a dead process left behind.
* :func:`load_weights` / :func:`read_json`: a safetensors or JSON file, or a
  :class:`CorruptFileError` naming the file (never a bare parser error).
* :func:`folder_lock`: one live run per folder; a dead run's lock vanishes with it.
* :func:`load_state_checked`: ``load_state_dict(strict=True)`` whose error
  names every missing, unexpected and misshapen tensor.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from astropt.errors import UserError

log = logging.getLogger("astropt.io")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` (same folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes owner-only files, and writers that replace the file (safetensors
        # does) keep that: give the result the usual umask permissions, after writing.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write the matplotlib figure ``fig`` to ``path`` as PNG, atomically (folders made), and
    close it. Returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""

    def write(tmp):
        with open(tmp, "w") as handle:
            handle.write(text)

    atomic_write(path, write)


def _settle_tree(folder: Path) -> None:
    """fsync every file, and give files and folders the umask's permissions (``mkdtemp``
    makes owner-only folders: a cluster group could not read a checkpoint)."""
    umask = _umask()
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o777 & ~umask)
        elif path.is_file():
            os.chmod(path, 0o666 & ~umask)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def atomic_write_dir(dest: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Create folder ``dest`` atomically: ``fill(tmp)`` then rename into place.

    If ``fill`` raises (or the process dies) the previous ``dest`` is untouched;
    a replacement interrupted between its two renames is completed by
    :func:`recover_atomic_dirs`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        fill(tmp)
        _settle_tree(tmp)
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_atomic_dirs(root: str | os.PathLike) -> None:
    """Finish or undo the :func:`atomic_write_dir` calls a dead process left behind in ``root``.

    A ``.NAME.old`` whose ``NAME`` is missing is renamed back (the process died
    between the two renames); other ``.old`` and ``.tmp`` leftovers are removed.
    """
    root = Path(root)
    if not root.is_dir():
        return
    for path in root.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(".old"):
            dest = root / name[1:-4]
            if dest.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, dest)
                log.warning("recovered %s from an interrupted write", dest)
        elif name.startswith(".") and name.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)


class CorruptFileError(UserError, ValueError):
    """A file that exists but cannot be read (truncated, empty, not that format); names the file."""


def load_weights(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (``name -> tensor`` on ``device``).

    Raises :class:`FileNotFoundError` or :class:`CorruptFileError`, each naming ``path``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({exc})") from None


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value, or :class:`CorruptFileError` naming ``path``."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{path} is not a readable JSON file ({exc})") from None


def load_state_checked(model: torch.nn.Module, state: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with a message naming missing, extra and misshapen tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    misshapen = [
        f"{name}: file {tuple(state[name].shape)} vs model {tuple(own[name].shape)}"
        for name in sorted(set(own) & set(state))
        if state[name].shape != own[name].shape
    ]
    if missing or extra or misshapen:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        if misshapen:
            parts.append(f"shape mismatch {misshapen}")
        raise ValueError(f"weights in {source} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


class FolderBusyError(UserError, RuntimeError):
    """Another live process holds the folder's lock (see :func:`folder_lock`)."""


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``folder/.lock``) for the ``with`` block.

    The lock is an ``fcntl.flock`` on an open file: the kernel drops it when the
    holder exits in any way (``kill -9`` included), so a crashed run never leaves
    a folder stuck. A second process asking for it gets :class:`FolderBusyError`
    naming the holder's pid and host. Without ``fcntl`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    handle = open(path, "a+")  # noqa: SIM115 (held open for the whole block)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderBusyError(
                f"{folder} is in use by another {what} ({holder}): wait for it to finish, "
                "or choose another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        handle.close()
