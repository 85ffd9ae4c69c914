"""The report's plots: training curves, ROC and calibration of the model against the baselines,
the reviewer's evaluation (confusion matrices, reliability curves, AUC by slice, permutation
importance), data-quality counts over time, and feature drift between the latest two days.

Each function takes small pandas / list inputs (already aggregated in Spark) and writes a PNG.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(history: list[dict], path: Path, measure: str = "auc") -> Path:
    """Loss and `measure` (AUC, or the regression head's MAE) per epoch, train against validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h["epoch"] for h in history]
    for ax, metric in zip(axes, ("loss", measure)):
        ax.plot(epochs, [_number(h.get(metric)) for h in history], marker="o", label="train")
        ax.plot(epochs, [_number(h.get(f"val_{metric}")) for h in history], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_errors(errors: dict[str, float], path: Path) -> Path:
    """One bar per model (the network, the baselines, the naive forecasts): its error, smallest first."""
    names = sorted(errors, key=errors.get)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(names[::-1], [errors[n] for n in names][::-1],
            color=["tab:orange" if n == "dnn" else "tab:blue" for n in names][::-1])
    ax.set_xlabel("mean absolute error, in the target's units")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def plot_roc(curves: dict[str, tuple[list[float], list[float], float]], path: Path) -> Path:
    """ROC of each model: name → (fpr, tpr, auc)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("ROC, test window")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_calibration(mean_score, observed, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.plot(mean_score, observed, marker="o")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed rate of the label")
    ax.set_title("calibration, test window")
    return _save(fig, path)


def plot_quality(quality, path: Path) -> Path:
    """Rows failing each rule per day (`quality`: pandas with date, rule, rows_failed)."""
    fig, ax = plt.subplots(figsize=(10, 3.6))
    if len(quality):
        pivot = quality.pivot_table(index="date", columns="rule", values="rows_failed", aggfunc="sum").fillna(0)
        for rule in pivot.columns:
            ax.plot(pivot.index, pivot[rule], label=str(rule), linewidth=1)
        ax.legend(fontsize=7, ncol=3)
    ax.set_title("rows failing each data-quality rule, per day")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _save(fig, path)


def plot_drift(drift, day_a: str, day_b: str, path: Path) -> Path:
    """Standardised mean shift per feature between two days (`drift`: feature, shift)."""
    fig, ax = plt.subplots(figsize=(10, 4))
    d = drift.sort_values("shift")
    ax.barh(d["feature"], d["shift"], color=["#c44" if abs(v) > 0.5 else "#47a" for v in d["shift"]])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_title(f"feature drift: mean({day_b}) − mean({day_a}), in training standard deviations")
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def plot_confusion(confusion, path: Path) -> Path:
    """One 2×2 matrix per model and threshold rule (`confusion`: model, rule, threshold, tp, fp, fn, tn)."""
    rows = confusion.to_dict("records")
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 2.9), squeeze=False)
    for ax, r in zip(axes[0], rows):
        cells = [[r["tn"], r["fp"]], [r["fn"], r["tp"]]]
        ax.imshow(cells, cmap="Blues")
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{int(cells[i][j]):,}", ha="center", va="center", fontsize=9,
                        color="white" if cells[i][j] > max(map(max, cells)) / 2 else "black")
        ax.set_xticks([0, 1], ["pred 0", "pred 1"], fontsize=8)
        ax.set_yticks([0, 1], ["true 0", "true 1"], fontsize=8)
        ax.set_title(f"{r['model']}, {r['rule']} ≥ {r['threshold']:.3f}", fontsize=8)
    return _save(fig, path)


def plot_reliability(calibration, path: Path) -> Path:
    """Reliability curve of every model (`calibration`: model, bin, mean_score, observed, brier)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for model, c in calibration.sort_values("bin").groupby("model"):
        ece = c["ece"].iloc[0] if "ece" in c and c["ece"].notna().any() else None
        label = f"{model} (Brier {c['brier'].iloc[0]:.4f}" + (f", ECE {ece:.3f})" if ece is not None else ")")
        ax.plot(c["mean_score"], c["observed"], marker="o", label=label)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed rate of the label")
    ax.set_title("reliability, test window")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_slices(slices, path: Path, measure: str = "auc") -> Path:
    """`measure` (AUC, or the regression head's MAE) per slice value, one panel per slice, one bar
    per model (`slices`: model, slice, value, rows and the measure)."""
    names = sorted(slices["slice"].unique())
    models = sorted(slices["model"].unique(), key=lambda m: (m != "dnn", m))
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.6 * len(names)), squeeze=False)
    width = 0.8 / len(models)
    for ax, name in zip(axes[:, 0], names):
        s = slices[slices["slice"] == name]
        values = sorted(s["value"].unique())
        for k, model in enumerate(models):
            measured = s[s["model"] == model].set_index("value")[measure].reindex(values)
            ax.bar([i + k * width for i in range(len(values))], measured, width=width, label=model)
        rows = s.groupby("value")["rows"].max().reindex(values)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(values))],
                      [f"{v}\n{int(n):,}" for v, n in zip(values, rows)], fontsize=7)
        if measure == "auc":
            ax.set_ylim(0.5, 1)
        ax.set_ylabel(measure.upper())
        ax.set_title(f"{measure.upper()} by {name} (rows under each value)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    return _save(fig, path)


# What shuffling a feature group changes, by measure: its column in results.importance, its name.
IMPORTANCE_CHANGE = {"auc": ("auc_drop", "AUC drop"), "mae": ("mae_increase", "MAE increase")}


def plot_importance(importance, path: Path, top: int = 20, measure: str = "auc") -> Path:
    """The `top` feature groups by AUC drop (the regression head, `measure="mae"`: MAE increase)
    when shuffled, one panel per model."""
    change, what = IMPORTANCE_CHANGE[measure]
    models = sorted(importance["model"].unique(), key=lambda m: (m != "dnn", m))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 0.25 * top + 1.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        d = importance[importance["model"] == model].nlargest(top, change).sort_values(change)
        ax.barh(d["feature"], d[change], color="#47a")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{model}: {what}, base {measure.upper()} {d['base_' + measure].iloc[-1]:.3f}" if len(d) else model,
                     fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Lay out, write as a 90-dpi PNG at `path`, and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
