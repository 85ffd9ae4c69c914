"""The text of a drafted declaration: what `pipelines.stages.draft` proposed from a sample of the
files (sources, columns, keys, rules, splits), written as a commented `conf/base/datasets/<name>.yaml`
the loader accepts as it is, with the prediction and the features left to the user as TODOs.

    >>> text = render_draft(draft, landing="lakehouse/landing/shop")
    >>> write_draft(draft, Path("conf/base/datasets/shop.yaml"), landing="lakehouse/landing/shop")
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from pipelines.catalog import PARTITION_COLUMN
from pipelines.datasets.dataset import CsvOptions


@dataclass
class ColumnDraft:
    """A column as proposed: its name in the tables and in the file, type, and what the sample showed."""
    name: str
    type: str
    file_name: str
    never_null: bool = False
    distinct: int = 0
    odd: list[str] = field(default_factory=list)    # a few sampled values the type does not read
    odd_count: int = 0
    low: float | None = None                         # numeric: the sampled minimum and maximum
    high: float | None = None


@dataclass
class SourceDraft:
    name: str
    path: str
    format: str
    csv: CsvOptions | None
    columns: list[ColumnDraft]
    daily: bool
    files: int
    files_read: int
    rows_read: int
    days: list[date] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)           # records the parser refused, with why
    calendar: str = "daily"
    primary_key: list[str] = field(default_factory=list)
    date_columns: list[str] = field(default_factory=list)     # date columns equal to the file's date
    updates_candidate: str | None = None                      # a feed this one may hold the outcomes of

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def id_column(self) -> str | None:
        if not self.daily or self.updates_candidate:
            return None
        name = f"{self.name}_id"
        return name if name not in self.column_names else f"{self.name}_row_id"


@dataclass
class DatasetDraft:
    name: str
    sources: list[SourceDraft]
    read_from: str
    skipped: list[str] = field(default_factory=list)


def write_draft(draft: DatasetDraft, path: Path, landing: str, force: bool = False, today: date | None = None) -> Path:
    """Write the draft's declaration to `path`. Raises FileExistsError when `path` exists and
    `force` is not set: a declaration someone edited is never overwritten by accident."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; give --force to overwrite it, or --out another file")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_draft(draft, landing, today))
    return path


def render_draft(draft: DatasetDraft, landing: str, today: date | None = None) -> str:
    """The declaration's text; `landing` is the folder the pipeline reads this dataset's files from."""
    today = today or date.today()
    read = sum(s.files_read for s in draft.sources)
    total = sum(s.files for s in draft.sources)
    moved = "" if Path(draft.read_from).resolve() == Path(landing).resolve() else \
        [f"# They were read from {draft.read_from}: move or copy them there, keeping the paths below."]
    lines = [
        f"# {draft.name}: drafted by `lakehouse-dl dataset init` on {today} from {read} of the {total} files",
        f"# under {draft.read_from}. Every value below is a proposal from that sample: read it key by key",
        "# (docs/add-a-dataset.md walks through every key).",
        "#",
        "# Where the files must live: the pipeline reads this dataset's files from",
        f"#   {landing}/<each source's path>",
        "# (lakehouse.landing of the configuration, then the dataset's name).",
        *moved,
        "#",
        "# Next: fill in the TODO blocks (the prediction and the features), then",
        f"#   lakehouse-dl dataset check {draft.name}          # a dry run over the delivered files: no table written",
        f"#   lakehouse-dl nightly --dataset {draft.name} --date YYYY-MM-DD",
        f"name: {draft.name}",
        f"description: {_text('TODO: one line on what this data is')}",
        "",
    ]
    if draft.skipped:
        lines[-1:-1] = [f"# Files left out (not CSV, JSON lines or Parquet): {', '.join(draft.skipped[:5])}"
                        + (", ..." if len(draft.skipped) > 5 else "")]
    lines += _prediction(draft) + [""] + _splits(draft) + ["", "sources:"]
    for source in draft.sources:
        lines += _source(source) + [""]
    lines += _features(draft)
    return "\n".join(lines) + "\n"


def _prediction(draft: DatasetDraft) -> list[str]:
    daily = [s for s in draft.sources if s.daily]
    main = next((s for s in daily if not s.updates_candidate), daily[0] if daily else None)
    if main is None:
        return ["# TODO: a prediction needs a daily feed (files whose path holds the date); none was found."]
    outcomes = next((s for s in daily if s.updates_candidate == main.name), main)
    number = next((c.name for c in outcomes.columns if c.type in ("int", "long", "double")
                   and c.name not in outcomes.primary_key), "TODO_column")
    return [
        "# TODO: what the model predicts, and when (docs/add-a-dataset.md, item 2). Uncomment and edit:",
        "# the source whose rows are predicted (a daily feed with an id_column), the time of the",
        "# prediction, a numeric target and a label (a condition), both over that source's columns",
        "# (with an update source's columns once it is merged into it).",
        "# prediction:",
        f"#   source: {main.name}",
        '#   time: {at: day_before, time: "23:00"}',
        f"#   target: {number}",
        f'#   label: "{number} > 0"',
        "#   head: classification   # what the nightly serves: the label's probability, or regression: the target",
    ]


def _splits(draft: DatasetDraft) -> list[str]:
    days = sorted({d for s in draft.sources for d in s.days})
    if len(days) < 3:
        return ["# TODO: splits: {train: [start, end], validation: [...], test: [...]} (inclusive dates);",
                "# the files did not span enough days to propose them."]
    first, last = days[0], days[-1]
    span = (last - first).days + 1
    train_end = first + timedelta(days=max(0, int(span * 0.6) - 1))
    validation_end = max(train_end + timedelta(days=1), first + timedelta(days=int(span * 0.8) - 1))
    if validation_end >= last:
        validation_end = last - timedelta(days=1)
    return [
        f"# Proposed from the delivered days ({first}..{last}): the first 60% to train, the next 20% to",
        "# validate, the last 20% to test. The test window is never used to choose anything.",
        "splits:",
        f'  train: ["{first}", "{train_end}"]',
        f'  validation: ["{train_end + timedelta(days=1)}", "{validation_end}"]',
        f'  test: ["{validation_end + timedelta(days=1)}", "{last}"]',
        "# The date `lakehouse-dl run` takes without --date (without it: today), e.g. for a replay:",
        f'# default_run_date: "{last - timedelta(days=1)}"',
    ]


def _source(s: SourceDraft) -> list[str]:
    if s.daily:
        seen = f"{s.files} files, {s.days[0]}..{s.days[-1]}" if s.days else f"{s.files} files"
    else:
        seen = f"{s.files} file{'s' if s.files != 1 else ''}"
    out = [f"  {s.name}:",
           f"    # {seen}; read {s.files_read} of them ({s.rows_read:,} records).",
           f"    path: {s.path}",
           f"    format: {s.format}"]
    if s.csv is not None:
        out.append(f"    csv: {{header: true, delimiter: {_text(s.csv.delimiter)}, quote: {_text(s.csv.quote)}, "
                   f"null_values: {_list(s.csv.null_values)}"
                   + (f", encoding: {s.csv.encoding}" if s.csv.encoding != "utf-8" else "") + "}")
    if s.daily:
        gaps = len(_expected(s.days, s.calendar)) - len(s.days)
        why = {"daily": f"a file for {len(s.days)} of the {len(_expected(s.days, 'daily'))} days",
               "weekdays": "no file on a Saturday or Sunday",
               "sparse": "files on some days only"}[s.calendar]
        out.append(f"    calendar: {s.calendar}     # {why}" + (f"; {gaps} expected day(s) without one" if gaps > 0 else ""))
        if s.updates_candidate:
            target = s.updates_candidate
            out += [f"    # The key of {target}, with columns {target} lacks: if this feed delivers the outcomes",
                    f"    # of {_possessive(target)} rows after their day, uncomment (silver merges them in):",
                    f"    # updates: {s.updates_candidate}",
                    '    # known: {at: day_after, time: "06:00"}']
        else:
            out.append('    # known: {at: day_before, time: "00:00"}   # TODO: when a day\'s rows become known')
    out.append("    columns:")
    for c in s.columns:
        spec = c.type if c.name == c.file_name else f"{{type: {c.type}, rename: {c.name}}}"
        note = ""
        if c.odd_count:
            note = (f"  # {c.odd_count} sampled value{'s are' if c.odd_count > 1 else ' is'} not {_article(c.type)}: "
                    f"{', '.join(map(repr, c.odd))} (rejected by bronze: see `dataset check`)")
        elif c.name != c.file_name:
            note = "  # renamed: the lakehouse adds `date` (the file's) to a daily feed's rows"
        out.append(f"      {_key(c.file_name)}: {spec}{note}")
    out.append(f"    # Unique in the sample{' (with the date: one row per key and day)' if 'date' in s.primary_key else ''}.")
    out.append(f"    primary_key: {_list(s.primary_key)}")
    if s.id_column:
        out.append(f"    id_column: {s.id_column}")
    if s.unread:
        out.append(f"    # {len(s.unread)} sampled record(s) did not parse, e.g. {s.unread[0][:150]}")
    return out + _rules(s)


def _rules(s: SourceDraft) -> list[str]:
    key = [k for k in s.primary_key if k != PARTITION_COLUMN]
    present = [c.name for c in s.columns if c.never_null and c.name not in key]
    out = []
    if key:
        out.append(f"      - {{name: key_not_null, check: not_null, blocking: true, columns: {_list(key)}}}")
    if present:
        out += ["      # Never null in the sample: counted; blocking: true quarantines a row without them.",
                f"      - {{name: always_present, check: not_null, blocking: false, columns: {_list(present)}}}"]
    for name in s.date_columns:
        out.append(f"      - {{name: {name}_is_file_date, check: expression, blocking: true, expr: {_text(f'`{name}` = date')}}}")
    ranged = [c for c in s.columns if c.low is not None and c.name not in key and not c.name.lower().endswith("id")]
    if ranged:
        out.append("      # The sampled minimum and maximum, widened: counted, not quarantined (blocking: true would).")
    for c in ranged:
        lo, hi = widened(c.low, c.high, c.type != "double")
        out.append(f"      - {{name: {c.name}_range, check: range, column: {c.name}, min: {lo}, max: {hi}, "
                   f"blocking: false}}   # sampled {_number(c.low)}..{_number(c.high)}")
    return ["    rules:", *out] if out else []


def _features(draft: DatasetDraft) -> list[str]:
    daily = [s for s in draft.sources if s.daily and not s.updates_candidate]
    example = daily[0] if daily else None
    lines = ["# TODO: the features the model sees of a row, known at the prediction time (the keys:",
             "# docs/add-a-dataset.md, item 5, and the datasets shipped beside this file). Uncomment and edit:",
             "# features:", "#   columns:"]
    if example:
        for c in [c for c in example.columns if c.name not in example.primary_key][:4]:
            kind = "numeric" if c.type in ("int", "long", "double") else "categorical"
            lines.append(f"#     {c.name}: {kind}")
    return lines + ["#   calendar:", "#     weekday: categorical"]


def widened(low: float, high: float, integral: bool) -> tuple[float, float]:
    """The observed [low, high] widened by a tenth of its span (at least 1 for whole numbers), rounded
    outwards to the pad's order of magnitude; a range that never went below zero starts at zero."""
    pad = max((high - low) * 0.1, 1.0 if integral else 0.0, abs(high) * 0.01, 1e-9)
    step = 10.0 ** math.floor(math.log10(pad))
    lo, hi = math.floor((low - pad) / step) * step, math.ceil((high + pad) / step) * step
    if low >= 0:
        lo = max(lo, 0.0)
    if integral or step >= 1:
        return int(lo), int(hi)
    digits = max(0, -math.floor(math.log10(step)))
    return round(lo, digits), round(hi, digits)


def _expected(days: list[date], calendar: str) -> list[date]:
    if not days:
        return []
    every = [days[0] + timedelta(days=i) for i in range((days[-1] - days[0]).days + 1)]
    if calendar == "weekdays":
        return [d for d in every if d.weekday() < 5]
    return every if calendar == "daily" else list(days)


def _possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def _article(typ: str) -> str:
    return f"an {typ}" if typ[0] in "aeiou" else f"a {typ}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _key(name: str) -> str:
    return name if _PLAIN.fullmatch(name) and name.lower() not in _YAML_WORDS else _text(name)


def _text(value: str) -> str:
    """A string as a YAML scalar: a JSON string is valid YAML and says exactly the same text (a
    lone double quote reads better single-quoted)."""
    return "'\"'" if value == '"' else json.dumps(value)


def _list(values) -> str:
    return "[" + ", ".join(_key(str(v)) for v in values) + "]"
