"""Linear probes of galaxy embeddings, with honest baselines and intervals.

The probe suite answers the question the way the field does (AstroPT, Zoobot):
for each catalogue property, fit a *linear* model from embedding to property
on labelled galaxies and score it on other galaxies; compare with baselines
that had no pretraining, on the same galaxies and the same folds; watch how the
score grows with the number of labels.

Protocol (``protocol="repeated"``, the default):

* Repeated k-fold over the whole labelled set (5 folds x 3 repeats),
  stratified by a class column (``galaxy10`` when present) or by quantile bins
  of the first regression target. The folds depend only on the *set* of ids
  and the seed, so every embedding set meets the same galaxies.
* Inside each training fold, and only there: feature standardisation, the
  PCA of pixel baselines (:class:`PixelSource`), and the hyper-parameter
  (ridge strength, chosen by an inner k-fold CV).
* Regression targets: ridge; headline R^2 (plus NMAD, MAE, Spearman).
  Classification targets (booleans, small integer columns such as ``galaxy10``,
  vote fractions thresholded at 0.5): class-balanced ridge classifier (one
  column per class, rows weighted by inverse class frequency, as scikit-learn's
  ``RidgeClassifier(class_weight="balanced")``); headline balanced accuracy.
  Circular targets (position angles, period 180 deg): ridge on
  ``(cos 2 theta, sin 2 theta)``; headline mean angular error in degrees.
* Every galaxy gets one out-of-fold prediction per repeat. A score is computed
  on the pooled out-of-fold predictions of a repeat and averaged over repeats.
  Intervals are 95% percentile intervals of a bootstrap over *galaxies* (the
  same resampled galaxies for every embedding set, target and repeat, so
  differences are paired); they describe how much the scores would move with
  another sample of test galaxies of the same size.
* ``improvement`` is model minus baseline for higher-is-better scores and
  baseline minus model for errors, so positive always means the model is
  better. A *win* is an improvement whose interval lies above zero, a *loss*
  one whose interval lies below, anything else a *tie*.
* Targets that measure the same thing form a *family* (:data:`FAMILIES`); a
  family's headline is the mean headline score of its members of the family's
  first task, with its own bootstrap interval.

``protocol="astropt"`` reproduces AstroPT's probe for comparison with its
paper: 5-fold (not repeated, not stratified) ridge with a fixed ``alpha = 100``
on standardised features (classes: the ridge classifier with the same alpha).

Entry point: :func:`run_probe_suite` (also behind ``probe/linear_probe.py`` and
``probe/linear_probe.ipynb``).
"""

from __future__ import annotations

import json
import math
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from astropt.options import Command, run_command

Task = Literal["regression", "classification", "circular"]
HEADLINE = {
    "regression": "r2",
    "classification": "balanced_accuracy",
    "circular": "angular_error",
}
#: Headline metrics where smaller is better (errors); the others grow with quality.
LOWER_IS_BETTER = ("angular_error", "median_angular_error", "nmad", "mae")
METRICS = {
    "regression": ("r2", "nmad", "mae", "spearman"),
    "classification": ("accuracy", "balanced_accuracy", "macro_f1"),
    "circular": ("angular_error", "median_angular_error"),
}
RIDGE_ALPHAS = 10.0 ** np.arange(-2.0, 6.01, 0.5)
DEFAULT_LABEL_SIZES: tuple[int | None, ...] = (30, 100, 300, 1000, 3000, None)  # None = all
# AstroPT's probe targets (absolute magnitudes, sSFR, stellar mass, redshift, Galaxy
# Zoo answers) as the synthetic survey names them; label-efficiency curves default to these.
HEADLINE_TARGETS = (
    "mag_abs_g",
    "mag_abs_z",
    "log_ssfr",
    "log_mstar",
    "redshift",
    "smooth_frac>0.5",
    "is_edge_on",
    "has_spiral",
    "is_artefact",
    "galaxy10",
)
CATEGORICAL_COLUMNS = ("galaxy10",)
#: Angle columns (degrees) and their period: an orientation repeats every 180 deg.
CIRCULAR_COLUMNS = {"pos_angle": 180.0, "position_angle": 180.0, "pa": 180.0}
MAX_CLASSES = 10
#: Targets that measure the same thing, as the synthetic survey names them. A
#: family's headline averages its members of the first member's task; targets
#: not listed are families of their own (a ``col>t`` threshold joins ``col``'s).
FAMILIES: dict[str, tuple[str, ...]] = {
    "redshift": ("redshift",),
    "stellar mass & luminosity": ("log_mstar", "mag_abs_g", "mag_abs_r", "mag_abs_z"),
    "apparent magnitude": ("mag_g", "mag_r", "mag_z"),
    "star formation": ("log_ssfr",),
    "colour": ("g_r", "r_z"),
    "size": ("r_half_arcsec",),
    "bulge & concentration": ("bulge_frac", "bulge_frac>0.5", "sersic_n"),
    "smoothness": ("smooth_frac", "smooth_frac>0.5"),
    "inclination": ("axis_ratio", "is_edge_on"),
    "orientation": ("pos_angle",),
    "seeing": ("seeing_fwhm_r",),
    "bar": ("has_bar",),
    "spiral arms": ("has_spiral", "arm_count", "arm_pitch_deg"),
    "merger": ("is_merger",),
    "artefact": ("is_artefact",),
    "galaxy10 class": ("galaxy10",),
}


@dataclass(frozen=True)
class Protocol:
    """How galaxies are split and probes fitted (see the module docstring)."""

    name: str = "repeated"
    folds: int = 5
    repeats: int = 3
    stratified: bool = True
    inner_folds: int = 5  # CV inside each training fold to choose the ridge strength
    alpha: float | None = None  # a fixed ridge strength instead of the inner CV
    n_boot: int = 1000  # bootstrap resamples of the galaxies

    @property
    def alphas(self) -> np.ndarray:
        return RIDGE_ALPHAS if self.alpha is None else np.array([float(self.alpha)])


PROTOCOLS = {
    "repeated": Protocol(),
    "astropt": Protocol("astropt", folds=5, repeats=1, stratified=False, alpha=100.0),
}


def resolve_protocol(protocol: str | Protocol, **overrides) -> Protocol:
    """A :class:`Protocol` by name (``"repeated"``, ``"astropt"``) with field overrides."""
    import dataclasses

    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        protocol = PROTOCOLS[protocol]
    return dataclasses.replace(protocol, **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """One probe target: a catalogue column, how to read it, and which task it is."""

    name: str  # as reported, e.g. "redshift" or "smooth_frac>0.5"
    column: str
    task: Task
    threshold: float | None = None  # classification of column > threshold
    period: float | None = None  # circular targets: the angle's period in its own unit

    def values(self, catalogue: pd.DataFrame) -> np.ndarray:
        """Float targets (NaN = missing) for regression and angles; class labels (-1 = missing)."""
        raw = catalogue[self.column]
        if self.task in ("regression", "circular"):
            return pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if self.threshold is not None:
            numbers = pd.to_numeric(raw, errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            labels = (numbers > self.threshold).astype(np.int64)
            labels[np.isnan(numbers)] = -1
            return labels
        codes, _ = pd.factorize(raw, sort=True)  # NaN -> -1
        return codes.astype(np.int64)

    @property
    def family(self) -> str:
        """The family this target belongs to (:data:`FAMILIES`), else its column's name."""
        for family, members in FAMILIES.items():
            if self.name in members:
                return family
        for family, members in FAMILIES.items():
            if self.column in members:
                return family
        return self.column


def _is_id_column(name: str) -> bool:
    lowered = name.lower()
    return (
        lowered in ("id", "objid", "index") or lowered.endswith("_id") or lowered.startswith("id_")
    )


def _is_vote_fraction(name: str, values: pd.Series) -> bool:
    lowered = name.lower()
    if not any(key in lowered for key in ("frac", "fraction", "vote")):
        return False
    finite = values.dropna()
    return len(finite) > 0 and finite.min() >= 0.0 and finite.max() <= 1.0


def auto_targets(catalogue: pd.DataFrame, max_classes: int = MAX_CLASSES) -> list[Target]:
    """Every numeric catalogue column except ids, with its task.

    Booleans, ``galaxy10`` and integer columns with at most ``max_classes``
    distinct values are classification; position angles
    (:data:`CIRCULAR_COLUMNS`) are circular; other numbers are regression.
    Vote fractions (a ``frac``/``fraction``/``vote`` column within [0, 1]) are
    also probed as the classification ``column>0.5``. Constant columns are skipped.
    """
    targets: list[Target] = []
    for name in catalogue.columns:
        series = catalogue[name]
        if _is_id_column(str(name)) or series.nunique(dropna=True) < 2:
            continue
        if pd.api.types.is_bool_dtype(series):
            targets.append(Target(name, name, "classification"))
        elif str(name).lower() in CIRCULAR_COLUMNS and pd.api.types.is_numeric_dtype(series):
            targets.append(Target(name, name, "circular", period=CIRCULAR_COLUMNS[name.lower()]))
        elif pd.api.types.is_integer_dtype(series):
            few = series.nunique() <= max_classes
            is_class = few or name in CATEGORICAL_COLUMNS
            targets.append(Target(name, name, "classification" if is_class else "regression"))
        elif pd.api.types.is_float_dtype(series):
            if name in CATEGORICAL_COLUMNS:
                targets.append(Target(name, name, "classification"))
                continue
            targets.append(Target(name, name, "regression"))
            if _is_vote_fraction(str(name), series):
                targets.append(Target(f"{name}>0.5", name, "classification", 0.5))
    return targets


def parse_target(spec: str, catalogue: pd.DataFrame) -> Target:
    """``"col"`` (task inferred), ``"col>0.5"`` (thresholded), ``"col:regression"``,
    ``"col:classification"`` or ``"col:circular=180"`` (an angle with its period)."""
    if ">" in spec:
        column, _, threshold = spec.partition(">")
        _require_column(column, catalogue)
        return Target(spec, column, "classification", float(threshold))
    column, _, task = spec.partition(":")
    _require_column(column, catalogue)
    if task.startswith("circular"):
        _, _, period = task.partition("=")
        return Target(column, column, "circular", period=float(period or 180.0))
    if task:
        if task not in get_args(Task):
            raise ValueError(
                f"target task must be regression, classification or circular, got {task!r}"
            )
        return Target(column, column, task)  # type: ignore[arg-type]
    found = [t for t in auto_targets(catalogue[[column]]) if t.name == column]
    if not found:
        raise ValueError(f"column {column!r} is not a numeric property with at least two values")
    return found[0]


def _require_column(column: str, catalogue: pd.DataFrame) -> None:
    if column not in catalogue.columns:
        import difflib

        near = difflib.get_close_matches(column, [str(c) for c in catalogue.columns], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise KeyError(f"no catalogue column {column!r}{hint}")


def resolve_targets(
    targets: Sequence[str | Target] | None, catalogue: pd.DataFrame
) -> list[Target]:
    """``None``: :func:`auto_targets`; else each spec through :func:`parse_target`."""
    if targets is None:
        return auto_targets(catalogue)
    return [t if isinstance(t, Target) else parse_target(t, catalogue) for t in targets]


def families_of(targets: Sequence[Target]) -> dict[str, list[Target]]:
    """Family name -> its targets present, families in :data:`FAMILIES` order, then the rest."""
    grouped: dict[str, list[Target]] = {}
    order = {name: i for i, name in enumerate(FAMILIES)}
    for t in sorted(targets, key=lambda t: order.get(t.family, len(order))):
        grouped.setdefault(t.family, []).append(t)
    for family, members in grouped.items():
        listed = FAMILIES.get(family, ())
        rank = {name: i for i, name in enumerate(listed)}
        members.sort(key=lambda t: rank.get(t.name, len(rank)))
    return grouped


def family_headline(members: Sequence[Target]) -> list[Target]:
    """The members a family's headline averages: those of its first member's task."""
    return [t for t in members if t.task == members[0].task]


# --------------------------------------------------------------------------- data
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


def fold_plan(
    ids: np.ndarray,
    protocol: Protocol,
    strata: np.ndarray | None = None,
    seed: int = 0,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``[(repeat, train_rows, test_rows), ...]``: every row is tested once per repeat.

    Rows are ordered by id before splitting, so the folds depend only on the
    *set* of ids (and ``strata``, ``seed``), not on the order of the rows.
    ``strata``: labels to stratify on (None, or ``protocol.stratified`` False: plain k-fold).
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    ids = np.asarray(ids)
    order = np.argsort(ids, kind="stable")
    k = protocol.folds
    if not 2 <= k <= len(ids):
        raise ValueError(f"{k} folds need between 2 and {len(ids)} galaxies per fold")
    plan = []
    for repeat in range(protocol.repeats):
        state = seed + repeat
        if protocol.stratified and strata is not None:
            splits = StratifiedKFold(k, shuffle=True, random_state=state).split(
                order, strata[order]
            )
        else:
            splits = KFold(k, shuffle=True, random_state=state).split(order)
        for train, test in splits:
            plan.append((repeat, np.sort(order[train]), np.sort(order[test])))
    return plan


def _strata(targets: list[Target], values: dict[str, np.ndarray], folds: int) -> tuple:
    """Labels to stratify the folds on, and what they are (a class column, else quantile bins)."""
    classes = [t for t in targets if t.task == "classification"]
    classes.sort(key=lambda t: t.column not in CATEGORICAL_COLUMNS)
    for t in classes:
        labels = values[t.name]
        if (labels >= 0).all() and np.unique(labels, return_counts=True)[1].min() >= folds:
            return labels, t.name
    for t in targets:
        y = values[t.name]
        if t.task == "regression" and not np.isnan(y).any():
            edges = np.quantile(y, [0.2, 0.4, 0.6, 0.8])
            return np.searchsorted(edges, y), f"quintiles of {t.name}"
    return None, None


# --------------------------------------------------------------------------- metrics
def nmad(residuals: np.ndarray) -> float:
    """Normalised median absolute deviation ``1.4826 * median(|r - median(r)|)`` (a robust std)."""
    residuals = np.asarray(residuals, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(residuals - np.median(residuals))))


def angular_error(pred: np.ndarray, truth: np.ndarray, period: float = 180.0) -> np.ndarray:
    """Absolute difference of two angles on a circle of ``period`` (same unit), in [0, period/2]."""
    diff = np.abs(np.asarray(pred, np.float64) - np.asarray(truth, np.float64)) % period
    return np.minimum(diff, period - diff)


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score

    rho = spearmanr(y, pred).statistic if np.std(pred) > 0 else 0.0
    return {
        "r2": float(r2_score(y, pred)),
        "nmad": nmad(pred - y),
        "mae": float(mean_absolute_error(y, pred)),
        "spearman": float(rho),
    }


def classification_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes in ``y``) and macro F1
    (over the classes in ``y`` or ``pred``), as scikit-learn defines them; in numpy
    because the inner CV scores thousands of small predictions."""
    y, pred = np.asarray(y), np.asarray(pred)
    classes = np.union1d(y, pred)
    truth = y[:, None] == classes[None]
    guess = pred[:, None] == classes[None]
    hits = (truth & guess).sum(axis=0)
    support, predicted = truth.sum(axis=0), guess.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = hits / support
        f1 = np.where(support + predicted > 0, 2 * hits / (support + predicted), 0.0)
    return {
        "accuracy": float((y == pred).mean()),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(f1.mean()),
    }


def circular_metrics(y: np.ndarray, pred: np.ndarray, period: float) -> dict[str, float]:
    errors = angular_error(pred, y, period)
    return {
        "angular_error": float(errors.mean()),
        "median_angular_error": float(np.median(errors)),
    }


def _metrics(target: Target, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    if target.task == "regression":
        return regression_metrics(y, pred)
    if target.task == "circular":
        return circular_metrics(y, pred, target.period or 180.0)
    return classification_metrics(y, pred.astype(np.int64))


def weighted_headline(
    target: Target, y: np.ndarray, pred: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """The headline metric of ``pred`` against ``y`` (``(m,)``) under each row of ``weights``.

    ``weights``: ``(B, m)`` non-negative counts (a bootstrap resample per row;
    a row of ones gives the plain metric). Returns ``(B,)``: R^2, balanced
    accuracy (mean recall over the classes present) or mean angular error.
    """
    weights = np.asarray(weights, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if target.task == "regression":
            total = weights.sum(axis=1)
            mean = weights @ y / total
            ss_tot = weights @ (y * y) - total * mean * mean
            ss_res = weights @ ((y - pred) ** 2)
            return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)
        if target.task == "circular":
            return weights @ angular_error(pred, y, target.period or 180.0) / weights.sum(axis=1)
        classes = np.unique(y)
        is_class = (y[:, None] == classes[None]).astype(np.float64)
        hits = is_class * (pred[:, None] == classes[None])
        recall = (weights @ hits) / (weights @ is_class)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample without some class
            return np.nanmean(recall, axis=1)


# --------------------------------------------------------------------------- probes
def _scaling(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each feature of ``train`` (std 1 for constant features)."""
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale[scale < 1e-12] = 1.0  # constant features carry nothing; avoid dividing by 0
    return mean, scale


def _standardise(train: np.ndarray, *others: np.ndarray):
    mean, scale = _scaling(train)
    return [(x - mean) / scale for x in (train, *others)]


def _ridge_path(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None):
    """Spectral pieces of centred (optionally row-weighted) ridge: any alpha is one small product.

    Returns ``(basis, eigenvalues, coeffs, x_mean, y_mean)`` such that the ridge
    predictions for ``alpha`` are
    ``((x_new - x_mean) @ basis) @ (coeffs / (eigenvalues + alpha)[:, None]) + y_mean``
    (:func:`_ridge_project`, :func:`_ridge_apply`): ``basis`` holds the
    eigenvectors of ``xc.T @ xc`` and ``coeffs = basis.T @ xc.T @ yc``. With at
    least as many rows as features, the ``d x d`` Gram matrix is diagonalised
    (a fraction of the cost of an SVD of the rows); with fewer, the rows' thin SVD.
    """
    if weights is None:
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - x_mean, y - y_mean
    else:
        total = weights.sum()
        x_mean, y_mean = weights @ x / total, weights @ y / total
        root = np.sqrt(weights)[:, None]
        xc, yc = (x - x_mean) * root, (y - y_mean) * root
    if xc.shape[0] >= xc.shape[1]:
        eigenvalues, basis = np.linalg.eigh(xc.T @ xc)
        eigenvalues = np.maximum(eigenvalues, 0.0)  # rounding below zero
        coeffs = basis.T @ (xc.T @ yc)
    else:
        u, singular, vt = np.linalg.svd(xc, full_matrices=False)
        basis, eigenvalues = vt.T, singular**2
        coeffs = singular[:, None] * (u.T @ yc)
    return basis, eigenvalues, coeffs, x_mean, y_mean


def _ridge_project(path, x_new: np.ndarray) -> np.ndarray:
    """``x_new`` in the path's eigenbasis: computed once, shared by every alpha."""
    basis, _, _, x_mean, _ = path
    return (x_new - x_mean) @ basis


def _ridge_apply(path, projected: np.ndarray, alpha: float) -> np.ndarray:
    _, eigenvalues, coeffs, _, y_mean = path
    return projected @ (coeffs / (eigenvalues + alpha)[:, None]) + y_mean


def _ridge_predict(path, x_new: np.ndarray, alpha: float) -> np.ndarray:
    return _ridge_apply(path, _ridge_project(path, x_new), alpha)


def ridge_cv(
    x: np.ndarray,
    y: np.ndarray,
    alphas: np.ndarray = RIDGE_ALPHAS,
    folds: int = 5,
    seed: int = 0,
):
    """Ridge regression of ``y (n, T)`` on ``x (n, d)`` with k-fold CV per target.

    Features are standardised with each training fold's statistics; the alpha
    with the least summed squared validation error is chosen per target, then
    the model is refitted on all rows. Returns ``(alpha (T,), coef (d, T),
    intercept (T,), predict)`` where ``predict(x_new) -> (m, T)`` applies the
    training standardisation. One factorisation per fold serves every alpha and target;
    with a single alpha there is nothing to choose and no CV runs.
    """
    from sklearn.model_selection import KFold

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    alphas = np.asarray(alphas, dtype=np.float64)
    k = min(folds, len(x))
    errors = np.zeros((len(alphas), y.shape[1]))
    if k >= 2 and len(alphas) > 1:
        for train, valid in KFold(k, shuffle=True, random_state=seed).split(x):
            xt, xv = _standardise(x[train], x[valid])
            path = _ridge_path(xt, y[train])
            projected = _ridge_project(path, xv)
            for i, alpha in enumerate(alphas):
                errors[i] += ((_ridge_apply(path, projected, alpha) - y[valid]) ** 2).sum(axis=0)
        best = alphas[np.argmin(errors, axis=0)]
    else:
        best = np.full(y.shape[1], alphas[0] if len(alphas) == 1 else 1.0)
    mean, scale = _scaling(x)
    basis, eigenvalues, coeffs, _, y_mean = _ridge_path((x - mean) / scale, y)
    coef = np.stack(
        [basis @ (coeffs[:, j] / (eigenvalues + a)) for j, a in enumerate(best)], axis=1
    )  # (d, T) on standardised features

    def predict(x_new: np.ndarray) -> np.ndarray:
        return ((np.asarray(x_new, dtype=np.float64) - mean) / scale) @ coef + y_mean

    return best, coef, y_mean, predict


def _balanced_path(x: np.ndarray, y: np.ndarray, classes: np.ndarray):
    """Ridge path of +-1 class indicators with rows weighted by inverse class frequency."""
    counts = (y[:, None] == classes[None]).sum(axis=0)
    weights = (len(y) / (len(classes) * counts))[np.searchsorted(classes, y)]
    indicators = np.where(y[:, None] == classes[None], 1.0, -1.0)
    return _ridge_path(x, indicators, weights)


def ridge_classifier_cv(
    x: np.ndarray,
    y: np.ndarray,
    alphas: np.ndarray = RIDGE_ALPHAS,
    folds: int = 5,
    seed: int = 0,
):
    """Class-balanced ridge classifier with alpha chosen by stratified k-fold CV.

    One ridge column of +-1 indicators per class on standardised features,
    rows weighted by inverse class frequency (scikit-learn's
    ``RidgeClassifier(class_weight="balanced")``); the class with the largest
    decision value wins. The alpha with the best pooled validation balanced
    accuracy is chosen (ties: the strongest); with fewer than two members in
    some class no CV runs (alpha 1, or the only alpha given). A fit is a few
    factorisations, so the repeated k-fold protocol stays fast where logistic
    regression took seconds per fit. Returns ``(alpha, predict)`` with
    ``predict(x_new) -> labels (m,)``.
    """
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    alphas = np.sort(np.asarray(alphas, dtype=np.float64))[::-1]  # strongest first
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        only = classes[0]
        return math.nan, lambda x_new: np.full(len(x_new), only)
    k = min(folds, int(counts.min()))
    best = alphas[0] if len(alphas) == 1 else 1.0
    if k >= 2 and len(alphas) > 1:
        pooled = np.empty((len(alphas), len(y)), dtype=y.dtype)
        for train, valid in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
            xt, xv = _standardise(x[train], x[valid])
            path = _balanced_path(xt, y[train], classes)
            projected = _ridge_project(path, xv)
            for i, alpha in enumerate(alphas):
                pooled[i, valid] = classes[_ridge_apply(path, projected, alpha).argmax(axis=1)]
        scores = [classification_metrics(y, p)["balanced_accuracy"] for p in pooled]
        best = float(alphas[int(np.argmax(scores))])
    mean, scale = _scaling(x)
    path = _balanced_path((x - mean) / scale, y, classes)

    def predict(x_new: np.ndarray) -> np.ndarray:
        standard = (np.asarray(x_new, dtype=np.float64) - mean) / scale
        return classes[_ridge_predict(path, standard, best).argmax(axis=1)]

    return best, predict


def _angle_columns(angles: np.ndarray, period: float) -> np.ndarray:
    phase = 2.0 * np.pi * angles / period
    return np.stack([np.cos(phase), np.sin(phase)], axis=1)


def _columns_to_angle(columns: np.ndarray, period: float) -> np.ndarray:
    return (np.arctan2(columns[:, 1], columns[:, 0]) * period / (2.0 * np.pi)) % period


def fit_predict(
    x_train: np.ndarray,
    x_test: np.ndarray,
    targets: Sequence[Target],
    values: Mapping[str, np.ndarray],
    train_rows: np.ndarray,
    protocol: Protocol,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, float]]:
    """Fit every target's probe on the labelled ``train_rows``; predict every test row.

    ``x_train``: features of ``train_rows`` (already reduced, if a baseline
    needs it); ``values``: target name -> values of *all* rows. Returns
    target name -> ``(predictions (m,), chosen alpha)``: values, class labels
    or angles in the target's period. Regression and circular targets with no
    missing training labels share one factorisation per inner fold.
    """
    out: dict[str, tuple[np.ndarray, float]] = {}
    batch, columns = [], []
    for t in targets:
        y = values[t.name][train_rows]
        if t.task == "classification":
            labelled = y >= 0
            if labelled.sum() < 2:
                continue
            alpha, predict = ridge_classifier_cv(
                x_train[labelled], y[labelled], protocol.alphas, protocol.inner_folds, seed
            )
            out[t.name] = (predict(x_test).astype(np.float64), alpha)
            continue
        y_cols = _angle_columns(y, t.period or 180.0) if t.task == "circular" else y[:, None]
        if not np.isnan(y).any():
            batch.append(t)
            columns.append(y_cols)
            continue
        labelled = ~np.isnan(y)
        if labelled.sum() < 3:
            continue
        alpha, _, _, predict = ridge_cv(
            x_train[labelled], y_cols[labelled], protocol.alphas, protocol.inner_folds, seed
        )
        out[t.name] = (_from_columns(t, predict(x_test)), float(np.median(alpha)))
    if batch:
        alpha, _, _, predict = ridge_cv(
            x_train, np.concatenate(columns, axis=1), protocol.alphas, protocol.inner_folds, seed
        )
        pred = predict(x_test)
        start = 0
        for t, cols in zip(batch, columns):
            width = cols.shape[1]
            chosen = float(np.median(alpha[start : start + width]))
            out[t.name] = (_from_columns(t, pred[:, start : start + width]), chosen)
            start += width
    return out


def _from_columns(target: Target, pred: np.ndarray) -> np.ndarray:
    if target.task == "circular":
        return _columns_to_angle(pred, target.period or 180.0)
    return pred[:, 0]


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


# --------------------------------------------------------------------------- suite
@dataclass
class ProbeRun:
    """Everything a probe suite computed (the DataFrames behind the report files)."""

    summary: pd.DataFrame  # one row per target: headline score of each embedding set
    families: pd.DataFrame  # one row per family: headline score of each embedding set
    scores: pd.DataFrame  # long: level, name, metric, embedding, value, ci_low, ci_high
    comparisons: pd.DataFrame  # long: level, name, model, baseline, improvement, ci, outcome
    results: pd.DataFrame  # long: embedding, target, task, metric, value, n, hyper
    label_efficiency: pd.DataFrame  # long: embedding, target, task, metric, n_labels, value
    folds: pd.DataFrame  # id, repeat, fold
    info: dict  # protocol and data facts for the report
    files: dict[str, Path]

    def headline(self) -> dict:
        """The run's result as JSON-able data: families and targets with intervals and outcomes."""
        return headline_data(self)


def run_probes(
    embeddings: Mapping[str, object],
    targets: Sequence[str | Target] | None = None,
    *,
    seed: int = 0,
    protocol: str | Protocol = "repeated",
    folds: int | None = None,
    repeats: int | None = None,
    n_boot: int | None = None,
    label_sizes: Iterable[int | None] | None = DEFAULT_LABEL_SIZES,
    label_targets: Sequence[str] | Literal["all"] | None = None,
    progress: bool = False,
    threads: int | None = 1,
    models: int = 1,
) -> ProbeRun:
    """Probe every target with every embedding set on shared folds (no files written).

    ``embeddings``: name -> export path, ``(ids, features, catalogue)`` or
    :class:`PixelSource` (reduced by PCA to the first set's dimension inside
    each training fold); the first is the model, the others baselines.
    ``models``: how many of the first sets are models; each is compared with
    every set after it (paired, on the same folds and resamples), so several
    models and their differences cost one pass over the folds. The report
    (:func:`write_report`) shows the first model's comparisons.
    ``targets``: specs for :func:`parse_target` (default: :func:`auto_targets`
    of the primary catalogue). ``protocol``: ``"repeated"`` or ``"astropt"``
    (:data:`PROTOCOLS`); ``folds``/``repeats``/``n_boot`` override its fields.
    ``label_sizes``: training-set sizes of the label-efficiency curves (on the
    first fold; ``None`` = all its training rows; nested random subsets from
    ``seed``); ``label_targets``: which targets get curves (default: the
    ``HEADLINE_TARGETS`` present, else the first eight; ``"all"``).
    ``threads``: BLAS threads for the fits (None = the library default; on busy
    or oversubscribed cores OpenBLAS threads make these small fits much slower).
    """
    from threadpoolctl import threadpool_limits

    chosen = resolve_protocol(protocol, folds=folds, repeats=repeats, n_boot=n_boot)
    if not 1 <= models <= len(embeddings):
        raise ValueError(f"models must be between 1 and {len(embeddings)}, got {models}")
    with threadpool_limits(limits=threads):
        return _run_probes(
            embeddings, targets, seed, chosen, label_sizes, label_targets, progress, models
        )


def _run_probes(
    embeddings, targets, seed, protocol: Protocol, label_sizes, label_targets, progress, models
) -> ProbeRun:
    ids, features, catalogue = load_embedding_sets(embeddings)
    target_list = resolve_targets(targets, catalogue)
    if not target_list:
        raise ValueError("no probe targets: the catalogue has no numeric columns with two values")
    values = {t.name: t.values(catalogue) for t in target_list}
    names = list(features)
    dim = features[names[0]].shape[1]
    reduce = {name: (dim if isinstance(embeddings[name], PixelSource) else None) for name in names}
    strata, strata_name = _strata(target_list, values, protocol.folds)
    plan = fold_plan(ids, protocol, strata, seed)

    # Out-of-fold predictions: set -> target -> (repeats, n), NaN where never predicted.
    preds = {
        name: {t.name: np.full((protocol.repeats, len(ids)), np.nan) for t in target_list}
        for name in names
    }
    hypers: dict[tuple[str, str], list[float]] = {}
    reducers = {name: FoldPCA(features[name], reduce[name], seed) for name in names if reduce[name]}
    for repeat, train, test in _progress(plan, progress, "probe folds"):
        for name in names:
            x = reducers[name](train) if name in reducers else features[name]
            fitted = fit_predict(x[train], x[test], target_list, values, train, protocol, seed)
            for target, (pred, alpha) in fitted.items():
                preds[name][target][repeat, test] = pred
                hypers.setdefault((name, target), []).append(alpha)

    weights = _bootstrap_weights(len(ids), protocol.n_boot, seed)
    draws: dict[tuple[str, str], np.ndarray] = {}  # (set, target) -> (1 + n_boot,) scores
    records = []
    for t in target_list:
        y = values[t.name]
        labelled = y >= 0 if t.task == "classification" else ~np.isnan(y)
        for name in names:
            pred = preds[name][t.name]
            if np.isnan(pred[:, labelled]).any() or labelled.sum() < 2:
                continue  # not every labelled galaxy got a prediction: too few labels to fit
            draws[name, t.name] = np.mean(
                [
                    weighted_headline(t, y[labelled], p[labelled], weights[:, labelled])
                    for p in pred
                ],
                axis=0,
            )
            point = pd.DataFrame(
                [_metrics(t, y[labelled], p[labelled]) for p in pred]
            ).mean()  # every metric on pooled out-of-fold predictions, averaged over repeats
            alpha = hypers.get((name, t.name), [math.nan])
            for metric in METRICS[t.task]:
                records.append(
                    {"embedding": name, "target": t.name, "task": t.task, "metric": metric,
                     "value": float(point[metric]), "n": int(labelled.sum()),
                     "hyper": float(np.nanmedian(alpha)) if np.isfinite(alpha).any() else math.nan}
                )  # fmt: skip
    results = pd.DataFrame.from_records(
        records, columns=["embedding", "target", "task", "metric", "value", "n", "hyper"]
    )
    scores, comparisons = _intervals(draws, target_list, names, models)
    folds = pd.DataFrame(
        [
            {"id": ids[row], "repeat": repeat, "fold": i % protocol.folds}
            for i, (repeat, _, test) in enumerate(plan)
            for row in test
        ]
    ).sort_values(["repeat", "id"], ignore_index=True)
    curves = _label_efficiency(
        features, reducers, target_list, values, plan[0], protocol, seed, label_sizes,
        _choose_label_targets(label_targets, target_list), progress,
    )  # fmt: skip
    info = {
        "protocol": asdict(protocol),
        "n_galaxies": len(ids),
        "embeddings": names,
        "pca_components": {name: k for name, k in reduce.items() if k is not None},
        "stratified_on": strata_name if protocol.stratified else None,
        "seed": seed,
        "interval": "95% percentile bootstrap over galaxies (paired, same resamples for all sets)",
    }
    summary = _wide(scores[scores.level == "target"], names, target_list)
    families = _wide(scores[scores.level == "family"], names, None)
    return ProbeRun(summary, families, scores, comparisons, results, curves, folds, info, {})


def _bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(1 + n_boot, n)`` resampling counts; row 0 is all ones (the plain estimate)."""
    rng = np.random.default_rng([seed, 2024])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    return np.concatenate([np.ones((1, n)), counts])


def _interval(draws: np.ndarray) -> tuple[float, float, float]:
    finite = draws[1:][np.isfinite(draws[1:])]
    if len(finite) == 0:
        return float(draws[0]), math.nan, math.nan
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(draws[0]), float(low), float(high)


def outcome(low: float, high: float) -> str:
    """``"win"`` if the interval lies above zero, ``"loss"`` if below, else ``"tie"``."""
    if low > 0:
        return "win"
    if high < 0:
        return "loss"
    return "tie"


def _intervals(draws, targets: list[Target], names: list[str], models: int = 1):
    """Scores and model-vs-baseline improvements with intervals, per target and per family.

    Each of the first ``models`` sets is compared with every set after it.
    """
    levels = [("target", t.name, t.family, HEADLINE[t.task], [t]) for t in targets]
    for family, members in families_of(targets).items():
        headline = family_headline(members)
        levels.append(("family", family, family, HEADLINE[headline[0].task], headline))
    score_rows, compare_rows = [], []
    for level, name, family, metric, members in levels:
        per_set = {}
        for emb in names:
            got = [draws[emb, t.name] for t in members if (emb, t.name) in draws]
            if len(got) != len(members):
                continue
            per_set[emb] = np.mean(got, axis=0)
            value, low, high = _interval(per_set[emb])
            score_rows.append(
                {"level": level, "name": name, "family": family, "metric": metric,
                 "targets": ", ".join(t.name for t in members), "embedding": emb,
                 "value": value, "ci_low": low, "ci_high": high}
            )  # fmt: skip
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        for i, model in enumerate(names[:models]):
            for baseline in names[i + 1 :]:
                if model not in per_set or baseline not in per_set:
                    continue
                value, low, high = _interval(sign * (per_set[model] - per_set[baseline]))
                compare_rows.append(
                    {"level": level, "name": name, "family": family, "metric": metric,
                     "model": model, "baseline": baseline, "improvement": value,
                     "ci_low": low, "ci_high": high, "outcome": outcome(low, high)}
                )  # fmt: skip
    score_cols = ["level", "name", "family", "metric", "targets", "embedding"]
    compare_cols = ["level", "name", "family", "metric", "model", "baseline", "improvement"]
    return (
        pd.DataFrame(score_rows, columns=[*score_cols, "value", "ci_low", "ci_high"]),
        pd.DataFrame(compare_rows, columns=[*compare_cols, "ci_low", "ci_high", "outcome"]),
    )


def _wide(scores: pd.DataFrame, names: list[str], targets: list[Target] | None) -> pd.DataFrame:
    """One row per target (or family): its metric and each set's score."""
    key = "target" if targets is not None else "family"
    rows = []
    for name, group in scores.groupby("name", sort=False):
        row = {key: name}
        if targets is not None:
            target = next(t for t in targets if t.name == name)
            row.update(family=target.family, task=target.task)
        else:
            row["targets"] = group.targets.iloc[0]
        row["metric"] = group.metric.iloc[0]
        by_set = dict(zip(group.embedding, group.value))
        for emb in names:
            row[emb] = by_set.get(emb, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def _choose_label_targets(
    label_targets: Sequence[str] | str | None, targets: list[Target]
) -> list[Target]:
    if label_targets == "all":
        return list(targets)
    by_name = {t.name: t for t in targets}
    if label_targets is None:
        chosen = [by_name[n] for n in HEADLINE_TARGETS if n in by_name]
        return chosen or list(targets[:8])
    missing = [n for n in label_targets if n not in by_name]
    if missing:
        raise KeyError(f"label-efficiency targets {missing} are not among the probe targets")
    return [by_name[n] for n in label_targets]


def _label_efficiency(
    features, reducers, targets, values, fold, protocol, seed, sizes, chosen, progress
) -> pd.DataFrame:
    """Headline scores on one fold's test rows against the number of labelled training galaxies.

    Nested subsets (prefixes of one seeded permutation of the fold's training
    rows) for every set; a PCA baseline is fitted on the fold's whole training
    part (it needs no labels) and never on its test rows.
    """
    columns = ["embedding", "target", "task", "metric", "n_labels", "value"]
    if sizes is None or not chosen:
        return pd.DataFrame(columns=columns)
    _, train, test = fold
    order = np.random.default_rng(seed + 1).permutation(len(train))
    train = train[order]
    counts = sorted({len(train) if s is None else min(int(s), len(train)) for s in sizes})
    records = []
    for name in _progress(list(features), progress, "label efficiency"):
        x = reducers[name](np.sort(train)) if name in reducers else features[name]
        for n in counts:
            subset = train[:n]
            fitted = fit_predict(x[subset], x[test], chosen, values, subset, protocol, seed)
            for t in chosen:
                y = values[t.name][test]
                labelled = y >= 0 if t.task == "classification" else ~np.isnan(y)
                value = math.nan
                if t.name in fitted and labelled.any():
                    pred = fitted[t.name][0][labelled]
                    value = _metrics(t, y[labelled], pred)[HEADLINE[t.task]]
                records.append(
                    {"embedding": name, "target": t.name, "task": t.task,
                     "metric": HEADLINE[t.task], "n_labels": n, "value": value}
                )  # fmt: skip
    return pd.DataFrame.from_records(records, columns=columns)


def run_probe_suite(
    embeddings: Mapping[str, object],
    out_dir: str | Path,
    targets: Sequence[str | Target] | None = None,
    seed: int = 0,
    **options,
) -> ProbeRun:
    """Probes, baselines, intervals and label-efficiency curves, written as a report.

    ``embeddings``: name -> export path, ``(ids, features, catalogue)`` or
    :class:`PixelSource` (the first is the model, the rest baselines; ``None``
    entries are skipped). Writes into ``out_dir``: ``report.md`` (family
    headline table with intervals and wins/ties/losses per baseline, per-target
    table, all metrics, curves), ``headline.json`` (the result the README
    table is generated from), ``scores.csv``, ``comparisons.csv``,
    ``probe_results.csv`` (every metric), ``label_efficiency.csv``,
    ``folds.csv`` (the shared folds) and PNG plots. ``options`` go to
    :func:`run_probes`. Returns the :class:`ProbeRun`.
    """
    run = run_probes(embeddings, targets, seed=seed, **options)
    write_report(run, out_dir, embeddings=embeddings)
    return run


# --------------------------------------------------------------------------- report
HEADLINE_FORMAT = "astropt-probe-headline/1"
METRIC_LABELS = {
    "r2": "R^2",
    "balanced_accuracy": "bal. acc.",
    "angular_error": "angle error (deg)",
}


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of ``frame`` (floats to 3 decimals)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _rounded(value: float, digits: int = 4):
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def headline_data(run: ProbeRun) -> dict:
    """A :class:`ProbeRun` as JSON-able data: per family and per target, each set's score
    with its interval and the model's improvement over each baseline with its outcome."""
    model, baselines = run.info["embeddings"][0], run.info["embeddings"][1:]

    def entries(level: str) -> list[dict]:
        rows = []
        scores = run.scores[run.scores.level == level]
        compare = run.comparisons[
            (run.comparisons.level == level) & (run.comparisons.model == model)
        ]
        for name, group in scores.groupby("name", sort=False):
            entry = {
                "name": name,
                "family": group.family.iloc[0],
                "metric": group.metric.iloc[0],
                "targets": group.targets.iloc[0].split(", "),
                "scores": {
                    r.embedding: [_rounded(r.value), _rounded(r.ci_low), _rounded(r.ci_high)]
                    for r in group.itertuples()
                },
                "vs": {
                    r.baseline: {
                        "improvement": [
                            _rounded(r.improvement),
                            _rounded(r.ci_low),
                            _rounded(r.ci_high),
                        ],
                        "outcome": r.outcome,
                    }
                    for r in compare[compare.name == name].itertuples()
                },
            }
            rows.append(entry)
        return rows

    families = entries("family")
    tally = {
        b: {k: sum(f["vs"].get(b, {}).get("outcome") == k for f in families)
            for k in ("win", "tie", "loss")}
        for b in baselines
    }  # fmt: skip
    return {
        "format": HEADLINE_FORMAT,
        "info": run.info,
        "model": model,
        "baselines": baselines,
        "families": families,
        "targets": entries("target"),
        "tally": tally,
    }


def read_headline(path: str | Path) -> dict:
    """A headline JSON file written by :func:`write_report` (``headline.json``)."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != HEADLINE_FORMAT:
        raise ValueError(f"{path} is not a probe headline file ({HEADLINE_FORMAT})")
    return data


def _cell(triple: list) -> str:
    value, low, high = triple
    if value is None:
        return ""
    if low is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def headline_table(data: dict, level: str = "families") -> str:
    """Markdown table of a headline (:func:`headline_data`): one row per family (or target).

    The model's cell is its score with a 95% interval; each baseline's cell is
    its score and the model's improvement over it with an interval, then
    **win**, tie or *loss*. The last row counts the outcomes per baseline.
    """
    model, baselines = data["model"], data["baselines"]
    header = ["family" if level == "families" else "target", "metric", model, *baselines]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    marks = {"win": "**win**", "tie": "tie", "loss": "*loss*"}
    for entry in data[level]:
        cells = [entry["name"], METRIC_LABELS.get(entry["metric"], entry["metric"])]
        cells.append(_cell(entry["scores"].get(model, [None, None, None])))
        for baseline in baselines:
            score = entry["scores"].get(baseline)
            versus = entry["vs"].get(baseline)
            if score is None or versus is None:
                cells.append("")
                continue
            value, low, high = versus["improvement"]
            cells.append(
                f"{score[0]:.3f}; {value:+.3f} [{low:+.3f}, {high:+.3f}] {marks[versus['outcome']]}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    if level == "families":
        tally = [
            "{win}/{tie}/{loss}".format(**data["tally"][b]) for b in baselines
        ]  # fmt: skip
        lines.append("| wins/ties/losses | | | " + " | ".join(tally) + " |")
    return "\n".join(lines)


def write_report(
    run: ProbeRun,
    out_dir: str | Path,
    embeddings: Mapping[str, object] | None = None,
) -> dict[str, Path]:
    """Write the report files of a :class:`ProbeRun` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report": out / "report.md",
        "headline": out / "headline.json",
        "scores": out / "scores.csv",
        "comparisons": out / "comparisons.csv",
        "results": out / "probe_results.csv",
        "label_efficiency": out / "label_efficiency.csv",
        "folds": out / "folds.csv",
        "summary_png": out / "probe_summary.png",
        "label_efficiency_png": out / "label_efficiency.png",
    }
    data = headline_data(run)
    files["headline"].write_text(json.dumps(data, indent=1) + "\n")
    run.scores.to_csv(files["scores"], index=False)
    run.comparisons.to_csv(files["comparisons"], index=False)
    run.results.to_csv(files["results"], index=False)
    run.label_efficiency.to_csv(files["label_efficiency"], index=False)
    run.folds.to_csv(files["folds"], index=False)
    names = run.info["embeddings"]
    plot_improvements(run.comparisons, files["summary_png"])
    plot_label_efficiency(run.label_efficiency, files["label_efficiency_png"])

    info, protocol = run.info, run.info["protocol"]
    sources = embeddings or {}
    described = []
    for name in names:
        src = sources.get(name)
        if isinstance(src, PixelSource):
            what = "normalised pixels" if src.normalise else "scaled pixels"
            k = info["pca_components"].get(name)
            described.append(f"`{name}` (PCA of the {what} to {k} components per training fold)")
        elif isinstance(src, (str, Path)):
            described.append(f"`{name}` ({src})")
        else:
            described.append(f"`{name}`")
    if protocol["alpha"] is None:
        fits = f"strength chosen by {protocol['inner_folds']}-fold CV inside each training fold"
    else:
        fits = f"fixed strength alpha = {protocol['alpha']:g}"
    folds_text = f"{protocol['folds']} folds x {protocol['repeats']} repeats" + (
        f", stratified on {info['stratified_on']}" if info["stratified_on"] else ""
    )
    lines = [
        "# Linear probe report",
        "",
        f"{info['n_galaxies']} galaxies, protocol `{protocol['name']}`: {folds_text} "
        "(the same folds for every embedding set, see `folds.csv`). "
        f"Linear probes on standardised features, ridge {fits}; classes by a "
        "class-balanced ridge classifier, circular targets as (cos 2t, sin 2t).",
        "",
        "Embedding sets: " + ", ".join(described) + ". The first is the model.",
        "",
        f"Scores are computed on each repeat's pooled out-of-fold predictions and averaged "
        f"over repeats; intervals: {info['interval']}, {protocol['n_boot']} resamples. "
        "A baseline's cell gives its score, then the model's improvement over it (positive = "
        "the model is better) with its interval: **win** if the interval is above zero, "
        "*loss* if below, else tie.",
        "",
        "## Headline: one row per target family",
        "",
        headline_table(data, "families"),
        "",
        "![improvements](probe_summary.png)",
        "",
        "## Every target",
        "",
        headline_table(data, "targets"),
        "",
        "## All metrics (point estimates)",
        "",
    ]
    if not run.results.empty:
        wide = run.results.pivot_table(
            index=["target", "metric"], columns="embedding", values="value", sort=False
        ).reset_index()
        wide = wide[["target", "metric", *[n for n in names if n in wide.columns]]]
        lines.append(markdown_table(wide))
    lines += ["", "## Label efficiency (first fold)", ""]
    if not run.label_efficiency.empty:
        curves = run.label_efficiency.pivot_table(
            index=["target", "metric", "n_labels"], columns="embedding", values="value", sort=False
        ).reset_index()
        curves = curves[["target", "metric", "n_labels", *[n for n in names if n in curves]]]
        lines += ["![label efficiency](label_efficiency.png)", "", markdown_table(curves)]
    else:
        lines.append("(not computed)")
    lines.append("")
    files["report"].write_text("\n".join(lines))
    run.files.update(files)
    return files


def plot_improvements(comparisons: pd.DataFrame, path: str | Path) -> Path:
    """One panel per baseline: the model's improvement per family with its 95% interval."""
    from matplotlib.figure import Figure

    rows = comparisons[comparisons.level == "family"]
    rows = rows[rows.model == rows.model.iloc[0]] if len(rows) else rows  # the first model's
    baselines = list(dict.fromkeys(rows.baseline)) or ["(none)"]
    families = list(dict.fromkeys(rows.name))
    fig = Figure(
        figsize=(3.2 * len(baselines) + 1.5, 0.32 * len(families) + 1.4), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(1, len(baselines), sharey=True, squeeze=False)).ravel()
    colours = {"win": "tab:green", "tie": "tab:grey", "loss": "tab:red"}
    positions = {name: i for i, name in enumerate(families)}
    for ax, baseline in zip(axes, baselines):
        sel = rows[rows.baseline == baseline]
        for r in sel.itertuples():
            y = positions[r.name]
            err = [[r.improvement - r.ci_low], [r.ci_high - r.improvement]]
            ax.errorbar(r.improvement, y, xerr=err, fmt="o", ms=3, color=colours[r.outcome])
        ax.axvline(0, color="black", lw=0.6)
        ax.set_title(f"model - {baseline}", fontsize=9)
        ax.set_xlabel("improvement (R^2, bal. acc.; deg for angles)", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(len(families)), families)
    axes[0].invert_yaxis()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_label_efficiency(curves: pd.DataFrame, path: str | Path) -> Path | None:
    """One panel per target: headline metric against the number of labelled galaxies."""
    if curves.empty:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    targets = list(dict.fromkeys(curves.target))
    ncols = min(4, len(targets))
    nrows = math.ceil(len(targets) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, target in zip(axes, targets):
        sel = curves[curves.target == target]
        for name, group in sel.groupby("embedding", sort=False):
            ax.plot(group.n_labels, group.value, marker="o", ms=3, label=name)
        ax.set_xscale("log")
        sizes = sorted(sel.n_labels.unique())
        ax.set_xticks(sizes, [str(int(n)) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())  # log minor labels overlap
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("labelled galaxies", fontsize=8)
        ax.set_ylabel(sel.metric.iloc[0], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(targets) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return Path(path)


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


# --------------------------------------------------------------------------- README
README_BLOCK = re.compile(
    r"<!-- probe-table: (?P<path>\S+) -->\n(?P<body>.*?)<!-- /probe-table -->", flags=re.S
)


def readme_block(data: dict) -> str:
    """The README's probe section body for a headline (:func:`headline_data`): provenance,
    the family table and the count of families won against every baseline."""
    run = data.get("run", {})
    info = data["info"]
    protocol = info["protocol"]
    won = [
        f["name"]
        for f in data["families"]
        if all(f["vs"].get(b, {}).get("outcome") == "win" for b in data["baselines"])
    ]
    settings = run.get("settings", {})
    trained = (
        f"{settings['max_iters']} pretraining steps on a {settings['n_galaxies']}-galaxy survey, "
        if settings
        else ""
    )
    lines = [
        f"From `{run.get('command', 'the probe suite')}` "
        f"({json.dumps(run.get('machine', {}))}): {trained}{info['n_galaxies']} test galaxies, "
        f"{protocol['folds']} folds x {protocol['repeats']} repeats, 95% bootstrap intervals "
        "over galaxies. Cells: score; model minus baseline [interval] and the outcome "
        "(for angle errors, baseline minus model: positive is always better).",
        "",
        headline_table(data),
        "",
        f"The model wins against every baseline on {len(won)} of {len(data['families'])} "
        "target families.",
        "",
    ]
    return "\n".join(lines)


def update_readme(readme: str | Path) -> bool:
    """Regenerate every probe-table block of ``readme`` from the result file it cites.

    Returns True if the file changed.
    """
    readme = Path(readme)
    text = readme.read_text()

    def fill(match: re.Match) -> str:
        data = read_headline(readme.parent / match["path"])
        return f"<!-- probe-table: {match['path']} -->\n{readme_block(data)}<!-- /probe-table -->"

    new = README_BLOCK.sub(fill, text)
    if new != text:
        readme.write_text(new)
    return new != text


# --------------------------------------------------------------------------- command line
@dataclass
class ProbeOptions:
    """Options of ``astropt probe`` (``python probe/linear_probe.py``)."""

    embeddings: str  # embedding export (folder or parquet file)
    out: str = "report"  # report folder
    pixels: str | None = None  # pixel export (default: emb.pixels.parquet beside the export)
    random: str | None = None  # random-init baseline export (default: beside the export)
    morphometrics: str | None = None  # morphometrics export (default: beside the export)
    baselines: bool = True  # false: probe the model's embeddings only
    # columns, 'col>0.5' thresholds, 'col:regression', 'col:circular=180' (default: all numeric)
    targets: list[str] | None = None
    seed: int = 0  # folds, bootstrap and label subsets
    # repeated: stratified 5-fold x 3 repeats, CV-chosen ridge strength;
    # astropt: AstroPT's 5-fold ridge with alpha = 100
    protocol: str = "repeated"
    folds: int | None = None  # k of the k-fold (default: the protocol's)
    repeats: int | None = None  # repeats of the k-fold (default: the protocol's)
    n_boot: int | None = None  # bootstrap resamples of the galaxies (default 1000)
    # training-set sizes of the label-efficiency curves, e.g. 30,100,all ('' to skip)
    label_sizes: list[str] = field(
        default_factory=lambda: ["30", "100", "300", "1000", "3000", "all"]
    )
    label_targets: list[str] | None = None  # targets with label-efficiency curves ('all')
    threads: int = 1  # BLAS threads of the fits

    def __post_init__(self) -> None:
        for size in self.label_sizes:
            if size not in ("all", "") and not size.isdigit():
                raise ValueError(f"label_sizes: {size!r} is neither a count nor 'all'")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}")


def run_probe(opts: ProbeOptions) -> int:
    """Probe an export and its baselines; write the report; print the family table."""
    from astropt.embed import export_baselines_for, read_manifest

    sets = discover_embeddings(opts.embeddings)
    if opts.pixels:
        sets["pixels"] = PixelSource(Path(opts.pixels))
        sets["pixels-normalised"] = PixelSource(Path(opts.pixels), normalise=True)
    if opts.random:
        sets["random-init"] = Path(opts.random)
    if opts.morphometrics:
        sets["morphometrics"] = Path(opts.morphometrics)
    if not opts.baselines:
        sets = {"model": sets["model"]}
    missing = tuple(
        dict.fromkeys(
            "pixels" if name.startswith("pixels") else name
            for name, path in sets.items()
            if path is None
        )
    )
    if missing:
        meta = (read_manifest(opts.embeddings) or {}).get("meta", {})
        if "model_config" in meta:
            print(f"computing the {', '.join(missing)} baseline(s)", file=sys.stderr)
            export_baselines_for(opts.embeddings, which=missing, seed=opts.seed)
            found = discover_embeddings(opts.embeddings)
            sets.update({name: found[name] for name, path in sets.items() if path is None})
        else:
            print(
                f"no {' or '.join(missing)} baseline beside {opts.embeddings} and no record of "
                "its model and data to compute them: probing without",
                file=sys.stderr,
            )
    label_targets = opts.label_targets
    if label_targets == ["all"]:
        label_targets = "all"
    sizes = [None if size in ("all", "") else int(size) for size in opts.label_sizes]
    run = run_probe_suite(
        sets,
        opts.out,
        targets=opts.targets,
        seed=opts.seed,
        protocol=opts.protocol,
        folds=opts.folds,
        repeats=opts.repeats,
        n_boot=opts.n_boot,
        label_sizes=[s for s in sizes if s != 0] or None,
        label_targets=label_targets,
        threads=opts.threads,
        progress=True,
    )
    print(headline_table(run.headline()))
    print(f"report: {Path(opts.out) / 'report.md'}", file=sys.stderr)
    return 0


COMMAND = Command(
    ProbeOptions,
    run_probe,
    "Linear probes of an embedding export against four baselines, with intervals.",
    positional=("embeddings",),
    examples=(
        "astropt probe emb.parquet out=report/ label_sizes=30,all",
        "astropt probe emb.parquet out=report-astropt/ protocol=astropt",
        "python probe/linear_probe.py emb.parquet --out report/ --label-sizes 30,all",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python probe/linear_probe.py`` (the same as ``astropt probe``)."""
    return run_command(COMMAND, argv, "python probe/linear_probe.py")
