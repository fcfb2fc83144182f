"""The synthetic survey is byte-identical across restructures of the simulator (issue 16).

The digests below are not the code's own output of today: they were printed by the
single-file ``astropt/simulate.py`` at commit 17ea6442 (main before it became the package
``astropt/simulate/``), with numpy 2.4.6, scipy 1.17.1, pyarrow 26.0.1, Pillow 13.0.0. The
package must draw from each galaxy's random stream in the same order and render the same
pixels, so any change here is a change of the survey (or of those libraries: the JPEG
bytes depend on Pillow's libjpeg), not a refactor.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from astropt.simulate import LABEL_COLUMNS, make_stamps, sample_population, write_survey

POPULATION_SHA256 = "cb72bdd65d3e66df96a8bae6d338ca5cbc3e4a20ec9a61cf630920b9248451c3"
SURVEY_64PX_FLOAT_SHA256 = {
    "labels": "891442cbdb31ab4958c064b51cc8eadcc0ef1fb7f91b3f0b54d8cfa31c4b606f",
    "jpeg": "3ae3c85825367047e18d95207510cbed376315b5ade2dd2bd8fcc18184eccd40",
    "pixels": "66fd2987060a9940c7a4578ccfe9b75844b0a09a954ea4c10381135703f54430",
    "flux_grz": "c650e53ea71637b5bfe316764f5b42f6178f1e1cf97033f1378394e9f1f640df",
    "survey.json": "bf7fb6bca7c88f73d4056f3c1959fe754297f46ae864c16b28c946a3d4401387",
}
SURVEY_128PX_SHA256 = {
    "labels": "c687451ae6dc9926e7fb4179c6121ca1892cb84b8a5875752320924d3afd3af7",
    "jpeg": "91f910da4411baf5e2c3904d98708ae5c68fa370869a7b1a73daeb8d883ff412",
    "pixels": "8bf88500dcca20ef1b9c74f8d4a9b5889aded969b1e99981889652890eba9f21",
    "survey.json": "851daae247f70f34f181880a78e1a7b1a7149f85dffca9b71a492d2bfa84a1fd",
}
STAMPS_SHA256 = "6a9bb3a253dcbbe9a161996b6ccd928392e90dceba0f615e52d6269f7087340b"


def _update(h, name: str, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
    h.update(a.tobytes())


def _survey_digests(out, meta) -> dict[str, str]:
    tables = [
        pq.read_table(out / name) for split in meta["shards"] for name in meta["shards"][split]
    ]
    labels, jpeg, pixels, flux = (hashlib.sha256() for _ in range(4))
    for t in tables:
        for name in LABEL_COLUMNS:
            _update(labels, name, t.column(name).to_numpy())
        for cell in t.column("image").to_pylist():
            jpeg.update(cell["bytes"])
            _update(pixels, "rgb", np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")))
        if "flux_grz" in t.column_names:
            _update(flux, "flux", np.stack(t.column("flux_grz").to_numpy(zero_copy_only=False)))
    out_digests = {
        "labels": labels.hexdigest(),
        "jpeg": jpeg.hexdigest(),
        "pixels": pixels.hexdigest(),
        "survey.json": hashlib.sha256((out / "survey.json").read_bytes()).hexdigest(),
    }
    if meta["flux_grz"] is not None:
        out_digests["flux_grz"] = flux.hexdigest()
    return out_digests


def test_population_is_unchanged():
    params = sample_population(64, np.random.default_rng(2024))
    h = hashlib.sha256()
    for name in sorted(params):
        _update(h, name, params[name])
    assert h.hexdigest() == POPULATION_SHA256


def test_stamps_are_unchanged():
    rgb, flux, labels = make_stamps(12, 96, seed=5, start=30)
    h = hashlib.sha256()
    _update(h, "rgb", rgb)
    _update(h, "flux", flux)
    for name in LABEL_COLUMNS:
        _update(h, name, labels[name])
    assert h.hexdigest() == STAMPS_SHA256


def test_survey_with_float_bands_is_unchanged(tmp_path):
    meta = write_survey(tmp_path, 64, 64, seed=7, float_bands=True, shard_size=16, progress=False)
    assert _survey_digests(tmp_path, meta) == SURVEY_64PX_FLOAT_SHA256


def test_survey_at_128px_is_unchanged(tmp_path):
    meta = write_survey(tmp_path, 20, 128, seed=3, progress=False)
    assert _survey_digests(tmp_path, meta) == SURVEY_128PX_SHA256
