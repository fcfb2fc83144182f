"""Write ``tests/golden/simulate_17ea644.npz`` for ``tests/test_simulate_golden.py``.

Usage: ``python tests/make_simulate_golden.py`` from a git checkout.

The values come from the simulator as it was before the package split: the
single-file ``astropt/simulate.py`` of commit 17ea6442, read from git history
into a scratch folder and imported on its own (it needs only numpy, scipy,
astropy, pyarrow, Pillow and datasets), then summarised by the test's own
``summarise``. Rerunning it on another machine writes the same values up to the
last-bit rounding the test tolerates.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

COMMIT = "17ea6442143412381de4f9441e0caa63add3f653"
TESTS = Path(__file__).resolve().parent


def old_simulator(scratch: Path):
    """The module ``astropt/simulate.py`` of :data:`COMMIT`, imported from ``scratch``."""
    source = subprocess.run(
        ["git", "show", f"{COMMIT}:astropt/simulate.py"],
        cwd=TESTS.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = scratch / "simulate_17ea644.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("simulate_17ea644", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def main() -> None:
    sys.path.insert(0, str(TESTS))
    from test_simulate_golden import GOLDEN, summarise

    with tempfile.TemporaryDirectory() as tmp:
        values = summarise(old_simulator(Path(tmp)), Path(tmp))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN, **values)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1024:.0f} KiB, {len(values)} arrays)")


if __name__ == "__main__":
    main()
