"""What the nightly did and where a dataset stands, in one place (`lakehouse-dl status`): the last
runs with their stages and times, the model that serves and why, the live metrics of the last
days, the gaps in each daily feed, and every table's size. Everything is read from the lakehouse's
own tables (`results.runs`, `results.models`, `results.metrics`, the bronze tables' dates).
The library of `lakehouse-dl status` (`pipelines.cli.status`).

    >>> report = gather_status(cfg, lakehouse)
    >>> print(render_status(report))
"""
from __future__ import annotations

import json
from datetime import date, timedelta

from pipelines import catalog
from pipelines.config.settings import REGRESSION
from pipelines.datasets import dataset_for

LIVE_DAYS = 14
RUNS_SHOWN = 5


def gather_status(cfg, lakehouse, runs: int = RUNS_SHOWN, live_days: int = LIVE_DAYS) -> dict:
    """The status of the configured dataset's lakehouse as plain data (what `--json` prints)."""
    from pipelines.ml import registry

    dataset = dataset_for(cfg)
    out: dict = {"dataset": dataset.name, "lakehouse": str(cfg.lakehouse.root), "runs": _runs(lakehouse, runs)}
    serving, why = registry.blessed(lakehouse), None
    if serving is not None:
        why = serving.reason
        kind = serving.serves or "dnn"
    else:
        serving = registry.latest(lakehouse)
        kind = registry.fallback_baseline(serving) if serving is not None else None
        if serving is not None:
            why = (f"no network is blessed yet: the {kind} baseline fitted beside candidate "
                   f"{serving.model_version} ({serving.status}: {serving.reason}) scores")
    if serving is not None:
        metric, head = serving.metric, registry.head_of(serving)
        out["serving"] = {
            "model_version": (serving.model_version if kind == (serving.serves or "dnn")
                              else registry.baseline_version(serving.model_version, kind)),
            "model": kind, "head": head, "trained_for": serving.run_date.isoformat() if serving.run_date else None,
            "why": why}
        if head == REGRESSION:
            out["serving"].update({"validation_mae": metric.get(f"validation_{kind}_mae"),
                                   "test_mae": metric.get(f"test_{kind}_mae")})
        else:
            out["serving"].update({"decision": registry.decision_of(serving, kind).describe(),
                                   "validation_auc": metric.get(f"validation_{kind}_auc"),
                                   "test_auc": metric.get(f"test_{kind}_auc")})
    else:
        out["serving"] = None
    out["live"] = _live(lakehouse, live_days)
    out["feeds"] = _feed_gaps(lakehouse, dataset)
    out["tables"] = [{"table": t.name, "version": t.version, "rows": t.rows, "files": t.files,
                      "bytes": t.size_bytes} for t in lakehouse.tables()]
    return out


def _runs(lakehouse, limit: int) -> list[dict]:
    table = lakehouse.table(catalog.RUNS)
    if not table.exists():
        return []
    rows = sorted((r.asDict() for r in table.read().collect()),
                  key=lambda r: (r["started_at"] is not None, r["started_at"]), reverse=True)[:limit]
    return [{"job": r["job"], "run_date": r["run_date"].isoformat() if r["run_date"] else None,
             "status": r["status"], "seconds": r["seconds"],
             "stages": json.loads(r["stage_seconds"]) if r.get("stage_seconds") else {},
             "skipped": json.loads(r["skipped_stages"]) if r.get("skipped_stages") else [],
             "error": r.get("error")} for r in rows]


def _live(lakehouse, days: int) -> list[dict]:
    from pipelines.ml import results

    live = [m for m in results.read_metrics(lakehouse) if m["split"] == "live" and m.get("date")]
    if not live:
        return []
    last = max(m["date"] for m in live)
    recent = sorted((m for m in live if m["date"] > last - timedelta(days=days)),
                    key=lambda m: (m["date"], m["model_version"]))
    return [{"date": m["date"].isoformat(), "model_version": m["model_version"], "rows": m["rows"],
             **({"mae": m["mae"], "rmse": m["rmse"]} if m.get("mae") is not None else
                {"auc": m["auc"], "accuracy": m["accuracy"], "precision": m["precision"], "recall": m["recall"]})}
            for m in recent]


def _feed_gaps(lakehouse, dataset) -> list[dict]:
    """Per daily source: the first and last day bronze holds (what was delivered), and the days
    between with no rows that the feed's calendar expects a file for."""
    feeds = []
    for source in dataset.sources.values():
        if not source.daily:
            continue
        table = lakehouse.table(catalog.bronze(source.name))
        days = sorted(d for d, n in table.rows_per_partition(catalog.PARTITION_COLUMN).items()
                      if n and d is not None) if table.exists() else []
        missing = [d for d in _missing_days(days) if source.expects(d)]
        feeds.append({"source": source.name, "first": days[0].isoformat() if days else None,
                      "last": days[-1].isoformat() if days else None, "days": len(days),
                      "missing_days": len(missing), "gaps": [[a.isoformat(), b.isoformat()] for a, b in _ranges(missing)]})
    return feeds


def _missing_days(days: list[date]) -> list[date]:
    if not days:
        return []
    present = set(days)
    return [days[0] + timedelta(days=i) for i in range((days[-1] - days[0]).days + 1)
            if days[0] + timedelta(days=i) not in present]


def _ranges(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive days as (first, last) ranges."""
    out: list[list[date]] = []
    for d in days:
        if out and d == out[-1][1] + timedelta(days=1):
            out[-1][1] = d
        else:
            out.append([d, d])
    return [(a, b) for a, b in out]


def render_status(report: dict) -> str:
    """The status as one screen of text."""
    lines = [f"{report['dataset']}  ({report['lakehouse']})", ""]
    lines.append("last runs")
    if not report["runs"]:
        lines.append("  none yet: run `lakehouse-dl run` or `lakehouse-dl nightly --date D`")
    for r in report["runs"]:
        stages = ", ".join(f"{k} {v:.0f}s" for k, v in r["stages"].items())
        skipped = f"; skipped {', '.join(r['skipped'])}" if r["skipped"] else ""
        seconds = f"{r['seconds']:.0f}s" if r["seconds"] is not None else "-"
        lines.append(f"  {r['run_date']}  {r['job']:8} {r['status']:10} {seconds:>6}  {stages}{skipped}")
        if r["error"]:
            lines.append(f"    error: {r['error'].splitlines()[0][:160]}")
    lines += ["", "serving model"]
    s = report["serving"]
    if s is None:
        lines.append("  none: no model has been trained yet")
    else:
        measure = "mae" if s.get("head") == REGRESSION else "auc"
        figures = "  ".join(f"{k} {measure.upper()} {s[f'{k}_{measure}']:.4f}" for k in ("validation", "test")
                            if s.get(f"{k}_{measure}") is not None)
        lines += [f"  {s['model_version']} (trained for {s['trained_for']})  {figures}", f"  why: {s['why']}"]
        lines.append(f"  decision: {s['decision']}" if "decision" in s else f"  head: {s.get('head')}")
    lines += ["", f"live metrics (last {LIVE_DAYS} days with outcomes)"]
    if not report["live"]:
        lines.append("  none yet: a day is measured once its outcomes have arrived")
    for m in report["live"]:
        if "mae" in m:
            lines.append(f"  {m['date']}  {m['model_version']:24} {m['rows']:>7,} rows  MAE {m['mae']:.4f}  "
                         f"RMSE {m['rmse']:.4f}")
            continue
        lines.append(f"  {m['date']}  {m['model_version']:24} {m['rows']:>7,} rows  AUC {m['auc']:.4f}  "
                     f"accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}")
    lines += ["", "daily feeds (days delivered to bronze)"]
    for f in report["feeds"]:
        if not f["days"]:
            lines.append(f"  {f['source']:20} no rows yet")
            continue
        gaps = ", ".join(a if a == b else f"{a}..{b}" for a, b in f["gaps"][:5]) + (" ..." if len(f["gaps"]) > 5 else "")
        lines.append(f"  {f['source']:20} {f['first']}..{f['last']}  {f['days']:,} days, "
                     + (f"{f['missing_days']} missing: {gaps}" if f["missing_days"] else "no gaps"))
    lines += ["", "tables"]
    for t in report["tables"]:
        lines.append(f"  {t['table']:32} v{t['version']:<5} {t['rows']:>12,} rows {t['files']:>5} files {human_size(t['bytes']):>10}")
    return "\n".join(lines)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
