"""A daily feed's schema over time: a column added on a date (`since`), dropped after one
(`until`), or renamed on one (`rename_from` + `renamed_on`). Every file is read by the schema of
its own date; a column its date does not carry is null in bronze, so the tables hold the union.

    >>> [s.label for s in file_schemas(source.columns)]
    ['until 2024-03-02', 'from 2024-03-03']
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta


@dataclass(frozen=True)
class FileSchema:
    """The columns the files dated `first`..`last` carry (None: no bound), each (a
    `pipelines.datasets.Column`) under the name those files give it."""
    first: date | None
    last: date | None
    columns: tuple

    @property
    def label(self) -> str:
        if self.first is None and self.last is None:
            return "every date"
        if self.first is None:
            return f"until {self.last}"
        if self.last is None:
            return f"from {self.first}"
        return str(self.first) if self.first == self.last else f"{self.first}..{self.last}"

    def holds(self, day: date) -> bool:
        return (self.first is None or day >= self.first) and (self.last is None or day <= self.last)

    def differences(self, declared) -> list[str]:
        """How these files differ from the `declared` columns: ["without gate", "temp as celsius"]."""
        here = {c.name: c.in_file for c in self.columns}
        return [f"without {c.in_file}" if c.name not in here else f"{here[c.name]} as {c.in_file}"
                for c in declared if here.get(c.name) != c.in_file]


def columns_on(columns, day: date) -> tuple:
    """The columns files of `day` carry, under their names that day."""
    return tuple(replace(c, file_name=c.rename_from) if c.renamed_on and day < c.renamed_on else c
                 for c in columns
                 if (c.since is None or day >= c.since) and (c.until is None or day <= c.until))


def file_schemas(columns) -> list[FileSchema]:
    """The schemas of a feed's files, oldest first: one per span of dates between two changes
    (one, "every date", when no column declares a change)."""
    changes = sorted({d for c in columns
                      for d in (c.since, c.until and c.until + timedelta(days=1), c.renamed_on) if d})
    if not changes:
        return [FileSchema(None, None, tuple(columns))]
    out = []
    for first, following in zip([None, *changes], [*changes, None]):
        last = following - timedelta(days=1) if following else None
        out.append(FileSchema(first, last, columns_on(columns, first or last)))
    return out


def check_dated_columns(fail, key: str, columns, *, daily: bool, required: dict[str, str], rules=()) -> None:
    """Refuse a schema change that cannot hold, through `fail(key, message)` (YamlChecks.fail):
    on a reference table (its file has no date), `since` after `until`, a rename outside the
    column's dates or to a name another column carries, a change to a column every row needs
    (`required`: {column: why}), or a blocking not_null rule on a column some files lack."""
    for c in columns:
        k = f"{key}.columns.{c.in_file}"
        what = next((w for w, v in (("since", c.since), ("until", c.until), ("rename_from", c.rename_from),
                                    ("renamed_on", c.renamed_on)) if v is not None), None)
        if what is None:
            continue
        if not daily:
            fail(f"{k}.{what}", "applies to a daily feed's columns: a reference table's file carries no date")
        if c.since and c.until and c.since > c.until:
            fail(f"{k}.since", f"is {c.since}, after until {c.until}: no file would carry the column")
        if (c.rename_from is None) != (c.renamed_on is None):
            fail(f"{k}.{'renamed_on' if c.renamed_on is None else 'rename_from'}",
                 "is required with " + ("rename_from: the first date files carry the new name" if c.renamed_on is None
                                        else "renamed_on: the name files carried before it"))
        if c.renamed_on and ((c.since and c.renamed_on <= c.since) or (c.until and c.renamed_on > c.until)):
            fail(f"{k}.renamed_on", f"is {c.renamed_on}, outside the column's own dates "
                                    f"({c.since or 'the first'}..{c.until or 'the last'}): no file would carry one name")
        others = {o.in_file: o for o in columns if o is not c}
        others.update({o.rename_from: o for o in columns if o is not c and o.rename_from})
        if c.rename_from in others or c.rename_from == c.in_file:
            owner = others.get(c.rename_from, c).in_file
            fail(f"{k}.rename_from", f"names {c.rename_from!r}, which the files already carry as column {owner}: "
                                     "a renamed column's old name must be free")
        if (c.since or c.until) and c.name in required:
            fail(f"{k}.{'since' if c.since else 'until'}", f"is declared on {c.name}, {required[c.name]}: "
                                                           "every file must carry it")
        for i, rule in enumerate(rules):
            if (c.since or c.until) and rule.check == "not_null" and rule.blocking and c.name in rule.columns:
                fail(f"{key}.rules[{i}]", f"{rule.name} is a blocking not_null rule on {c.name}, which files dated "
                                          f"outside {c.since or 'the first'}..{c.until or 'the last'} lack: every "
                                          "row of those days would be quarantined (make it non-blocking, or use "
                                          "missing: {" + c.name + ": flag})")
