"""The report's plots: training curves, ROC and calibration of the model against the baselines,
data-quality counts over time, and feature drift between the latest two days.

Each function takes small pandas / list inputs (already aggregated in Spark) and writes a PNG.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(history: list[dict], path: Path) -> Path:
    """Loss and AUC per epoch, train against validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h["epoch"] for h in history]
    for ax, metric in zip(axes, ("loss", "auc")):
        ax.plot(epochs, [h.get(metric) for h in history], marker="o", label="train")
        ax.plot(epochs, [h.get(f"val_{metric}") for h in history], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_calibration(mean_score, observed, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.plot(mean_score, observed, marker="o")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed rate of the label")
    ax.set_title("calibration, test window")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_drift(drift, day_a: str, day_b: str, path: Path) -> Path:
    """Standardised mean shift per feature between two days (`drift`: feature, shift)."""
    fig, ax = plt.subplots(figsize=(10, 4))
    d = drift.sort_values("shift")
    ax.barh(d["feature"], d["shift"], color=["#c44" if abs(v) > 0.5 else "#47a" for v in d["shift"]])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_title(f"feature drift: mean({day_b}) − mean({day_a}), in training standard deviations")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
