"""Embedding sets and the pixel baselines: loading and aligning exports, fold-wise PCA."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PixelSource:
    """Pixels as a baseline: reduced by PCA fitted inside each training fold only.

    ``source``: an export path or ``(ids, pixels (n, N * D), catalogue)`` of the
    scaled pixel values as patches (see :func:`astropt.embed.export_pixels`);
    ``normalise``: apply the model's per-patch normalisation first (``D`` values
    per patch, ``token_dim``; default from the export's manifest).
    """

    source: object
    normalise: bool = False
    token_dim: int | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray, pd.DataFrame | None]:
        ids, pixels, catalogue = _load(self.source)
        if not self.normalise:
            return ids, pixels, catalogue
        import torch

        from astropt.tokens import normalise_patches

        token_dim = self.token_dim
        if token_dim is None and isinstance(self.source, (str, Path)):
            from astropt.embed import read_manifest

            token_dim = ((read_manifest(self.source) or {}).get("meta") or {}).get("token_dim")
        if not token_dim:
            raise ValueError("normalised pixels need token_dim (values per patch)")
        patches = torch.tensor(pixels, dtype=torch.float32).reshape(len(ids), -1, token_dim)
        normalised, _, _ = normalise_patches(patches)
        return ids, normalised.reshape(len(ids), -1).numpy(), catalogue


def _load(source) -> tuple[np.ndarray, np.ndarray, pd.DataFrame | None]:
    if isinstance(source, PixelSource):
        return source.load()
    if isinstance(source, (str, Path)):
        from astropt.embed import read_embeddings

        return read_embeddings(source)
    ids, features, *rest = source
    catalogue = rest[0] if rest else None
    return np.asarray(ids), np.asarray(features, dtype=np.float32), catalogue


def load_embedding_sets(
    embeddings: Mapping[str, object],
) -> tuple[np.ndarray, dict[str, np.ndarray], pd.DataFrame]:
    """Load and align several embedding sets on their common ids.

    ``embeddings``: name -> export path, ``(ids, features (n, d), catalogue)``
    or :class:`PixelSource`; the first entry is the primary one (its catalogue
    and id order are used; ``None`` entries are skipped). Returns ``(ids,
    {name: features}, catalogue)`` with every feature matrix in the order of ``ids``.
    """
    loaded = {name: _load(src) for name, src in embeddings.items() if src is not None}
    if not loaded:
        raise ValueError("no embeddings given")
    primary = next(iter(loaded))
    _warn_mixed_preprocessing(loaded)
    ids, _, catalogue = loaded[primary]
    if catalogue is None:
        catalogue = pd.DataFrame(index=pd.Index(ids, name="id"))
    common = pd.Index(ids)
    if common.has_duplicates:
        raise ValueError(f"embedding set {primary!r} has duplicate ids")
    for name, (other_ids, _, _) in loaded.items():
        other = pd.Index(other_ids)
        if other.has_duplicates:
            raise ValueError(f"embedding set {name!r} has duplicate ids")
        if len(other) != len(common) or not other.isin(common).all():
            missing = (~common.isin(other)).sum()
            warnings.warn(
                f"embedding set {name!r} covers a different set of galaxies "
                f"({missing} of the primary's are missing); probing their common ids",
                stacklevel=2,
            )
        common = common[common.isin(other)]
    keep = pd.Index(ids).get_indexer(common)
    features = {}
    for name, (other_ids, feats, _) in loaded.items():
        features[name] = np.ascontiguousarray(feats[pd.Index(other_ids).get_indexer(common)])
    catalogue = catalogue.iloc[keep].reset_index(drop=True)
    return np.asarray(common), features, catalogue


def _warn_mixed_preprocessing(loaded: Mapping[str, tuple]) -> None:
    """Warn when exports that record their preprocessing (``catalogue.attrs``, from
    :func:`astropt.export.read_embeddings`) were made with different preprocessing."""
    records = {
        name: catalogue.attrs.get("preprocessing")
        for name, (_, _, catalogue) in loaded.items()
        if catalogue is not None and catalogue.attrs.get("preprocessing") is not None
    }
    if not records:
        return
    first, reference = next(iter(records.items()))
    for name, record in records.items():
        if record != reference:
            differences = ", ".join(record.differences(reference, other_is=f"{first!r} has"))
            warnings.warn(
                f"embedding sets {name!r} and {first!r} were made with different preprocessing "
                f"({differences}): their scores compare the inputs as well as the models",
                stacklevel=3,
            )


#: Up to this many galaxies, :class:`FoldPCA` diagonalises the galaxies' Gram matrix
#: (float64, 8 bytes x rows^2: 512 MiB at the limit); above it, a randomised PCA per fold.
GRAM_MAX_ROWS = 8192


class FoldPCA:
    """The first ``components`` principal components of ``x``, refitted on each training fold.

    ``x``: ``(n, d)`` features. Calling with ``train_rows`` fits the PCA on those
    rows only and projects every row: ``(n, k)`` float32, ``k = min(components,
    len(train_rows) - 1, d)`` (centred training rows span at most ``len - 1``
    directions; a further component is numerical noise that standardisation
    would blow up).

    With many more values than galaxies (pixels: ``d`` = 12288 for a 64x64 grz
    stamp, ``n`` about a thousand) the exact PCA of a fold comes from the
    galaxies' Gram matrix ``x x^T``, computed once: the fold's centred training
    block (training rows only) is diagonalised, and each row is projected through
    its centred inner products with the training rows,
    ``(x_i - mu) . v_k = sum_j (x_i - mu) . (x_j - mu) u_jk / sqrt(lambda_k)``.
    This is the PCA of the training rows exactly (a linear-kernel PCA), costs
    one ``n x n x d`` product for all folds instead of a ``d``-wide
    factorisation per fold, and no row outside ``train_rows`` enters the
    components. Otherwise (``d <= n`` or ``n >`` :data:`GRAM_MAX_ROWS`), scikit-learn's
    PCA is fitted on the training rows.
    """

    def __init__(self, x: np.ndarray, components: int, seed: int = 0):
        self.x = x
        self.components = components
        self.seed = seed
        self._gram: np.ndarray | None = None

    @property
    def uses_gram(self) -> bool:
        n, d = self.x.shape
        return d > n and n <= GRAM_MAX_ROWS

    def _n_components(self, n_train: int) -> int:
        return min(self.components, n_train - 1, self.x.shape[1])

    def __call__(self, train_rows: np.ndarray) -> np.ndarray:
        train_rows = np.asarray(train_rows)
        k = self._n_components(len(train_rows))
        if not self.uses_gram:
            from sklearn.decomposition import PCA

            solver = "full" if self.x.shape[1] <= len(train_rows) else "randomized"
            pca = PCA(n_components=k, svd_solver=solver, random_state=self.seed)
            pca.fit(self.x[train_rows])
            return pca.transform(self.x).astype(np.float32)
        from scipy.linalg import eigh

        if self._gram is None:
            x = self.x.astype(np.float64, copy=False)
            self._gram = x @ x.T
        gram = self._gram
        cross = gram[:, train_rows]  # (n, n_train): x_i . x_j
        row_mean = cross.mean(axis=1)  # x_i . mu for every row i
        centred = (
            cross - row_mean[:, None] - row_mean[train_rows][None, :] + row_mean[train_rows].mean()
        )  # (x_i - mu) . (x_j - mu)
        block = centred[train_rows]
        block = (block + block.T) / 2  # exactly symmetric for the eigensolver
        n_train = len(train_rows)
        values, vectors = eigh(block, subset_by_index=[n_train - k, n_train - 1])
        values, vectors = values[::-1], vectors[:, ::-1]  # largest first
        # Directions with no variance (rank-deficient training rows) project to zero.
        scale = np.where(values > values[0] * 1e-12, 1.0 / np.sqrt(np.maximum(values, 1e-300)), 0.0)
        return (centred @ vectors * scale).astype(np.float32)


def reduce_features(
    x: np.ndarray, train_rows: np.ndarray, components: int | None, seed: int = 0
) -> np.ndarray:
    """``x`` itself, or its first ``components`` principal components fitted on ``train_rows`` only.

    The PCA never sees a row outside ``train_rows``; it projects every row
    (:class:`FoldPCA`; several folds of one ``x``: keep one ``FoldPCA``).
    """
    if components is None:
        return x
    return FoldPCA(x, components, seed)(train_rows)


def discover_embeddings(path: str | Path) -> dict[str, object]:
    """The model's export and the baselines found beside it (None where absent).

    ``{"model": path, "pixels": PixelSource, "pixels-normalised": PixelSource,
    "random-init": path, "morphometrics": path}``: both pixel baselines read the
    one pixel export (:func:`astropt.embed.baseline_paths`).
    """
    from astropt.embed import baseline_paths

    paths = baseline_paths(path)
    pixels = paths["pixels"] if paths["pixels"].exists() else None
    found: dict[str, object] = {"model": Path(path)}
    found["pixels"] = PixelSource(pixels) if pixels else None
    found["pixels-normalised"] = PixelSource(pixels, normalise=True) if pixels else None
    for name in ("random-init", "morphometrics"):
        found[name] = paths[name] if paths[name].exists() else None
    return found
