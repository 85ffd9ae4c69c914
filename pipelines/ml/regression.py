"""The regression head's measures: MAE, RMSE and MAPE computed in Spark, the network's predictions
in the target's units, and the bless rule (the network is served only where its validation MAE
beats the best baseline's and the best naive forecast's).

    >>> regression_metrics(predictions, prediction_col="prediction").mae
    >>> decide(metrics)                                       # ("blessed", "validation MAE 1.52 beats ...")
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pipelines.ml.naive import PREFIX as NAIVE_PREFIX
from pipelines.stages.gold.spec import TARGET


@dataclass
class RegressionMetrics:
    rows: int
    mae: float
    rmse: float
    mape: float     # percent, over the rows whose target is not 0; NaN when every target is 0

    def as_dict(self) -> dict:
        return asdict(self)


def regression_metrics(df, prediction_col: str = "prediction", target_col: str = TARGET) -> RegressionMetrics:
    """Mean absolute error, root mean squared error and mean absolute percentage error of
    `prediction_col` against `target_col`, in one pass over `df` (rows with a null target left out).

        >>> regression_metrics(spark.createDataFrame([(1.0, 2.0), (4.0, 2.0)], "target double, prediction double"))
        RegressionMetrics(rows=2, mae=1.5, rmse=1.5811..., mape=62.5)
    """
    from pyspark.sql import functions as F

    by = "_all"
    found = regression_metrics_by(df.withColumn(by, F.lit(0)), [prediction_col], by, target_col)
    if not found:
        raise ValueError("cannot evaluate an empty set of predictions")
    return found[(0, prediction_col)]


def regression_metrics_by(df, prediction_cols: list[str], by: str = "split",
                          target_col: str = TARGET) -> dict[tuple, RegressionMetrics]:
    """`regression_metrics` of each of `prediction_cols` for each value of `by`, in one pass:
    {(value of `by`, column): RegressionMetrics}."""
    from pyspark.sql import functions as F

    y = F.col(target_col).cast("double")
    aggregates = []
    for i, column in enumerate(prediction_cols):
        p = F.col(column).cast("double")
        error = p - y
        aggregates += [F.count(p).alias(f"n{i}"), F.avg(F.abs(error)).alias(f"mae{i}"),
                       F.avg(error * error).alias(f"mse{i}"), F.avg(F.when(y != 0, F.abs(error) / F.abs(y))).alias(f"ape{i}")]
    out = {}
    for row in df.filter(y.isNotNull()).groupBy(by).agg(*aggregates).collect():
        for i, column in enumerate(prediction_cols):
            n, ape = int(row[f"n{i}"] or 0), row[f"ape{i}"]
            if n:
                out[(row[by], column)] = RegressionMetrics(
                    rows=n, mae=float(row[f"mae{i}"]), rmse=math.sqrt(float(row[f"mse{i}"])),
                    mape=float("nan") if ape is None else 100.0 * float(ape))
    return out


def predict(df, model_path: str, key_columns: tuple[str, ...], batch_size: int = 4096):
    """`df` (model-input rows) with the saved regression network's prediction, in the target's units
    (the model restores them itself): `key_columns` + `prediction`. Lazy, scored in Spark tasks."""
    from pyspark.sql.types import DoubleType, StructField, StructType

    from pipelines.ml.inputs import model_inputs, spec_of_model
    from pipelines.ml.model import load_model

    out_schema = StructType([df.schema[k] for k in key_columns] + [StructField("prediction", DoubleType(), False)])

    def predict_batches(frames):
        model = load_model(model_path)
        spec = spec_of_model(model)
        for frame in frames:
            if frame.empty:
                continue
            out = frame[list(key_columns)].copy()
            out["prediction"] = model.predict(model_inputs(frame, spec), batch_size=batch_size, verbose=0)\
                .reshape(-1).astype("float64")
            yield out

    return df.mapInPandas(predict_batches, out_schema)


def decide(metrics: list[dict], candidate: str = "dnn", split: str = "validation",
           backtest_cfg=None, blessed_mae: float | None = None) -> tuple[str, str]:
    """Bless or reject, with the reason: `candidate`'s MAE on `split` must be below the best
    baseline's (every other model not named `naive_*`) and below the best naive forecast's. With
    backtest rows in `metrics` (`pipelines.ml.regression_backtest`) and `backtest_cfg`, first the
    backtest rule: its mean fold MAE plus `spread_penalty` times their spread must be below every
    other model's by more than `min_lift`. Last, as for classification, its MAE on `split` must be
    below `blessed_mae`, the blessed model's on the same rows. The test split chooses nothing."""
    status, reason = _decide(metrics, candidate, split, backtest_cfg)
    if status != "blessed" or blessed_mae is None:
        return status, reason
    mine = next(m["mae"] for m in metrics if m["model"] == candidate and m["split"] == split)
    if not mine < blessed_mae:
        return "rejected", f"{split} MAE {mine:.4f} is not below the blessed model's {blessed_mae:.4f}"
    return status, f"{reason}; {split} MAE {mine:.4f} beats the blessed model's {blessed_mae:.4f}"


def _decide(metrics: list[dict], candidate: str, split: str, backtest_cfg) -> tuple[str, str]:
    """`decide` without the blessed model."""
    from pipelines.ml.backtest import MEAN, SPREAD

    mae = {m["model"]: m["mae"] for m in metrics if m["split"] == split}
    mine = mae.get(candidate, float("nan"))
    naive = {k: v for k, v in mae.items() if k.startswith(NAIVE_PREFIX)}
    baselines = {k: v for k, v in mae.items() if k != candidate and k not in naive}
    if not naive:
        raise ValueError(f"no naive forecast was measured on the {split} split: nothing to bless against")
    bars = [("baseline", min(baselines.items(), key=lambda kv: kv[1])) if baselines else None,
            ("naive forecast", min(naive.items(), key=lambda kv: kv[1]))]
    bars = [b for b in bars if b is not None]
    text = " and ".join(f"the best {what}, {name} {value:.4f}" for what, (name, value) in bars)
    if math.isnan(mine) or any(not mine < value for _, (_, value) in bars):
        status, reason = "rejected", f"{split} MAE {mine:.4f} does not beat {text}"
    else:
        status, reason = "blessed", f"{split} MAE {mine:.4f} beats {text}"
    backtested = {m["model"] for m in metrics if m["split"] == MEAN}
    if backtest_cfg is None or candidate not in backtested:
        return status, reason
    penalty, lift = backtest_cfg.spread_penalty, backtest_cfg.min_lift

    def score(model: str) -> float:
        of = {m["split"]: m["mae"] for m in metrics if m["model"] == model and m["split"] in (MEAN, SPREAD)}
        return of[MEAN] + penalty * (of.get(SPREAD) or 0.0)

    ours, others = score(candidate), sorted(backtested - {candidate})
    scored = ", ".join(f"{o} {score(o):.4f}" for o in others)
    beaten_by = [o for o in others if not ours < score(o) - lift]
    rule = f"mean+{penalty:g}*std MAE" if penalty else "mean MAE"
    if math.isnan(ours) or beaten_by:
        return "rejected", (f"backtest {rule} {ours:.4f} is not below {', '.join(beaten_by) or 'nothing'} "
                            f"by {lift:g} ({scored})")
    return status, f"backtest {rule} {ours:.4f} beats {scored}; {reason}"
