"""The catalog names every table once; the console sets logging up once per process."""
from __future__ import annotations

import json
import logging

import pytest

from pipelines import catalog
from pipelines.console import FORMAT_ENV, LEVEL_ENV, configure_logging


def test_every_fixed_table_has_one_entry_with_its_layer_and_partitioning():
    assert catalog.entry(catalog.MODEL_INPUT).partition_by == ("split",)
    # Bookkeeping tables are unpartitioned; the daily ones follow the lakehouse's daily layout.
    assert catalog.entry(catalog.QUARANTINE).partition_by == ()
    assert catalog.entry(catalog.FEATURES).daily and not catalog.entry(catalog.QUARANTINE).daily
    assert {e.layer for e in catalog.TABLES.values()} <= set(catalog.LAYERS)
    assert len({e.name for e in catalog.TABLES.values()}) == len(catalog.TABLES)


def test_per_source_tables_follow_the_source_kind():
    assert catalog.entry(catalog.bronze("flights")).daily
    assert not catalog.entry(catalog.silver("planes"), daily=False).daily
    assert catalog.entry(catalog.rejected("flights")).partition_by == ()
    with pytest.raises(KeyError, match="not a table of the catalog"):
        catalog.entry("gold.nosuch")


def test_configure_logging_writes_json_lines_and_exports_the_choice_for_child_processes(capsys, monkeypatch):
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    monkeypatch.delenv(FORMAT_ENV, raising=False)
    configure_logging("INFO", "json")
    log = logging.getLogger("pipelines.stages.bronze.ingestion")
    log.info("[ingest] %s rows", 42)
    log.debug("not shown at INFO")
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"], record["message"]) == ("INFO", log.name, "[ingest] 42 rows")
    import os
    assert (os.environ[LEVEL_ENV], os.environ[FORMAT_ENV]) == ("INFO", "json")

    configure_logging("WARNING", "text")     # called again: replaces, does not add a second handler
    log.warning("disk almost full")
    log.info("quiet now")
    assert capsys.readouterr().out == "warning: disk almost full\n"
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml")
