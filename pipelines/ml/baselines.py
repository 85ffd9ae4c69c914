"""Baselines on the model's own features, each a Spark ML `Pipeline`: the bar the neural model has
to clear. Logistic regression and gradient-boosted trees are MLlib's; XGBoost's trees run through
`xgboost.spark`, a Python stage that saves and loads inside a `PipelineModel` like the others.

    >>> frames = model_input_frames(lakehouse, version=3)
    >>> fit_baselines(spark, frames["train"], frames["validation"], seed=cfg.training.seed)["logreg"]["val_auc"]
"""
from __future__ import annotations

import time

from pipelines import catalog
from pipelines.catalog import MODEL_INPUT
from pipelines.config.settings import BASELINES as DECLARED

BASELINES = tuple(DECLARED)
BASELINE_NAMES = {kind: baseline.name for kind, baseline in DECLARED.items()}
# The regression head's baselines, by the kind the configuration's lists name (`logreg` is the
# linear model of either head): MLlib's linear regression, MLlib's and XGBoost's regression trees.
REGRESSION_BASELINES = {"logreg": "linreg", "gbt": "gbt", "xgb": "xgb"}


def model_input_frames(lakehouse, version: int, splits: tuple[str, ...] = ("train", "validation"),
                       table: str = MODEL_INPUT) -> dict:
    """The rows of each split of `table` at `version`, as Spark DataFrames (the model's exact inputs)."""
    from pyspark.sql import functions as F

    [split_column] = catalog.entry(table).partition_by
    df = lakehouse.table(table).read(version=version)
    return {split: df.filter(F.col(split_column) == split) for split in splits}


def baseline_scores(df, fitted, key: str):
    """`df` scored by a fitted MLlib pipeline: `key`, label, score (the probability of the label)."""
    from pyspark.ml.functions import vector_to_array

    return fitted.transform(df).select(key, "label", vector_to_array("probability")[1].alias("score"))


def feature_columns(columns: list[str]) -> tuple[list[str], list[str]]:
    """The numeric (num_*) and categorical (cat_*) model columns among `columns`."""
    return ([c for c in columns if c.startswith("num_")], [c for c in columns if c.startswith("cat_")])


def fit_baselines(spark, train_df, val_df, kinds: tuple[str, ...] | list[str] = BASELINES, label: str = "label", *,
                  seed: int, max_iter: int = 50, params: dict[str, dict] | None = None) -> dict[str, dict]:
    """Fit each baseline in `kinds` on `train_df` and score AUC on train and validation.

    logreg: logistic regression on num_* plus a one-hot encoding of each cat_* index (index 0,
    out of vocabulary, keeps its own column). gbt: MLlib's gradient-boosted trees on num_* and the
    raw cat_* indices (trees split on them directly). xgb: XGBoost's histogram trees on the same
    columns as gbt, in one Spark task. Returns
    ``{kind: {"train_auc", "val_auc", "seconds", "features", "model"}}`` where "model" is the
    fitted `PipelineModel` (its `probability` column, [p0, p1], scores new rows). `params`
    overrides a baseline's settings, as `lakehouse-dl tune` finds them (the names each kind takes:
    `pipelines.config.settings.BASELINES`).
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import GBTClassifier, LogisticRegression
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.feature import OneHotEncoder, VectorAssembler
    from pyspark.sql import functions as F

    unknown = [k for k in kinds if k not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {', '.join(BASELINES)}")
    numeric, categorical = feature_columns(train_df.columns)
    if not numeric and not categorical:
        raise ValueError(f"no num_* or cat_* columns to fit baselines on among {train_df.columns}")
    keep = [*numeric, *categorical, label]
    train = train_df.select(*keep).withColumn(label, F.col(label).cast("double")).cache()
    val = val_df.select(*keep).withColumn(label, F.col(label).cast("double")).cache()
    evaluator = BinaryClassificationEvaluator(labelCol=label, rawPredictionCol="rawPrediction",
                                              metricName="areaUnderROC")
    results: dict[str, dict] = {}
    try:
        for kind in kinds:
            started = time.time()
            p = (params or {}).get(kind, {})
            if kind == "logreg":
                onehot = [f"{c}_onehot" for c in categorical]
                stages = ([OneHotEncoder(inputCols=categorical, outputCols=onehot, handleInvalid="keep")]
                          if categorical else [])
                stages += [VectorAssembler(inputCols=numeric + onehot, outputCol="features", handleInvalid="keep"),
                           LogisticRegression(labelCol=label, featuresCol="features", maxIter=max_iter,
                                              regParam=float(p.get("reg_param", 0.0)),
                                              elasticNetParam=float(p.get("elastic_net", 0.0)))]
            else:
                trees = (GBTClassifier(labelCol=label, featuresCol="features", maxIter=int(p.get("max_iter", max_iter)),
                                       maxDepth=int(p.get("max_depth", 5)), stepSize=float(p.get("step_size", 0.1)),
                                       maxBins=64, seed=seed)
                         if kind == "gbt" else xgboost_classifier(label, seed, p))
                stages = [VectorAssembler(inputCols=numeric + categorical, outputCol="features", handleInvalid="keep"),
                          trees]
            fitted = Pipeline(stages=stages).fit(train)
            results[kind] = {
                "train_auc": float(evaluator.evaluate(fitted.transform(train))),
                "val_auc": float(evaluator.evaluate(fitted.transform(val))),
                "seconds": round(time.time() - started, 2),
                "features": len(numeric) + len(categorical),
                "model": fitted,
            }
    finally:
        train.unpersist()
        val.unpersist()
    return results


def xgboost_classifier(label: str, seed: int, params: dict):
    """XGBoost's classifier on the assembled `features`: 200 trees of depth 6 at learning rate 0.1
    unless `params` says otherwise, in one Spark task (`num_workers=1`; its threads are
    `spark.task.cpus`).

    `missing` is NaN, what the assembler writes for a null (`handleInvalid="keep"`): a 0 is a
    value (a standardised mean, an out-of-vocabulary index), not a gap, although the assembler may
    hand it over as a sparse vector's absent entry (xgboost.spark reads every vector densely).
    """
    from xgboost.spark import SparkXGBClassifier

    return SparkXGBClassifier(features_col="features", label_col=label, num_workers=1, seed=seed,
                              max_depth=int(params.get("max_depth", 6)),
                              n_estimators=int(params.get("n_estimators", 200)),
                              learning_rate=float(params.get("learning_rate", 0.1)),
                              missing=float("nan"))


def fit_regression_baselines(train_df, kinds: list[str], label: str = "target", *, seed: int,
                             max_iter: int = 50) -> dict[str, dict]:
    """Fit the regression baselines `kinds` (values of REGRESSION_BASELINES) on `train_df`'s rows
    with a known `label`, on the columns the classification baselines read: linreg on num_* and a
    one-hot encoding of each cat_* index, gbt and xgb on num_* and the raw indices. Returns
    ``{kind: {"seconds", "features", "model"}}``; the fitted `PipelineModel`'s `prediction` column
    predicts new rows (`regression_predictions`).
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import OneHotEncoder, VectorAssembler
    from pyspark.ml.regression import GBTRegressor, LinearRegression
    from pyspark.sql import functions as F

    unknown = [k for k in kinds if k not in REGRESSION_BASELINES.values()]
    if unknown:
        raise ValueError(f"unknown regression baseline(s) {unknown}; known: {', '.join(REGRESSION_BASELINES.values())}")
    numeric, categorical = feature_columns(train_df.columns)
    if not numeric and not categorical:
        raise ValueError(f"no num_* or cat_* columns to fit baselines on among {train_df.columns}")
    train = (train_df.select(*numeric, *categorical, F.col(label).cast("double").alias(label))
             .filter(F.col(label).isNotNull()).cache())
    results: dict[str, dict] = {}
    try:
        for kind in kinds:
            started = time.time()
            if kind == "linreg":
                onehot = [f"{c}_onehot" for c in categorical]
                stages = ([OneHotEncoder(inputCols=categorical, outputCols=onehot, handleInvalid="keep")]
                          if categorical else [])
                stages += [VectorAssembler(inputCols=numeric + onehot, outputCol="features", handleInvalid="keep"),
                           LinearRegression(labelCol=label, featuresCol="features", maxIter=max_iter)]
            else:
                if kind == "gbt":
                    trees = GBTRegressor(labelCol=label, featuresCol="features", maxIter=max_iter, maxDepth=5,
                                         stepSize=0.1, maxBins=64, seed=seed)
                else:
                    from xgboost.spark import SparkXGBRegressor

                    trees = SparkXGBRegressor(features_col="features", label_col=label, num_workers=1, seed=seed,
                                              max_depth=6, n_estimators=200, learning_rate=0.1, missing=float("nan"))
                stages = [VectorAssembler(inputCols=numeric + categorical, outputCol="features", handleInvalid="keep"),
                          trees]
            results[kind] = {"model": Pipeline(stages=stages).fit(train), "seconds": round(time.time() - started, 2),
                             "features": len(numeric) + len(categorical)}
    finally:
        train.unpersist()
    return results


def regression_predictions(df, fitted, key_columns: tuple[str, ...]):
    """`df` predicted by a fitted regression baseline: `key_columns` + `prediction` (double)."""
    from pyspark.sql import functions as F

    return fitted.transform(df).select(*key_columns, F.col("prediction").cast("double").alias("prediction"))
