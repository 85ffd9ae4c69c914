"""The stacked ensemble: a logistic regression on the logits of the network's and the baselines'
scores, fitted on the backtest folds' out-of-fold scores.

Each backtest fold scores its month with models trained on the days before it only
(`pipelines.ml.backtest`), so the rows of the folds' months carry, for every model, a score no
model fitted on that row gave: the stacker learns how much to trust each model from them. It is
fitted twice, with the network (`stack`) and without it (`stack_no_dnn`, the baselines only): the
difference between the two is what the network adds.

It is measured like a single model:
- on the folds, each fold's month scored by a stacker fitted on the other folds' months (no row
  scores itself), which gives it backtest rows the bless rule compares;
- on the validation and test windows, with the stacker fitted on every fold applied to the scores
  of the models the nightly fitted on the train split.

    >>> stackers = fit_stackers(done.scores, members=["dnn", "logreg", "gbt", "xgb"], seed=42)
    >>> stackers["stack"].describe()
    'stack = sigmoid(-0.81 + 0.35*logit(dnn) + 0.12*logit(logreg) + ...)'
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import expit

log = logging.getLogger(__name__)

STACK, STACK_WITHOUT_NETWORK = "stack", "stack_no_dnn"
STACKS = (STACK, STACK_WITHOUT_NETWORK)
NETWORK = "dnn"
EPS = 1e-6
STACK_FILE = "stack.json"


@dataclass(frozen=True)
class Stacker:
    """score = sigmoid(intercept + sum of weight * logit(member's raw score))."""

    members: tuple[str, ...]
    weights: tuple[float, ...]
    intercept: float
    rows: int = 0     # the out-of-fold rows it was fitted on

    def predict(self, scores) -> np.ndarray:
        """The stacked score of rows whose members' raw scores are `scores[member]` (arrays)."""
        z = self.intercept + sum(w * logit(np.asarray(scores[m], dtype="float64"))
                                 for m, w in zip(self.members, self.weights))
        return expit(z)

    def column(self, columns: dict):
        """The stacked score as a Spark column, from {member: the column of its raw score}."""
        from pyspark.sql import functions as F

        z = F.lit(self.intercept)
        for member, weight in zip(self.members, self.weights):
            p = F.least(F.greatest(columns[member].cast("double"), F.lit(EPS)), F.lit(1 - EPS))
            z = z + F.lit(weight) * F.log(p / (1 - p))
        return 1 / (1 + F.exp(-z))

    def describe(self, name: str = STACK) -> str:
        terms = " + ".join(f"{w:.3f}*logit({m})" for m, w in zip(self.members, self.weights))
        return f"{name} = sigmoid({self.intercept:.3f} + {terms})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Stacker":
        return cls(tuple(data["members"]), tuple(float(w) for w in data["weights"]), float(data["intercept"]),
                   int(data.get("rows", 0)))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def out_of_fold(scores: dict, members: list[str]):
    """The folds' rows with every member's out-of-fold score side by side: a pandas frame of fold,
    key, label and one column per member, from `scores` ({(fold, model): frame of key, label,
    score}, `Backtest.scores`). A row some member did not score is left out."""
    import pandas as pd

    parts = []
    for fold in sorted({f for f, _ in scores}):
        wide = None
        for member in members:
            frame = scores[(fold, member)][["key", "label", "score"]].rename(columns={"score": member})
            frame = frame.assign(key=frame["key"].astype(str))
            if wide is None:
                wide = frame
            else:
                wide = wide.merge(frame.drop(columns="label"), on="key", how="inner", validate="one_to_one")
        parts.append(wide.assign(fold=fold))
    return pd.concat(parts, ignore_index=True).sort_values(["fold", "key"], ignore_index=True)


def fit(rows, members: list[str], seed: int) -> Stacker:
    """A logistic regression of the label on the members' logits (scikit-learn's, L2 with C=1)."""
    from sklearn.linear_model import LogisticRegression

    x = np.column_stack([logit(rows[m].to_numpy(dtype="float64")) for m in members])
    y = rows["label"].to_numpy(dtype="float64") > 0.5
    if y.all() or not y.any():
        raise ValueError(f"the stacker needs both labels in its {len(y)} out-of-fold rows")
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, y)
    return Stacker(tuple(members), tuple(float(w) for w in model.coef_[0]), float(model.intercept_[0]), len(y))


def members_of(scores: dict, with_network: bool) -> list[str]:
    """The models every fold of `scores` has: the network first (when `with_network`), then the baselines."""
    folds = {f for f, _ in scores}
    present = [m for m in sorted({m for _, m in scores}, key=lambda m: (m != NETWORK, m))
               if all((f, m) in scores for f in folds)]
    return [m for m in present if with_network or m != NETWORK]


def fit_stackers(scores: dict, seed: int) -> dict[str, Stacker]:
    """{stack: fitted on every fold}: `stack` on the network and the baselines, `stack_no_dnn` on
    the baselines alone; none without at least two members (a stack of one model is that model)."""
    out = {}
    for name, with_network in ((STACK, True), (STACK_WITHOUT_NETWORK, False)):
        members = members_of(scores, with_network)
        if len(members) < 2 or (with_network and NETWORK not in members):
            continue
        out[name] = fit(out_of_fold(scores, members), members, seed)
        log.info(f"[stack] {out[name].describe(name)} on {out[name].rows:,} out-of-fold rows")
    return out


def fold_rows(spark, scores: dict, stackers: dict[str, Stacker], model_version: str, threshold: float,
              seed: int) -> list[dict]:
    """Backtest rows (split `fold_k`, as `backtest.summary_rows` takes them) of each stack: each
    fold's month scored by the same stack fitted on the other folds' months."""
    import pandas as pd

    from pipelines.ml.evaluation import binary_metrics

    out = []
    for name, stacker in stackers.items():
        rows = out_of_fold(scores, list(stacker.members))
        folds = sorted(rows["fold"].unique())
        if len(folds) < 2:
            return []
        for fold in folds:
            held_out = rows[rows["fold"] == fold]
            other = fit(rows[rows["fold"] != fold], list(stacker.members), seed)
            frame = pd.DataFrame({"score": other.predict(held_out), "label": held_out["label"].astype("float64")})
            metrics = binary_metrics(spark.createDataFrame(frame), threshold=threshold).as_dict()
            out.append({"model_version": model_version, "model": name, "split": fold, **metrics})
    return out


def stack_frame(stacker: Stacker, raws: dict, key: str):
    """The stack's raw scores of the rows the members scored: `raws` {member: Spark frame of `key`,
    label, score} joined on `key`; returns `key`, label, score."""
    from pyspark.sql import functions as F

    first, *rest = stacker.members
    joined = raws[first].select(key, "label", F.col("score").alias(f"_s_{first}"))
    for member in rest:
        joined = joined.join(raws[member].select(key, F.col("score").alias(f"_s_{member}")), key)
    score = stacker.column({m: F.col(f"_s_{m}") for m in stacker.members})
    return joined.select(key, "label", score.alias("score"))


def save(path: str, stackers: dict[str, Stacker]) -> None:
    with open(path, "w") as fh:
        json.dump({name: s.to_dict() for name, s in stackers.items()}, fh, indent=1)


def load(path: str) -> dict[str, Stacker]:
    with open(path) as fh:
        return {name: Stacker.from_dict(d) for name, d in json.load(fh).items()}
