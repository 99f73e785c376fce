"""Agreement between the model's Agatston scores and a site's reference reads.

Why here, in a few lines of numpy: the statistics a cardiologist reads for a CAC method comparison
are four small formulas. Spearman's rho comes from scipy (already a dependency); linear-weighted
kappa is not in scipy (scikit-learn has it, but is not worth a dependency for ten lines), and
Bland-Altman is a mean and a standard deviation. Each is tested against hand-computed values
(``tests/infer/test_cac_agreement.py``).

- categories: the Agatston bands 0 / 1-100 / 101-400 / >400 (:data:`connector.infer.agatston.CATEGORIES`,
  from the unrounded score);
- the 4x4 table: rows are the reference category, columns the model's;
- linear-weighted kappa: ``1 - sum(w * observed) / sum(w * expected)`` with ``w = |i - j| / 3``;
- Bland-Altman: differences model - reference (Agatston units), bias = their mean, 95 % limits of
  agreement = bias +- 1.96 x their sample standard deviation (n - 1);
- Spearman's rho of the two scores (ties get average ranks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from connector.infer.agatston import CATEGORIES, category_for

LIMITS_Z = 1.96  # 95 % limits of agreement


def category_table(reference: Sequence[str], model: Sequence[str],
                   categories: Sequence[str] = CATEGORIES) -> np.ndarray:
    """Counts, rows = reference category, columns = model category."""
    index = {c: i for i, c in enumerate(categories)}
    table = np.zeros((len(categories), len(categories)), dtype=np.int64)
    for r, m in zip(reference, model, strict=True):
        table[index[r], index[m]] += 1
    return table


def linear_weighted_kappa(table: np.ndarray) -> float | None:
    """Cohen's kappa with linear weights from a square table of counts; None for an empty table.

    1.0 when the expected disagreement is 0 (every study in one category on both sides, all agreeing).
    """
    counts = np.asarray(table, dtype=float)
    total = counts.sum()
    if total == 0:
        return None
    k = counts.shape[0]
    observed = counts / total
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((k, k))
    weights = np.abs(i - j) / (k - 1)
    denominator = float((weights * expected).sum())
    if denominator == 0:
        return 1.0 if float((weights * observed).sum()) == 0 else 0.0
    return float(1.0 - (weights * observed).sum() / denominator)


@dataclass(frozen=True)
class BlandAltman:
    bias: float  # mean of model - reference
    sd: float  # sample standard deviation of the differences
    lower: float  # bias - 1.96 sd
    upper: float  # bias + 1.96 sd


def bland_altman(reference: Sequence[float], model: Sequence[float]) -> BlandAltman | None:
    """Bias and 95 % limits of agreement of model - reference; None with fewer than 2 pairs."""
    diff = np.asarray(model, dtype=float) - np.asarray(reference, dtype=float)
    if diff.size < 2:
        return None
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1))
    return BlandAltman(bias, sd, bias - LIMITS_Z * sd, bias + LIMITS_Z * sd)


def spearman_rho(reference: Sequence[float], model: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 pairs or when one side is constant."""
    a = np.asarray(reference, dtype=float)
    b = np.asarray(model, dtype=float)
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


@dataclass(frozen=True)
class Agreement:
    n: int
    table: np.ndarray
    kappa: float | None
    bland_altman: BlandAltman | None
    rho: float | None
    exact_agreement: int  # studies whose categories agree

    def to_json(self) -> dict[str, object]:
        ba = self.bland_altman
        return {
            "n": self.n,
            "categories": list(CATEGORIES),
            "table": self.table.tolist(),
            "table_rows": "reference",
            "table_columns": "model",
            "linear_weighted_kappa": _round(self.kappa),
            "category_agreement": self.exact_agreement,
            "bland_altman": None if ba is None else {
                "bias": _round(ba.bias), "sd": _round(ba.sd), "lower": _round(ba.lower), "upper": _round(ba.upper),
                "differences": "model - reference (Agatston units)"},
            "spearman_rho": _round(self.rho),
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def agreement(reference: Sequence[float], model: Sequence[float]) -> Agreement:
    """Every statistic of the comparison, from the two lists of Agatston scores (same order)."""
    ref_cat = [category_for(float(v)) for v in reference]
    model_cat = [category_for(float(v)) for v in model]
    table = category_table(ref_cat, model_cat)
    return Agreement(
        n=len(ref_cat),
        table=table,
        kappa=linear_weighted_kappa(table),
        bland_altman=bland_altman(reference, model),
        rho=spearman_rho(reference, model),
        exact_agreement=int(np.trace(table)),
    )
