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

from astropt.probe.baselines import (
    GRAM_MAX_ROWS,
    FoldPCA,
    PixelSource,
    discover_embeddings,
    load_embedding_sets,
    reduce_features,
)
from astropt.probe.baselines import (
    _load as _load,  # astropt.maps reads exports through it
)
from astropt.probe.cli import COMMAND, ProbeOptions, eval_split, main, run_probe
from astropt.probe.fits import (
    angular_error,
    circular_metrics,
    classification_metrics,
    fit_predict,
    nmad,
    regression_metrics,
    ridge_classifier_cv,
    ridge_cv,
    split_r2,
)
from astropt.probe.intervals import holm, outcome, resampled_t
from astropt.probe.plots import plot_improvements, plot_label_efficiency
from astropt.probe.protocol import (
    CATEGORICAL_COLUMNS,
    CIRCULAR_COLUMNS,
    DEFAULT_LABEL_SIZES,
    EVAL_SPLITS,
    FAMILIES,
    HEADLINE,
    HEADLINE_TARGETS,
    INTERVAL,
    LOWER_IS_BETTER,
    MAX_CLASSES,
    METRICS,
    PROTOCOLS,
    RIDGE_ALPHAS,
    SPLIT_DIGITS,
    Protocol,
    Target,
    Task,
    auto_targets,
    families_of,
    family_headline,
    fold_plan,
    parse_target,
    resolve_protocol,
    resolve_targets,
)
from astropt.probe.report import (
    HEADLINE_FORMAT,
    LEGACY_HEADLINE_FORMATS,
    METRIC_LABELS,
    README_BLOCK,
    ProbeRun,
    check_headline,
    comparisons_note,
    headline_data,
    headline_table,
    markdown_table,
    read_headline,
    readme_block,
    recompute_headline,
    update_readme,
    write_report,
)
from astropt.probe.suite import run_probe_suite, run_probes

__all__ = [
    "CATEGORICAL_COLUMNS",
    "CIRCULAR_COLUMNS",
    "COMMAND",
    "DEFAULT_LABEL_SIZES",
    "EVAL_SPLITS",
    "FAMILIES",
    "FoldPCA",
    "GRAM_MAX_ROWS",
    "HEADLINE",
    "HEADLINE_FORMAT",
    "HEADLINE_TARGETS",
    "INTERVAL",
    "LEGACY_HEADLINE_FORMATS",
    "LOWER_IS_BETTER",
    "MAX_CLASSES",
    "METRICS",
    "METRIC_LABELS",
    "PROTOCOLS",
    "PixelSource",
    "ProbeOptions",
    "ProbeRun",
    "Protocol",
    "README_BLOCK",
    "RIDGE_ALPHAS",
    "SPLIT_DIGITS",
    "Target",
    "Task",
    "angular_error",
    "auto_targets",
    "check_headline",
    "circular_metrics",
    "classification_metrics",
    "comparisons_note",
    "discover_embeddings",
    "eval_split",
    "families_of",
    "family_headline",
    "fit_predict",
    "fold_plan",
    "headline_data",
    "headline_table",
    "holm",
    "load_embedding_sets",
    "main",
    "markdown_table",
    "nmad",
    "outcome",
    "parse_target",
    "plot_improvements",
    "plot_label_efficiency",
    "read_headline",
    "readme_block",
    "recompute_headline",
    "reduce_features",
    "regression_metrics",
    "resampled_t",
    "resolve_protocol",
    "resolve_targets",
    "ridge_classifier_cv",
    "ridge_cv",
    "run_probe",
    "run_probe_suite",
    "run_probes",
    "split_r2",
    "update_readme",
    "write_report",
]
