"""Binary-classification metrics computed in Spark (scores never leave the executors but as counts).

AUC, log loss, accuracy, precision, recall and F1 at a threshold, plus the binned counts behind
ROC and calibration plots. Every function takes a DataFrame with a `score` column (probability
of a late arrival) and a `label` column (0/1).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from pipelines.ml.inputs import CATEGORICAL_PREFIX, NUMERIC_PREFIX

EPS = 1e-7
BINS = 200
# The AUC's resolution: exact up to ties within a 1/10,000 score bin.
AUC_BINS = 10_000


@dataclass
class BinaryMetrics:
    rows: int
    positives: int
    auc: float
    log_loss: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    threshold: float

    def as_dict(self) -> dict:
        return asdict(self)


def score_bin(score_col: str, bins: int):
    """The bin of `score_col` among `bins` equal bins of [0, 1], as an int column (a score of 1 in the last)."""
    from pyspark.sql import functions as F

    return F.least(F.floor(F.col(score_col) * bins), F.lit(bins - 1)).cast("int")


def binary_metrics(df, threshold: float, score_col: str = "score", label_col: str = "label") -> BinaryMetrics:
    """All metrics in one pass over `df` (`metrics_and_histogram`)."""
    return metrics_and_histogram(df, threshold, score_col, label_col)[0]


def metrics_and_histogram(df, threshold: float, score_col: str = "score", label_col: str = "label",
                          bins: int = BINS):
    """`binary_metrics(df, threshold)` and `score_histogram(df, bins=bins)` from one Spark job:
    positives, negatives, log loss and score sums per 1/`AUC_BINS` score bin and side of the
    threshold (at most 2 x `AUC_BINS` small rows), summed up on the driver. `bins` divides `AUC_BINS`."""
    from pyspark.sql import functions as F

    if AUC_BINS % bins:
        raise ValueError(f"bins must divide {AUC_BINS}, not {bins}")
    score = F.col(score_col).cast("double")
    s = F.least(F.greatest(score, F.lit(EPS)), F.lit(1 - EPS))
    y = F.col(label_col).cast("double")
    fine = (df.groupBy(score_bin(score_col, AUC_BINS).alias("bin"),
                       (F.col(score_col) >= threshold).alias("called"))
              .agg(F.sum(y).alias("pos"), F.sum(1 - y).alias("neg"),
                   F.sum(-(y * F.log(s) + (1 - y) * F.log(1 - s))).alias("ll"), F.sum(score).alias("score_sum"))
              .toPandas())
    n = int(fine["pos"].sum() + fine["neg"].sum())
    if n == 0:
        raise ValueError("cannot evaluate an empty set of scores")
    called = fine["called"].fillna(False).astype(bool)
    tp, fp = float(fine.loc[called, "pos"].sum()), float(fine.loc[called, "neg"].sum())
    fn, tn = float(fine.loc[~called, "pos"].sum()), float(fine.loc[~called, "neg"].sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_bin = fine.groupby("bin", as_index=False)[["pos", "neg", "score_sum"]].sum()
    metrics = BinaryMetrics(
        rows=n, positives=int(fine["pos"].sum()), auc=auc_from_histogram(per_bin),
        log_loss=float(fine["ll"].sum()) / n, accuracy=(tp + tn) / n, precision=precision, recall=recall,
        f1=f1, threshold=threshold)
    coarse = (per_bin.assign(bin=per_bin["bin"] // (AUC_BINS // bins))
              .groupby("bin", as_index=False)[["pos", "neg", "score_sum"]].sum())
    coarse["mean_score"] = coarse["score_sum"] / (coarse["pos"] + coarse["neg"])
    return metrics, coarse[["bin", "pos", "neg", "mean_score"]].sort_values("bin").reset_index(drop=True)


def score_histogram(df, score_col: str = "score", label_col: str = "label", bins: int = BINS):
    """Counts of positives and negatives per score bin, lowest bin first (a small pandas frame)."""
    from pyspark.sql import functions as F

    pdf = (df.groupBy(score_bin(score_col, bins).alias("bin"))
             .agg(F.sum(F.col(label_col).cast("double")).alias("pos"),
                  F.sum(1 - F.col(label_col).cast("double")).alias("neg"),
                  F.avg(F.col(score_col)).alias("mean_score"))
             .toPandas().sort_values("bin").reset_index(drop=True))
    return pdf


def roc_points(hist) -> tuple[list[float], list[float]]:
    """False- and true-positive rates, sweeping the threshold from high to low over the bins."""
    pos_total, neg_total = hist["pos"].sum(), hist["neg"].sum()
    fpr, tpr = [0.0], [0.0]
    tp = fp = 0.0
    for _, row in hist.iloc[::-1].iterrows():
        tp += row["pos"]
        fp += row["neg"]
        fpr.append(fp / neg_total if neg_total else 0.0)
        tpr.append(tp / pos_total if pos_total else 0.0)
    return fpr, tpr


def auc_from_histogram(hist) -> float:
    """Area under the ROC curve of binned counts (`bin`, `pos`, `neg`), ties within a bin counted
    half; NaN when the rows hold only one class."""
    hist = hist.sort_values("bin")
    pos_total, neg_total = hist["pos"].sum(), hist["neg"].sum()
    if pos_total == 0 or neg_total == 0:
        return float("nan")
    # Mann-Whitney: each positive beats the negatives in lower bins and ties half of its own bin's.
    neg_below = hist["neg"].cumsum() - hist["neg"]
    wins = (hist["pos"] * (neg_below + 0.5 * hist["neg"])).sum()
    return float(wins / (pos_total * neg_total))


def calibration(hist, groups: int = 10):
    """Mean predicted score against observed late-arrival rate, in `groups` score ranges."""
    import numpy as np

    h = hist.copy()
    h["group"] = (h["bin"] * groups // BINS).astype(int)
    h["weighted"] = h["mean_score"] * (h["pos"] + h["neg"])
    g = h.groupby("group").agg(pos=("pos", "sum"), neg=("neg", "sum"), weighted=("weighted", "sum"))
    n = g["pos"] + g["neg"]
    return (g["weighted"] / n).to_numpy(), (g["pos"] / n).to_numpy(), n.to_numpy().astype(np.int64)


THRESHOLD_RULES = ("fixed", "f1", "youden")


def choose_threshold(hist, rule: str, fixed: float, bins: int) -> float:
    """The threshold `rule` picks from a score histogram of `bins` bins (`score_histogram`'s, of
    the validation split): `fixed` returns `fixed`; `f1` and `youden` return the bin edge b / bins
    that maximises F1, or TPR − FPR, when the rows scored at least b / bins are called positive.

        >>> choose_threshold(score_histogram(validation, bins=1000), "f1", 0.5, bins=1000)
        0.231
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; known: {', '.join(THRESHOLD_RULES)}")
    if rule == "fixed":
        return float(fixed)
    h = hist.set_index("bin")[["pos", "neg"]].reindex(range(bins), fill_value=0).astype(float)
    tp, fp = h["pos"][::-1].cumsum()[::-1].to_numpy(), h["neg"][::-1].cumsum()[::-1].to_numpy()
    pos, neg = h["pos"].sum(), h["neg"].sum()
    if pos == 0 or neg == 0:
        return float(fixed)
    if rule == "f1":
        objective = 2 * tp / (tp + fp + pos)     # 2TP / (2TP + FP + FN), FN = pos − TP
    else:
        objective = tp / pos - fp / neg
    best = 1 + int(objective[1:].argmax())      # edge 0 would call every row positive
    return best / bins


def confusion(df, threshold: float, score_col: str = "score", label_col: str = "label") -> dict[str, int]:
    """True and false positives and negatives of `df` when a score of at least `threshold` is positive."""
    from pyspark.sql import functions as F

    y, pred = F.col(label_col).cast("double"), (F.col(score_col) >= threshold).cast("double")
    row = df.agg(F.sum(pred * y).alias("tp"), F.sum(pred * (1 - y)).alias("fp"),
                 F.sum((1 - pred) * y).alias("fn"), F.sum((1 - pred) * (1 - y)).alias("tn")).collect()[0]
    return {k: int(row[k] or 0) for k in ("tp", "fp", "fn", "tn")}


def brier_score(df, score_col: str = "score", label_col: str = "label") -> float:
    """Mean squared difference between the score and the 0/1 label."""
    from pyspark.sql import functions as F

    value = df.agg(F.avg((F.col(score_col) - F.col(label_col).cast("double")) ** 2)).collect()[0][0]
    return float("nan") if value is None else float(value)


def grouped_histogram(df, groups: list[str], bins: int, score_col: str = "score", label_col: str = "label"):
    """`score_histogram` per value of the `groups` columns, in one pass: a small pandas frame of
    the group columns, `bin`, `pos`, `neg` and `score_sum`."""
    from pyspark.sql import functions as F

    y = F.col(label_col).cast("double")
    return (df.groupBy(*groups, score_bin(score_col, bins).alias("bin"))
              .agg(F.sum(y).alias("pos"), F.sum(1 - y).alias("neg"), F.sum(F.col(score_col)).alias("score_sum"))
              .toPandas())


def feature_groups(columns: list[str]) -> dict[str, list[str]]:
    """The model's inputs grouped by feature, what permutation importance shuffles together: a
    numeric column with its `_missing` flag, each categorical column alone.

        >>> feature_groups(["num_temp", "num_temp_missing", "cat_origin", "label"])
        {'temp': ['num_temp', 'num_temp_missing'], 'origin': ['cat_origin']}
    """
    inputs = [c for c in columns if c.startswith((NUMERIC_PREFIX, CATEGORICAL_PREFIX))]
    groups: dict[str, list[str]] = {}
    for column in inputs:
        base = column[:-len("_missing")] if column.endswith("_missing") and column[:-len("_missing")] in inputs else column
        groups.setdefault(base.split("_", 1)[1], []).append(column)
    return groups
