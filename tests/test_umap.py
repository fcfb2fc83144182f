"""UMAP maps: one panel per property plus stamps, deterministic coordinates."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from astropt.maps import fit_umap, make_maps, pick_stamps

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # umap-learn compiles its numba kernels on first use


def clusters(n: int = 240, d: int = 16, seed: int = 0):
    """Three well separated clusters; ``group`` says which, ``mass`` grows with it."""
    rng = np.random.default_rng(seed)
    group = np.arange(n) % 3
    centres = rng.normal(scale=8.0, size=(3, d))
    x = (centres[group] + rng.normal(size=(n, d))).astype(np.float32)
    catalogue = pd.DataFrame(
        {"mass": group + rng.normal(scale=0.1, size=n), "is_disc": group == 1, "galaxy10": group}
    )
    ids = np.arange(n) + 500
    thumbs = np.broadcast_to(
        (group * 100).astype(np.uint8)[:, None, None, None], (n, 6, 6, 3)
    ).copy()
    return ids, x, catalogue, thumbs


@pytest.fixture(scope="module")
def data():
    return clusters()


def test_coordinates_are_deterministic_for_a_seed(data):
    _, x, _, _ = data
    first = fit_umap(x, seed=0)
    assert first.shape == (len(x), 2) and first.dtype == np.float32
    np.testing.assert_array_equal(first, fit_umap(x, seed=0))
    assert not np.array_equal(first, fit_umap(x, seed=1))


def test_one_panel_per_property_plus_stamps_from_the_export(data, tmp_path):
    ids, x, catalogue, thumbs = data
    table = pa.table(
        {
            "id": ids,
            **{c: catalogue[c].to_numpy() for c in catalogue.columns},
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
            "thumbnail": pa.FixedSizeListArray.from_arrays(
                pa.array(thumbs.ravel()), int(np.prod(thumbs.shape[1:]))
            ),
        }
    )
    path = tmp_path / "emb.parquet"
    pq.write_table(table, path)
    result = make_maps(path, tmp_path / "umap.png", ["mass", "is_disc", "galaxy10"], seed=0)
    assert result.titles == ["mass", "is_disc", "galaxy10", "example galaxies"]
    assert result.n_panels == 4
    assert result.path.stat().st_size > 0
    coords = pd.read_csv(result.coords_path)
    np.testing.assert_array_equal(coords.id, ids)
    # Stamps sit in distinct cells of the map, each cluster is represented.
    assert 3 <= len(result.stamp_ids) <= 64
    assert {int(i - 500) % 3 for i in result.stamp_ids} == {0, 1, 2}
    # Well separated clusters stay apart in the map.
    centre = np.stack([result.coords[catalogue.galaxy10 == g].mean(axis=0) for g in range(3)])
    spread = max(result.coords[catalogue.galaxy10 == g].std(axis=0).max() for g in range(3))
    gaps = [np.linalg.norm(centre[a] - centre[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 2 * spread

    two = make_maps((ids, x, catalogue), None, ["mass", "galaxy10"], seed=0, stamps=False)
    assert two.n_panels == 2 and two.path is None
    np.testing.assert_array_equal(two.coords, result.coords)


def test_pick_stamps_one_per_occupied_cell():
    coords = np.array([[0.0, 0.0], [0.1, 0.1], [0.9, 0.9], [1.0, 1.0], [0.05, 0.9]])
    rows = pick_stamps(coords, grid=2)
    assert len(rows) == 3  # three of the four cells hold galaxies
    assert 4 in rows  # alone in its cell


def test_command_line(data, tmp_path):
    ids, x, catalogue, _ = data
    frame = catalogue.assign(id=ids, embedding=list(x))
    frame.to_parquet(tmp_path / "plain.parquet")
    cli = runpy.run_path(str(REPO / "probe" / "umap_maps.py"), run_name="umap_cli")
    out = tmp_path / "maps" / "umap.png"
    with pytest.warns(UserWarning, match="stamp panel"):
        assert cli["main"]([str(tmp_path / "plain.parquet"), "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "maps" / "umap_coords.csv").is_file()
