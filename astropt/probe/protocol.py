"""The probe protocol: constants, target parsing, families and the shared folds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd

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

#: The families that aperture photometry measures directly (issue 23's physical properties):
#: the ones a flux-aware embedding has to win against morphometrics.
PHYSICAL_FAMILIES = (
    "redshift",
    "stellar mass & luminosity",
    "apparent magnitude",
    "star formation",
    "colour",
)


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
