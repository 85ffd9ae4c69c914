"""A model's decision: its scores calibrated into probabilities, and the threshold that turns a
probability into `predicted_label`, both fitted on the validation window.

A network trained on a label with a 20-35% base rate gives scores that rarely cross 0.5, so a
fixed threshold of 0.5 labels every row 0. The decision is fitted once per model, from the
validation split's score histogram (`evaluation.score_histogram`, no row leaves Spark), and
recorded with the model in the registry (`results.models.decisions`); scoring, the Transformer,
the SavedModel and the report all apply the same one.

- Calibration (`evaluation.decision.calibration` in the dataset): `platt` fits
  p' = sigmoid(a * logit(p) + b) by weighted logistic regression over the histogram's bins;
  `isotonic` fits a non-decreasing step function of the score (pool adjacent violators over the
  bins); `none` keeps the score. Both are monotone, so the ranking (and the AUC) stays.
- Threshold (`evaluation.decision.objective`): `f1` (the default) maximises F1; `precision_at`
  the highest recall whose precision is at least `at`; `recall_at` the highest precision whose
  recall is at least `at`; `cost` the lowest `false_positive * FP + false_negative * FN`;
  `youden` the highest TPR - FPR. The threshold is a calibrated probability.

    >>> rule = DecisionRule(objective="f1", calibration="platt")
    >>> d = fit_decision(score_histogram(validation, bins=DECISION_BINS), rule, chosen_on="validation")
    >>> d.apply(scored)          # score calibrated, predicted_label = score >= d.threshold
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from pipelines.datasets.dataset import CALIBRATIONS, OBJECTIVES, DecisionRule  # noqa: F401  (re-exported)

# The histogram resolution the threshold is chosen at (and the calibration fitted on).
DECISION_BINS = 10_000


@dataclass(frozen=True)
class Decision:
    """A fitted decision. `calibration` names the map from score to probability and `params` holds
    it: platt {"a", "b"}; isotonic {"starts", "values"} (the step function's value from each start
    score on); none {}. `threshold` is on the calibrated scale."""
    threshold: float
    calibration: str = "none"
    params: dict = field(default_factory=dict)
    objective: str = "fixed"
    chosen_on: str = "configuration"

    @classmethod
    def fixed(cls, threshold: float) -> "Decision":
        """Raw scores and a configured threshold (`training.threshold`): what a model registered
        before decisions were fitted is served with."""
        return cls(threshold=float(threshold))

    # -- applying it -------------------------------------------------------------------------
    def calibrate(self, scores):
        """A NumPy array of scores as calibrated probabilities."""
        import numpy as np
        from scipy.special import expit   # the logistic function, without overflow warnings

        p = np.asarray(scores, dtype="float64")
        if self.calibration == "platt":
            z = np.log(np.clip(p, _EPS, 1 - _EPS)) - np.log1p(-np.clip(p, _EPS, 1 - _EPS))
            return expit(self.params["a"] * z + self.params["b"])
        if self.calibration == "isotonic":
            starts, values = np.asarray(self.params["starts"]), np.asarray(self.params["values"])
            return values[np.clip(np.searchsorted(starts, p, side="right") - 1, 0, len(values) - 1)]
        return p

    def labels(self, calibrated):
        import numpy as np

        return (np.asarray(calibrated) >= self.threshold).astype("int32")

    def column(self, score):
        """The Spark Column of the calibrated `score` (a Column)."""
        from pyspark.sql import functions as F

        if self.calibration == "platt":
            p = F.least(F.greatest(score.cast("double"), F.lit(_EPS)), F.lit(1 - _EPS))
            z = F.log(p) - F.log(1 - p)
            return 1 / (1 + F.exp(-(F.lit(self.params["a"]) * z + F.lit(self.params["b"]))))
        if self.calibration == "isotonic":
            out = F.lit(float(self.params["values"][0]))
            for start, value in zip(self.params["starts"][1:], self.params["values"][1:]):
                out = F.when(score >= F.lit(float(start)), F.lit(float(value))).otherwise(out)
            return out
        return score.cast("double")

    def apply(self, df, score_col: str = "score"):
        """`df` with `score_col` calibrated and `predicted_label` (int) decided from it."""
        from pyspark.sql import functions as F

        calibrated = df.withColumn(score_col, self.column(F.col(score_col)))
        return calibrated.withColumn("predicted_label", (F.col(score_col) >= F.lit(self.threshold)).cast("int"))

    def describe(self) -> str:
        return (f"threshold {self.threshold:.4f} ({self.objective}, chosen on {self.chosen_on}), "
                f"calibration {self.calibration}")

    # -- storing it --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Decision":
        return cls(threshold=float(data["threshold"]), calibration=data.get("calibration", "none"),
                   params=dict(data.get("params") or {}), objective=data.get("objective", "fixed"),
                   chosen_on=data.get("chosen_on", "configuration"))


def as_decision(decision: "Decision | float") -> "Decision":
    """A Decision as given, or a fixed threshold on the raw score for a bare number."""
    return decision if isinstance(decision, Decision) else Decision.fixed(float(decision))


def decisions_json(decisions: dict[str, Decision]) -> str:
    """{model: decision} as the registry stores it."""
    return json.dumps({k: d.to_dict() for k, d in decisions.items()}, sort_keys=True)


def decisions_from_json(text: str | None) -> dict[str, Decision]:
    return {k: Decision.from_dict(v) for k, v in json.loads(text).items()} if text else {}


_EPS = 1e-7


# -- fitting it -----------------------------------------------------------------------------------
def fit_decision(hist, rule: DecisionRule, chosen_on: str, bins: int = DECISION_BINS) -> Decision:
    """The decision `rule` asks for, fitted on a score histogram of `bins` bins (`bin`, `pos`,
    `neg`, `mean_score`: `evaluation.score_histogram` of the validation split). With one class
    only, the scores stay raw and the threshold is 0.5."""
    import numpy as np

    h = hist.set_index("bin").reindex(range(bins))
    pos, neg = h["pos"].fillna(0).to_numpy(float), h["neg"].fillna(0).to_numpy(float)
    edges = np.arange(bins) / bins
    mean = h["mean_score"].to_numpy(float)
    mean = np.where(np.isnan(mean), edges + 0.5 / bins, mean)
    if pos.sum() == 0 or neg.sum() == 0:
        return Decision(threshold=0.5, objective=rule.objective, chosen_on=f"{chosen_on} (one class only: not fitted)")
    calibration, params = rule.calibration, {}
    if calibration == "platt":
        a, b = _platt(mean, pos, neg)
        if a <= 0:   # a score that ranks the wrong way round: no monotone calibration fits
            calibration = "none"
        else:
            params = {"a": a, "b": b}
    elif calibration == "isotonic":
        params = _isotonic(edges, pos, neg)
    draft = Decision(threshold=0.5, calibration=calibration, params=params)
    # Calibrated value at each bin's lower edge: the rows of bins >= k are those scored at least
    # that value. A bin whose edge maps to the same value as the one below it (an isotonic step)
    # cannot be a cut on its own.
    at_edge = draft.calibrate(edges)
    cuts = np.flatnonzero(np.r_[False, at_edge[1:] > at_edge[:-1]])
    if len(cuts) == 0:
        return Decision(threshold=float(at_edge[-1]) if len(at_edge) else 0.5, calibration=calibration,
                        params=params, objective=rule.objective, chosen_on=chosen_on)
    tp = pos[::-1].cumsum()[::-1][cuts]
    fp = neg[::-1].cumsum()[::-1][cuts]
    best = cuts[_best_cut(tp, fp, pos.sum(), neg.sum(), rule)]
    return Decision(threshold=float(at_edge[best]), calibration=calibration, params=params,
                    objective=rule.describe(), chosen_on=chosen_on)


def _best_cut(tp, fp, pos: float, neg: float, rule: DecisionRule) -> int:
    """The index of the best of the candidate cuts (rows at or above a cut are called positive)."""
    import numpy as np

    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = tp / pos
    if rule.objective == "f1":
        return int((2 * tp / (tp + fp + pos)).argmax())
    if rule.objective == "youden":
        return int((recall - fp / neg).argmax())
    if rule.objective == "cost":
        return int((rule.false_positive * fp + rule.false_negative * (pos - tp)).argmin())
    floor, keep, gain = (precision, recall, recall) if rule.objective == "precision_at" else (recall, precision, precision)
    ok = floor >= rule.at - 1e-12
    if not ok.any():
        # The floor is out of reach on the validation window: the closest cut to it.
        return int(floor.argmax())
    return int(np.where(ok, gain + 1e-12 * keep, -np.inf).argmax())


def _platt(scores, pos, neg, iterations: int = 100) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit(s) + b) maximising the likelihood of the binned labels (Newton's
    method on two parameters, with Platt's smoothed targets against overconfidence)."""
    import numpy as np
    from scipy.special import expit

    keep = (pos + neg) > 0
    z = np.log(np.clip(scores[keep], _EPS, 1 - _EPS)) - np.log1p(-np.clip(scores[keep], _EPS, 1 - _EPS))
    n = (pos + neg)[keep]
    # Platt (1999): targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1 and 0.
    hi, lo = (pos.sum() + 1) / (pos.sum() + 2), 1 / (neg.sum() + 2)
    y = (pos[keep] * hi + neg[keep] * lo) / n
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = expit(a * z + b)
        g = np.array([np.sum(n * (p - y) * z), np.sum(n * (p - y))])
        w = n * p * (1 - p)
        hess = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def _isotonic(edges, pos, neg) -> dict:
    """Pool adjacent violators over the bins (weights: rows per bin): a non-decreasing step
    function, as {"starts": [score where each step begins], "values": [its probability]}."""
    blocks: list[list[float]] = []   # [start edge, positives, rows]
    for edge, p, n in zip(edges, pos, pos + neg):
        if n == 0:
            continue
        blocks.append([float(edge), float(p), float(n)])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            start, p1, n1 = blocks[-2]
            _, p2, n2 = blocks.pop()
            blocks[-1] = [start, p1 + p2, n1 + n2]
    starts = [0.0] + [b[0] for b in blocks[1:]]
    return {"starts": starts, "values": [b[1] / b[2] for b in blocks]}


def expected_calibration_error(mean_score, observed, rows) -> float:
    """Σ |mean score - observed rate| weighted by rows, over the score ranges of `calibration`."""
    total = float(sum(rows))
    if not total:
        return math.nan
    return float(sum(abs(s - o) * n for s, o, n in zip(mean_score, observed, rows)) / total)
