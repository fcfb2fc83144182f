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
* Regression targets: ridge; headline R^2 (plus NMAD, MAE, Spearman); a split's
  R^2 divides its test rows' mean squared error by the target's variance over all
  labelled galaxies (:func:`split_r2`).
  Classification targets (booleans, small integer columns such as ``galaxy10``,
  vote fractions thresholded at 0.5): class-balanced ridge classifier (one
  column per class, rows weighted by inverse class frequency, as scikit-learn's
  ``RidgeClassifier(class_weight="balanced")``); headline balanced accuracy.
  Circular targets (position angles, period 180 deg): ridge on
  ``(cos 2 theta, sin 2 theta)``; headline mean angular error in degrees.
* Every split (a fold of a repeat) scores each set on its test rows. A score
  is the mean of its per-split scores; its 95% interval is the *corrected
  resampled t* interval of Nadeau & Bengio (2003) over the J = folds x repeats
  splits: the variance of the mean is ``(1/J + n_test/n_train) s^2`` with ``s^2``
  the variance of the per-split scores and ``J - 1`` degrees of freedom. The
  per-split scores carry the variance of refitting the probe on another
  training sample as well as that of another test sample; the second term
  accounts for the splits' overlapping training sets (the plain ``s^2 / J``
  ignores it and is far too narrow). ``tests/test_probe_coverage.py`` checks
  by simulation that the intervals cover the expected score of a probe fitted
  on ``n_train`` galaxies 93-97% of the time.
* ``improvement`` is model minus baseline for higher-is-better scores and
  baseline minus model for errors, so positive always means the model is
  better; it is the same interval over the *paired* per-split differences (both
  sets fitted and scored on the same split). A *win* is an improvement whose
  interval lies above zero, a *loss* one whose interval lies below, anything
  else a *tie*. Intervals are per comparison; :func:`holm` adjusts a table's
  family of comparisons for multiplicity (the report states how many there are).
* Targets that measure the same thing form a *family* (:data:`FAMILIES`); a
  family's per-split score is the mean of the per-split headline scores of its
  members of the family's first task, with its interval computed the same way.

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
#: Evaluation splits: ``dev`` chooses settings, ``test`` is touched once for a published table.
EVAL_SPLITS = ("dev", "test")
#: Per-split scores are rounded to this many decimals before any interval is computed,
#: so a result file's rows reproduce its intervals exactly.
SPLIT_DIGITS = 6
INTERVAL = (
    "95% corrected resampled t intervals (Nadeau & Bengio 2003) over the per-split scores "
    "of the repeated folds (paired per split for differences)"
)
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


def split_r2(y: np.ndarray, pred: np.ndarray, variance: float) -> float:
    """R^2 of one split's test rows: ``1 - mean((y - pred)^2) / variance`` with ``variance``
    the target's over *all* labelled galaxies.

    Averaged over the splits of a k-fold it is the pooled out-of-fold R^2, and it is
    not biased by a small test fold's own variance (scikit-learn's R^2 of one fold is
    low by about ``(1 - R^2) / (n_test - 1)``, which a 30-galaxy fold makes 0.02)."""
    residual = np.asarray(y, np.float64) - np.asarray(pred, np.float64)
    return float(1.0 - np.mean(residual**2) / variance) if variance > 0 else math.nan


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
    split_scores: pd.DataFrame  # long: split, repeat, n_train, n_test, embedding, target, value
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
    label_sizes: Iterable[int | None] | None = DEFAULT_LABEL_SIZES,
    label_targets: Sequence[str] | Literal["all"] | None = None,
    progress: bool = False,
    threads: int | None = 1,
    models: int = 1,
    split: str | None = None,
    choices: Mapping[str, str] | None = None,
) -> ProbeRun:
    """Probe every target with every embedding set on shared folds (no files written).

    ``embeddings``: name -> export path, ``(ids, features, catalogue)`` or
    :class:`PixelSource` (reduced by PCA to the first set's dimension inside
    each training fold); the first is the model, the others baselines.
    ``models``: how many of the first sets are models; each is compared with
    every set after it (paired, on the same splits), so several
    models and their differences cost one pass over the folds. The report
    (:func:`write_report`) shows the first model's comparisons.
    ``targets``: specs for :func:`parse_target` (default: :func:`auto_targets`
    of the primary catalogue). ``protocol``: ``"repeated"`` or ``"astropt"``
    (:data:`PROTOCOLS`); ``folds``/``repeats`` override its fields.
    ``label_sizes``: training-set sizes of the label-efficiency curves (on the
    first fold; ``None`` = all its training rows; nested random subsets from
    ``seed``); ``label_targets``: which targets get curves (default: the
    ``HEADLINE_TARGETS`` present, else the first eight; ``"all"``).
    ``threads``: BLAS threads for the fits (None = the library default; on busy
    or oversubscribed cores OpenBLAS threads make these small fits much slower).
    ``split``: which evaluation split the galaxies are (``"dev"`` for choosing
    settings, ``"test"`` for a published table; :data:`EVAL_SPLITS`) and
    ``choices``: setting -> the split it was chosen on; both are recorded in
    ``info`` and the headline.
    """
    from threadpoolctl import threadpool_limits

    chosen = resolve_protocol(protocol, folds=folds, repeats=repeats)
    if not 1 <= models <= len(embeddings):
        raise ValueError(f"models must be between 1 and {len(embeddings)}, got {models}")
    if split is not None and split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    with threadpool_limits(limits=threads):
        run = _run_probes(
            embeddings, targets, seed, chosen, label_sizes, label_targets, progress, models
        )
    run.info["split"] = split
    run.info["choices"] = dict(choices or {})
    return run


def _labelled(target: Target, y: np.ndarray) -> np.ndarray:
    return y >= 0 if target.task == "classification" else ~np.isnan(y)


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

    # Every set and target scored on every split's test rows: (set, target) -> metrics per split.
    per_split: dict[tuple[str, str], list[dict[str, float]]] = {}
    hypers: dict[tuple[str, str], list[float]] = {}
    reducers = {name: FoldPCA(features[name], reduce[name], seed) for name in names if reduce[name]}
    spread = {
        t.name: float(np.var(values[t.name][_labelled(t, values[t.name])]))
        for t in target_list
        if t.task == "regression"
    }
    for _, train, test in _progress(plan, progress, "probe folds"):
        for name in names:
            x = reducers[name](train) if name in reducers else features[name]
            fitted = fit_predict(x[train], x[test], target_list, values, train, protocol, seed)
            for t in target_list:
                y = values[t.name][test]
                labelled = _labelled(t, y)
                if t.name not in fitted or labelled.sum() < 2:
                    continue
                pred, alpha = fitted[t.name]
                metrics = _metrics(t, y[labelled], pred[labelled])
                if t.task == "regression":
                    metrics["r2"] = split_r2(y[labelled], pred[labelled], spread[t.name])
                per_split.setdefault((name, t.name), []).append(metrics)
                hypers.setdefault((name, t.name), []).append(alpha)

    split_scores: dict[tuple[str, str], np.ndarray] = {}
    records = []
    for t in target_list:
        for name in names:
            got = per_split.get((name, t.name), [])
            if len(got) != len(plan):
                continue  # some split had too few labels to fit or score
            frame = pd.DataFrame(got)
            # Rounded here so a result file's rows recompute its intervals exactly.
            split_scores[name, t.name] = frame[HEADLINE[t.task]].to_numpy().round(SPLIT_DIGITS)
            alpha = hypers[name, t.name]
            for metric in METRICS[t.task]:
                records.append(
                    {"embedding": name, "target": t.name, "task": t.task, "metric": metric,
                     "value": float(frame[metric].mean()),
                     "n": int(_labelled(t, values[t.name]).sum()),
                     "hyper": float(np.nanmedian(alpha)) if np.isfinite(alpha).any() else math.nan}
                )  # fmt: skip
    results = pd.DataFrame.from_records(
        records, columns=["embedding", "target", "task", "metric", "value", "n", "hyper"]
    )
    ratio = float(np.mean([len(test) / len(train) for _, train, test in plan]))
    scores, comparisons = _intervals(split_scores, _levels(target_list), names, ratio, models)
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
        "interval": INTERVAL,
        "n_splits": len(plan),
        "test_train_ratio": ratio,
    }
    summary = _wide(scores[scores.level == "target"], names, target_list)
    families = _wide(scores[scores.level == "family"], names, None)
    sizes = pd.DataFrame(
        [{"split": j, "repeat": r, "n_train": len(tr), "n_test": len(te)}
         for j, (r, tr, te) in enumerate(plan)]
    )  # fmt: skip
    long = pd.DataFrame(
        [{"split": j, "embedding": name, "target": target, "value": v}
         for (name, target), values in split_scores.items() for j, v in enumerate(values)],
        columns=["split", "embedding", "target", "value"],
    )  # fmt: skip
    long = sizes.merge(long, on="split")
    return ProbeRun(summary, families, scores, comparisons, results, curves, folds, long, info, {})


def resampled_t(
    values: np.ndarray, test_train_ratio: float, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """Nadeau & Bengio's (2003) corrected resampled t interval of a mean over J train/test splits.

    ``values``: ``(J,)`` a score, or a paired difference of two scores, on each
    split; ``test_train_ratio``: ``n_test / n_train`` of a split (``1/(k-1)`` for
    k-fold). The variance of the mean is ``(1/J + n_test/n_train) s^2`` with
    ``s^2`` the sample variance of ``values`` (the second term: the splits share
    most of their training rows, so their scores are correlated), with ``J - 1``
    degrees of freedom. Returns ``(mean, low, high, p)``: the two-sided p-value
    of a zero mean, below ``1 - confidence`` exactly when the interval excludes 0.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    j = len(values)
    mean = float(values.mean())
    if j < 2:
        return mean, math.nan, math.nan, math.nan
    se = math.sqrt((1.0 / j + test_train_ratio) * values.var(ddof=1))
    if se == 0.0:  # identical on every split (a set against itself)
        return mean, mean, mean, 1.0 if mean == 0.0 else 0.0
    half = float(stats.t.ppf(0.5 + confidence / 2, j - 1)) * se
    p = float(2.0 * stats.t.sf(abs(mean) / se, j - 1))
    return mean, mean - half, mean + half, p


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN): a family of comparisons whose
    adjusted p-values are below 0.05 has at most a 5% chance of any false win or loss."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(len(p), np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def outcome(low: float, high: float) -> str:
    """``"win"`` if the interval lies above zero, ``"loss"`` if below, else ``"tie"``."""
    if low > 0:
        return "win"
    if high < 0:
        return "loss"
    return "tie"


def _levels(targets: list[Target]) -> list[tuple[str, str, str, str, list[str]]]:
    """``(level, name, family, metric, member targets)`` of every target, then every family."""
    levels = [("target", t.name, t.family, HEADLINE[t.task], [t.name]) for t in targets]
    for family, members in families_of(targets).items():
        headline = family_headline(members)
        levels.append(
            ("family", family, family, HEADLINE[headline[0].task], [t.name for t in headline])
        )
    return levels


def _intervals(split_scores, levels, names: list[str], test_train_ratio: float, models: int = 1):
    """Scores and model-vs-baseline improvements with intervals, per target and per family.

    ``split_scores``: ``(set, target) -> (J,)`` headline scores per split;
    ``levels``: :func:`_levels`. A family's per-split score is the mean of its
    members'. Each of the first ``models`` sets is compared with every set after it.
    """
    score_rows, compare_rows = [], []
    for level, name, family, metric, members in levels:
        per_set = {}
        for emb in names:
            got = [split_scores[emb, t] for t in members if (emb, t) in split_scores]
            if len(got) != len(members):
                continue
            per_set[emb] = np.mean(got, axis=0)
            value, low, high, _ = resampled_t(per_set[emb], test_train_ratio)
            score_rows.append(
                {"level": level, "name": name, "family": family, "metric": metric,
                 "targets": ", ".join(members), "embedding": emb,
                 "value": value, "ci_low": low, "ci_high": high}
            )  # fmt: skip
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        for i, model in enumerate(names[:models]):
            for baseline in names[i + 1 :]:
                if model not in per_set or baseline not in per_set:
                    continue
                diff = sign * (per_set[model] - per_set[baseline])
                value, low, high, p = resampled_t(diff, test_train_ratio)
                compare_rows.append(
                    {"level": level, "name": name, "family": family, "metric": metric,
                     "model": model, "baseline": baseline, "improvement": value,
                     "ci_low": low, "ci_high": high, "p_value": p, "outcome": outcome(low, high)}
                )  # fmt: skip
    score_cols = ["level", "name", "family", "metric", "targets", "embedding"]
    compare_cols = ["level", "name", "family", "metric", "model", "baseline", "improvement"]
    return (
        pd.DataFrame(score_rows, columns=[*score_cols, "value", "ci_low", "ci_high"]),
        pd.DataFrame(
            compare_rows, columns=[*compare_cols, "ci_low", "ci_high", "p_value", "outcome"]
        ),
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
HEADLINE_FORMAT = "astropt-probe-headline/2"
#: Result files written before the per-split rows (bootstrap intervals over galaxies): read
#: and rendered, not recomputable; regenerate them with ``python -m astropt.quickstart --publish``.
LEGACY_HEADLINE_FORMATS = ("astropt-probe-headline/1",)
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
    with its interval and the model's improvement over each baseline with its outcome,
    the count of comparisons with Holm's adjustment, and the per-split scores (``rows``)
    that all of it is recomputed from (:func:`recompute_headline`)."""
    names = run.info["embeddings"]
    rows: dict[str, dict[str, list[float]]] = {}
    for (target, emb), group in run.split_scores.groupby(["target", "embedding"], sort=False):
        rows.setdefault(target, {})[emb] = [float(v) for v in group.sort_values("split").value]
    order = {t: i for i, t in enumerate(run.summary.get("target", []))}
    rows = dict(sorted(rows.items(), key=lambda item: order.get(item[0], len(order))))
    levels = [
        (level, name, group.family.iloc[0], group.metric.iloc[0], group.targets.iloc[0].split(", "))
        for (level, name), group in run.scores.groupby(["level", "name"], sort=False)
    ]
    return _headline(dict(run.info), names[0], names[1:], levels, rows, run.scores, run.comparisons)


def _headline(info, model, baselines, levels, rows, scores, comparisons) -> dict:
    """The headline dict from its parts (shared by :func:`headline_data` and the check)."""
    compare = comparisons[comparisons.model == model]

    def entries(level: str) -> list[dict]:
        out = []
        for lvl, name, family, metric, members in levels:
            if lvl != level:
                continue
            mine = scores[(scores.level == level) & (scores.name == name)]
            versus = compare[(compare.level == level) & (compare.name == name)]
            out.append({
                "name": name,
                "family": family,
                "metric": metric,
                "targets": list(members),
                "scores": {
                    r.embedding: [_rounded(r.value), _rounded(r.ci_low), _rounded(r.ci_high)]
                    for r in mine.itertuples()
                },
                "vs": {
                    r.baseline: {
                        "improvement": [
                            _rounded(r.improvement), _rounded(r.ci_low), _rounded(r.ci_high)
                        ],
                        "p": _rounded(r.p_value, 6),
                        "outcome": r.outcome,
                    }
                    for r in versus.itertuples()
                },
            })  # fmt: skip
        return out

    families = entries("family")
    tally = {
        b: {k: sum(f["vs"].get(b, {}).get("outcome") == k for f in families)
            for k in ("win", "tie", "loss")}
        for b in baselines
    }  # fmt: skip
    table = [(f, b) for f in families for b in baselines if b in f["vs"]]
    adjusted = holm([f["vs"][b]["p"] if f["vs"][b]["p"] is not None else math.nan
                     for f, b in table])  # fmt: skip
    for (f, b), p in zip(table, adjusted):
        f["vs"][b]["holm"] = f["vs"][b]["outcome"] if p < 0.05 else "tie"
    return {
        "format": HEADLINE_FORMAT,
        "info": info,
        "model": model,
        "baselines": list(baselines),
        "families": families,
        "targets": entries("target"),
        "tally": tally,
        "comparisons": {
            "count": len(table),
            "families": len(families),
            "baselines": len(baselines),
            "confidence": 0.95,
            "adjustment": "none: each interval is a per-comparison 95% interval; 'holm' "
            "gives each outcome after Holm's adjustment over the table's comparisons",
            "wins_after_holm": sum(f["vs"][b]["holm"] == "win" for f, b in table),
            "losses_after_holm": sum(f["vs"][b]["holm"] == "loss" for f, b in table),
        },
        "rows": rows,
    }


def recompute_headline(data: dict) -> dict:
    """The headline a result file's per-split ``rows`` give: intervals, outcomes, tallies and
    Holm's adjustment recomputed with the same code that wrote them (:func:`check_headline`)."""
    info = data["info"]
    model, baselines = data["model"], data["baselines"]
    levels = [
        ("family", f["name"], f["family"], f["metric"], f["targets"]) for f in data["families"]
    ]
    levels = [
        *(("target", t["name"], t["family"], t["metric"], t["targets"]) for t in data["targets"]),
        *levels,
    ]
    split_scores = {
        (emb, target): np.asarray(values, dtype=np.float64)
        for target, per_set in data["rows"].items()
        for emb, values in per_set.items()
    }
    scores, comparisons = _intervals(
        split_scores, levels, [model, *baselines], info["test_train_ratio"]
    )
    return _headline(info, model, baselines, levels, data["rows"], scores, comparisons)


def check_headline(data: dict) -> list[str]:
    """What in a probe result file disagrees with its own rows (empty: it is consistent)."""
    if data.get("format") != HEADLINE_FORMAT:
        return [f"not a {HEADLINE_FORMAT} file"]
    fresh = recompute_headline(data)
    problems = []
    for key in ("families", "targets", "tally", "comparisons", "baselines", "model"):
        if json.loads(json.dumps(fresh[key])) != data.get(key):
            problems.append(f"{key!r} differs from what its per-split rows give")
    return problems


def read_headline(path: str | Path) -> dict:
    """A headline JSON file written by :func:`write_report` (``headline.json``)."""
    data = json.loads(Path(path).read_text())
    if data.get("format") not in (HEADLINE_FORMAT, *LEGACY_HEADLINE_FORMATS):
        raise ValueError(f"{path} is not a probe headline file ({HEADLINE_FORMAT})")
    return data


def comparisons_note(data: dict) -> str:
    """How many comparisons a headline's family table makes, and what its intervals claim."""
    n_families, baselines = len(data["families"]), len(data["baselines"])
    count = sum(len(f["vs"]) for f in data["families"])
    text = (
        f"{n_families} families x {baselines} baselines = {count} comparisons; each interval "
        "is a per-comparison 95% interval, not adjusted for multiplicity"
    )
    if "comparisons" not in data:  # a legacy file
        return text + "."
    wins = sum(t["win"] for t in data["tally"].values())
    losses = sum(t["loss"] for t in data["tally"].values())
    after = data["comparisons"]
    return (
        text + f" (with Holm's adjustment over the {count}: {after['wins_after_holm']} of the "
        f"{wins} wins and {after['losses_after_holm']} of the {losses} losses remain)."
    )


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
        "split_scores": out / "split_scores.csv",
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
    run.split_scores.to_csv(files["split_scores"], index=False)
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
        f"Galaxies: the `{info.get('split') or 'unstated'}` split"
        + "".join(f"; {k} was chosen on `{v}`" for k, v in info.get("choices", {}).items())
        + ". Scores are the mean over the splits (folds x repeats) of each split's score on "
        f"its test rows (`split_scores.csv`); intervals: {info['interval']}. "
        "A baseline's cell gives its score, then the model's improvement over it (positive = "
        "the model is better) with its interval: **win** if the interval is above zero, "
        "*loss* if below, else tie. " + comparisons_note(data),
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
    if data["format"] in LEGACY_HEADLINE_FORMATS:
        how = (
            "95% bootstrap intervals over galaxies (a legacy result file: those intervals leave "
            "out the variance of refitting the probe and are too narrow; regenerate it with "
            "`python -m astropt.quickstart --publish`)"
        )
    else:
        split = info.get("split") or "unstated"
        choices = ", ".join(f"{k} on {v}" for k, v in info.get("choices", {}).items())
        provenance = data.get("provenance", {})
        commit = provenance.get("commit", "")[:12] + (" (dirty)" if provenance.get("dirty") else "")
        how = (
            f"95% corrected resampled t intervals over the {info['n_splits']} splits (they "
            f"include refitting the probe); split `{split}`"
            + (f"; choices made: {choices}" if choices else "")
            + (f"; code {commit}" if commit else "")
        )
    lines = [
        f"From `{run.get('command', 'the probe suite')}` "
        f"({json.dumps(run.get('machine', {}))}): {trained}{info['n_galaxies']} test galaxies, "
        f"{protocol['folds']} folds x {protocol['repeats']} repeats, {how}. Cells: score; "
        "model minus baseline [interval] and the outcome "
        "(for angle errors, baseline minus model: positive is always better).",
        "",
        headline_table(data),
        "",
        f"The model wins against every baseline on {len(won)} of {len(data['families'])} "
        f"target families. {comparisons_note(data)}",
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
    seed: int = 0  # folds and label subsets
    # repeated: stratified 5-fold x 3 repeats, CV-chosen ridge strength;
    # astropt: AstroPT's 5-fold ridge with alpha = 100
    protocol: str = "repeated"
    folds: int | None = None  # k of the k-fold (default: the protocol's)
    repeats: int | None = None  # repeats of the k-fold (default: the protocol's)
    # dev (choosing settings) or test (the published table); recorded in the report
    split: str | None = None
    # settings chosen before this run, as name:split (e.g. embed_layer:dev); recorded
    choices: list[str] = field(default_factory=list)
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
        if self.split is not None and self.split not in EVAL_SPLITS:
            raise ValueError(f"split must be one of {EVAL_SPLITS}, got {self.split!r}")
        for choice in self.choices:
            if choice.partition(":")[2] not in EVAL_SPLITS:
                raise ValueError(f"choices: {choice!r} is not name:dev or name:test")


def eval_split(export: str | Path, split: str | None) -> str | None:
    """The evaluation split (``dev``/``test``) of an export: ``split`` checked against the
    data split its manifest records (dev = ``validation``, test = ``test``), else that record's."""
    from astropt.data.sources import canonical_split
    from astropt.embed import read_manifest

    manifest = read_manifest(export) or {}
    recorded = (manifest.get("settings") or {}).get("split") or manifest.get("split")
    recorded = {"validation": "dev", "test": "test"}.get(canonical_split(recorded or ""))
    if split is not None and recorded is not None and split != recorded:
        from astropt.errors import UserError

        raise UserError(f"split={split} but {export} was exported from the {recorded} split")
    return split or recorded


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
        split=eval_split(opts.embeddings, opts.split),
        targets=opts.targets,
        seed=opts.seed,
        protocol=opts.protocol,
        folds=opts.folds,
        repeats=opts.repeats,
        choices=dict(choice.split(":", 1) for choice in opts.choices),
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
