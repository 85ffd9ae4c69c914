"""Run every benchmark, then print one table of every figure and ratio and write
bench/results/summary.json and bench/results/summary.md (the table for the README, with the
machine and the command).

    python -m bench.run_all [--quick] [--only delta_io,input_pipeline] [--root ./lakehouse] [--epochs 4]

daily_feed is the 5,000-day feed of one row a day (`make bench-daily`; `--quick`: 400 days).

scale and peer train for the same `--epochs` (default 4; 2 with --quick), so that peer takes its
pipeline side from scale's runs instead of running every stage twice.

Each benchmark runs in its own process (`python -m bench.<name>`), so one that fails leaves the
others running and every one starts with a clean JVM and TensorFlow.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import RESULTS, machine_info, machine_line, print_table, ratio

BENCHMARKS = ("delta_io", "input_pipeline", "horovod_scaling", "scale", "peer", "daily_feed")


def figures(name: str, r: dict) -> list[dict]:
    """The headline rows of one benchmark's result: figure, value, unit, ratio, goal."""
    rows = []

    def add(figure, value, unit="", ratio=None, goal=None):
        rows.append({"benchmark": name, "figure": figure, "value": value, "unit": unit, "ratio": ratio, "goal": goal})

    if name == "delta_io":
        for scale, s in r["scales"].items():
            for op in ("write", "count", "scan"):
                add(f"{scale} {op}: delta-rs vs Spark Parquet", f"{s[f'rs_{op}_rows_per_sec']:,} vs {s[f'pq_{op}_rows_per_sec']:,}",
                    f"rows/s ({s[f'rs_{op}_mb_per_sec']} vs {s[f'pq_{op}_mb_per_sec']} MB/s)",
                    s[f"ratio_{op}_delta_rs_to_parquet"])
    elif name == "input_pipeline":
        add(f"Petastorm on Delta v{r['snapshot']['version']} vs in-memory tensors ({r['source']['model_input']} model_input)",
            f"{r['petastorm']['samples_per_sec']:,.0f} vs {r['in_memory']['samples_per_sec']:,.0f}", "samples/s",
            r["ratio_petastorm_to_in_memory"], f">= {r['goal']}" + (" met" if r["goal_met"] else " missed"))
        add("Petastorm vs in-memory row-by-row (shuffle+batch)",
            f"{r['petastorm']['samples_per_sec']:,.0f} vs {r['in_memory_row_by_row']['samples_per_sec']:,.0f}",
            "samples/s", r["ratio_petastorm_to_row_by_row"])
    elif name == "horovod_scaling":
        add("Horovod 2 procs × 1 thread vs 1 × 1 (steady state)",
            f"{r['two_processes']['samples_per_sec_steady']:,.0f} vs {r['one_process']['samples_per_sec_steady']:,.0f}",
            "samples/s", r["ratio_2_to_1"], f">= {r['goal']}" + (" met" if r["goal_met"] else " missed"))
        if "cpu_cores_total" in r["one_process"]:
            add("busy cores while training, 1 proc / 2 procs (of the machine's "
                f"{r.get('cores_on_machine', '?')})",
                f"{r['one_process']['cpu_cores_total']} / {r['two_processes']['cpu_cores_total']}", "cores",
                ratio_or_none(r["two_processes"]["cpu_cores_total"], r["one_process"]["cpu_cores_total"]))
        add("Horovod wall time incl. start-up, 1 proc / 2 procs",
            f"{r['one_process']['wall_seconds']:.0f} / {r['two_processes']['wall_seconds']:.0f}", "s", r["ratio_wall_1_to_2"])
    elif name == "scale":
        for g in r["growth"]:
            cells = {k: v for k, v in g.items() if k != "stage"}
            secs = " / ".join(f"{k.split()[0]} {v:,.1f}s" for k, v in cells.items() if k.endswith(" s") and v is not None)
            lin = [v for k, v in cells.items() if "time /" in k]
            add(f"{g['stage']} wall time", secs or "-", "(ratio: time ×N/×1 ÷ N; 1 = linear)", lin[-1] if lin else None)
        for g in r["growth"]:
            # The goal is about the two largest factors (×100 against ×10): time ratio at most the factor ratio.
            secs = {int(k[1:].split()[0]): v for k, v in g.items() if k.startswith("x") and k.endswith(" s") and v}
            if len(secs) >= 3:
                a, b = sorted(secs)[-2:]
                add(f"{g['stage']}: time x{b} / time x{a}", f"{secs[b]:,.1f} / {secs[a]:,.1f}", "s",
                    ratio(secs[b], secs[a]), f"<= {b / a:g}" + (" met" if secs[b] / secs[a] <= b / a else " missed"))
        for f, fr in r["factors"].items():
            m = fr.get("memory", {})
            add(f"{f} peak memory (all processes; driver Python / JVM / workers; largest worker)",
                f"{m.get('total_peak_mib')}; {m.get('driver_python_peak_mib')} / {m.get('jvm_peak_mib')} / "
                f"{m.get('workers_peak_mib')}; {m.get('largest_worker_peak_mib')}", "MiB")
        for row in r.get("input", []):
            add(f"{row['factor']} training input: Petastorm vs in-memory ({row['steps']})",
                f"{row['Petastorm samples/s']:,.0f} vs {row['in-memory samples/s']:,.0f}", "samples/s",
                row["Petastorm / in-memory"])
    elif name == "peer":
        for row in r["table"]:
            add(f"{row['scale']} end to end: pipeline vs pandas+Keras", f"{row['pipeline s']} vs {row['peer s']}", "s",
                row["pipeline/peer time"])
            add(f"{row['scale']} validation AUC: pipeline vs pandas+Keras", f"{row['pipeline val AUC']} vs {row['peer val AUC']}")
        lg = r["largest_scale_within_limit"]
        add(f"largest scale within {r['memory_limit_gib']} GiB (tried {r['tried']})",
            f"pipeline ×{lg['pipeline']}, peer ×{lg['peer']}")
    elif name == "daily_feed":
        stages = " / ".join(f"{s} {r['stages'][s]['seconds']:,.1f}s" for s in ("ingest", "clean", "features"))
        add(f"{r['days']:,} days × 2 sources, one row a day: ingest + clean + features ({stages})",
            r["total_seconds"], "s", None, f"<= {r['goal']['total_seconds_at_most']:g} s"
            + (" met" if r["goal_seconds_met"] else " missed"))
        add(f"{r['days']:,}-day feed: pipeline vs pandas reading and joining the same {r['peer']['files']:,} CSVs",
            f"{r['total_seconds']:,.1f} vs {r['peer']['seconds']:,.2f}", "s", r["ratio_pipeline_to_peer"])
        most = max(r["tables"], key=lambda t: t["files"])
        over = [t["table"] for t in r["tables"] if not t["files_per_month_met"]]
        add(f"{r['days']:,}-day feed ({r['months']} months): the most files in one of its {len(r['tables'])} tables; "
            "tables over one file per month",
            f"{most['files']:,} ({most['table']}, {most['months']} months); {', '.join(over) or 'none'}", "files",
            None, f"<= {r['goal']['files_per_month_at_most']} per month" + (" met" if r["goal_files_met"] else " missed"))
    return rows


def ratio_or_none(a, b):
    return round(a / b, 3) if a and b else None


def markdown(rows: list[dict], machine: dict, command: str, taken: dict[str, tuple[str, str]] | None = None) -> str:
    """The README table. `taken` (benchmark → (command, time)) lists each benchmark's own command
    when the figures come from more than one invocation (--summary-only)."""
    lines = [f"Machine: {machine_line(machine)}; {machine['os']}; "
             + ", ".join(f"{k} {v}" for k, v in machine["packages"].items()) + "."]
    if taken and len({c for c, _ in taken.values()}) > 1:
        lines += ["Commands (each benchmark's own run, `python -m bench.run_all --summary-only` then built this table):", ""]
        lines += [f"- {name}: `{cmd}` ({when})" for name, (cmd, when) in taken.items()]
    else:
        lines.append(f"Command: `{command}` ({machine['taken_at']}).")
    lines += ["", "| benchmark | figure | value | unit | ratio | goal |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [r["benchmark"], r["figure"], str(r["value"]), r["unit"] or "",
                 "" if r["ratio"] is None else str(r["ratio"]), r["goal"] or ""]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for every benchmark (a smoke test)")
    p.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--root", default="lakehouse", help="lakehouse for input_pipeline and horovod_scaling")
    p.add_argument("--epochs", type=int, help="training epochs of scale and peer (default 4; 2 with --quick)")
    p.add_argument("--factors", help="scale and peer: comma-separated factors (default 1,10), e.g. 1,10,100")
    p.add_argument("--window", help="scale and peer: first,last day of 2013 to grow (default: the whole year)")
    p.add_argument("--summary-only", action="store_true",
                   help="run nothing: rebuild the summary from the JSON files already in bench/results")
    args = p.parse_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(BENCHMARKS) if args.only else set()
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    epochs = args.epochs or (2 if args.quick else 4)
    command = ("python -m bench.run_all" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
               + (f" --root {args.root}" if args.root != "lakehouse" else "") + (f" --epochs {args.epochs}" if args.epochs else "")
               + (f" --factors {args.factors}" if args.factors else "") + (f" --window {args.window}" if args.window else ""))
    machine = machine_info()
    taken = None
    if args.summary_only:
        # The figures were taken earlier: describe them by the machine and flags they were taken with.
        saved = [json.loads((RESULTS / f"{b}.json").read_text()) for b in chosen if (RESULTS / f"{b}.json").exists()]
        taken = {s["benchmark"]: (s.get("command", "?"), s["machine"]["taken_at"]) for s in saved}
        if saved:
            machine = saved[0]["machine"]
            if any(s.get("quick") for s in saved) and "--quick" not in command:
                command += " --quick"
    status, rows = {}, []
    for name in chosen:
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if args.quick else []),
               *(["--root", args.root] if name in ("input_pipeline", "horovod_scaling") else []),
               *(["--epochs", str(epochs)] if name in ("scale", "peer") else []),
               *(["--factors", args.factors] if args.factors and name in ("scale", "peer") else []),
               *(["--window", args.window] if args.window and name in ("scale", "peer") else []),
               *(["--pipeline-from", str(RESULTS / "scale.json")] if name == "peer" and "scale" in chosen else [])]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.time()
        code = 0 if args.summary_only else subprocess.call(cmd)
        status[name] = {"returncode": code, "seconds": round(time.time() - started, 1)}
        path = RESULTS / f"{name}.json"
        if code == 0 and path.exists():
            try:
                rows += figures(name, json.loads(path.read_text()))
            except (KeyError, TypeError) as exc:
                rows.append({"benchmark": name, "figure": f"result not summarised: {exc!r}", "value": "-",
                             "unit": "", "ratio": None, "goal": None})
        else:
            rows.append({"benchmark": name, "figure": "failed", "value": f"exit code {code}", "unit": "",
                         "ratio": None, "goal": None})
    print("\n=== summary (" + machine_line(machine) + ")")
    print_table(rows)
    for name, s in status.items():
        print(f"{name}: exit {s['returncode']} in {s['seconds']:.0f}s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {"command": command, "quick": args.quick, "machine": machine, "benchmarks": status, "figures": rows}
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (RESULTS / "summary.md").write_text(markdown(rows, machine, command, taken))
    print(f"[bench] wrote {RESULTS / 'summary.json'} and {RESULTS / 'summary.md'}")
    if any(s["returncode"] for s in status.values()):
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
