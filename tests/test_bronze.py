"""Bronze ingest: parsing by the declared schema, every bad record kept with its reason, exact
accounting, and idempotent, incremental runs over small literal files."""
from __future__ import annotations

import io
import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from log_lines import log_lines

from pipelines.stages import bronze
from pipelines import cli
from pipelines.datasets import load_dataset
from pipelines.storage import Lakehouse

FLIGHTS = load_dataset("nycflights13").source("flights")
# The schedule of a day (the outcomes arrive in another feed, flight_outcomes).
HEADER = "year,month,day,sched_dep_time,sched_arr_time,carrier,flight,tailnum,origin,dest,distance,hour,minute,time_hour"
DAYS = [date(2013, 1, d) for d in range(1, 7)]


def flight_line(day: date, flight: int, distance: str = "1400", tailnum: str = "N14228") -> str:
    """One nycflights13 schedule line for `day` (the first flight of 2013, another flight number)."""
    return (f"{day.year},{day.month},{day.day},515,819,UA,{flight},{tailnum},EWR,IAH,{distance},"
            f"5,15,{day.isoformat()}T10:00:00Z")


def untailed_line(day: date, flight: int) -> str:
    return f"{day.year},{day.month},{day.day},1630,1815,EV,{flight},NA,EWR,RDU,416,16,30,{day}T21:00:00Z"


def deliver(landing: Path, day: date, content: bytes | str, source: str = "flights") -> Path:
    path = landing / source / f"{day.year:04d}" / f"{day.month:02d}" / f"{day.day:02d}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def csv_file(*lines: str, header: str = HEADER) -> str:
    return "\n".join([header, *lines]) + "\n"


# ------------------------------------------------------------------------------------------------
# Parsing one file (no Spark)


def test_a_clean_file_parses_every_line_typed():
    day = date(2013, 1, 1)
    parsed = bronze.parse_file(csv_file(flight_line(day, 1), untailed_line(day, 2)).encode(), FLIGHTS)
    assert (parsed.records, parsed.rejected, parsed.good_lines) == (2, [], [2, 3])
    first, untailed = parsed.rows()
    assert first["sched_dep_time"] == 515 and first["distance"] == 1400.0 and first["flight"] == 1
    assert first["time_hour"] == datetime(2013, 1, 1, 10, tzinfo=timezone.utc)
    assert untailed["tailnum"] is None and untailed["distance"] == 416.0   # NA is null


def test_the_line_parser_and_the_fast_path_agree():
    day = date(2013, 1, 1)
    content = csv_file(flight_line(day, 1), untailed_line(day, 2), flight_line(day, 3, distance="-4")).encode()
    fast = bronze.parse_file(content, FLIGHTS)
    # A quoted field sends the file down the line-by-line path; the values must be the same.
    slow = bronze.parse_file(content.replace(b",UA,", b',"UA",'), FLIGHTS)
    assert fast.rows() == slow.rows() and fast.good_lines == slow.good_lines


@pytest.mark.parametrize("line, reason", [
    ('2013,1,1,515,819,"UA,1545,N14228,EWR,IAH,1400,5,15,2013-01-01T10:00:00Z', "malformed CSV"),
    ("2013,1,1,515,819,UA,1545,N14228,EWR,IAH,1400,5,15", "expected 14 fields, found 13"),
    (flight_line(date(2013, 1, 1), 9, distance="late"), "wrong type: distance: 'late' is not a number"),
    (flight_line(date(2013, 1, 1), 9).replace("10:00:00Z", "25:00:00Z"), "time_hour: '2013-01-01T25:00:00Z' is not an ISO"),
    ("", "blank line"),
])
def test_a_bad_line_is_rejected_with_its_text_and_reason(line, reason):
    day = date(2013, 1, 1)
    parsed = bronze.parse_file(csv_file(flight_line(day, 1), line, flight_line(day, 2)).encode(), FLIGHTS)
    assert parsed.records == 3 and parsed.good_lines == [2, 4]
    [(number, raw, why)] = parsed.rejected
    assert (number, raw) == (3, line) and reason in why


NINE = flight_line(date(2013, 1, 1), 9)


# More of the bad-input corpus, one line each among good ones: every one is rejected by name, with
# its own reason, whichever path (Arrow's reader or the line parser) the file would otherwise take.
@pytest.mark.parametrize("line, reason", [
    (NINE.replace(",9,N14228", ",99999999999,N14228"), "flight: '99999999999' does not fit in int"),
    (flight_line(date(2013, 1, 1), 9, distance="NaN"), "distance: 'NaN' is not a number"),
    (flight_line(date(2013, 1, 1), 9, distance="inf"), "distance: 'inf' is not a number"),
    (flight_line(date(2013, 1, 1), 9, distance="1e400"), "distance: '1e400' is not a finite number"),
    (NINE.replace(",9,N14228", ",0x10,N14228"), "flight: '0x10' is not an integer"),       # Arrow took it as 16
    (NINE.replace(",9,N14228", ", 9 ,N14228"), "flight: ' 9 ' is not an integer"),         # Arrow took it as 9
    (NINE.replace(",9,N14228", ",true,N14228"), "flight: 'true' is not an integer"),
    (flight_line(date(2013, 1, 1), 9, distance='"2,5"'), "distance: '2,5' is not a number"),
    (NINE.replace("2013-01-01T", "2013-02-30T"), "time_hour: '2013-02-30T10:00:00Z' is not an ISO timestamp"),
    (HEADER, "year: 'year' is not an integer"),                                             # a header repeated
    (NINE.replace(",", "\t"), "expected 14 fields, found 1"),
    (NINE.replace(",", ";"), "expected 14 fields, found 1"),
    (NINE + ",", "expected 14 fields, found 15"),
], ids=["int overflow", "NaN", "inf", "1e400", "hex", "spaces", "boolean", "decimal comma", "31 February",
        "repeated header", "tabs", "semicolons", "trailing delimiter"])
def test_more_bad_values_are_each_rejected_with_their_own_reason(line, reason):
    day = date(2013, 1, 1)
    parsed = bronze.parse_file(csv_file(flight_line(day, 1), line, flight_line(day, 2)).encode(), FLIGHTS)
    assert parsed.records == 3 and parsed.good_lines == [2, 4]
    [(number, raw, why)] = parsed.rejected
    assert number == 3 and raw == line and reason in why


def test_a_non_utf8_byte_is_rejected_and_the_raw_bytes_kept_visible():
    day = date(2013, 1, 1)
    bad = flight_line(day, 7, tailnum="N1\xe9").encode("latin-1")
    content = csv_file(flight_line(day, 1)).encode() + bad + b"\n"
    parsed = bronze.parse_file(content, FLIGHTS)
    [(number, raw, why)] = parsed.rejected
    assert number == 3 and "N1\\xe9" in raw and "not valid utf-8: byte 0xe9" in why


@pytest.mark.parametrize("header, words", [
    (HEADER + ",gate", "extra column gate"),
    (HEADER.replace(",minute", ""), "missing column minute"),
])
def test_a_header_that_does_not_match_rejects_every_line_with_the_reason(header, words):
    day = date(2013, 1, 1)
    parsed = bronze.parse_file(csv_file(flight_line(day, 1), flight_line(day, 2), header=header).encode(), FLIGHTS)
    assert parsed.good.num_rows == 0 and len(parsed.rejected) == 2
    assert all(words in why and why.startswith("header does not match") for _, _, why in parsed.rejected)
    assert parsed.warning and words in parsed.warning


def test_a_header_in_another_order_is_read_by_name():
    names = HEADER.split(",")
    line = flight_line(date(2013, 1, 1), 1).split(",")
    order = list(reversed(range(len(names))))
    content = csv_file(",".join(line[i] for i in order), header=",".join(names[i] for i in order)).encode()
    [row] = bronze.parse_file(content, FLIGHTS).rows()
    assert row["flight"] == 1 and row["carrier"] == "UA" and row["year"] == 2013


def test_a_short_binary_file_is_refused_by_its_header_not_a_crash():
    """A few bytes of non-UTF-8 and a line break: Arrow's reader accepted the bytes as a header
    and then failed on the column names (UnicodeDecodeError), killing the whole ingest."""
    content = b"\x00\x9f\xff\xfe binary garbage \x00\x01\n\x80\x81\x82\n"
    assert bronze.header_reason(content, FLIGHTS) == "header is not valid utf-8: invalid start byte at byte 1"
    parsed = bronze.parse_file(content, FLIGHTS)
    assert parsed.records == 1 and parsed.good.num_rows == 0
    [(number, raw, reason)] = parsed.rejected
    assert number == 2 and reason.startswith("not valid utf-8: byte 0x80")


def test_a_short_binary_file_among_good_ones_is_refused_by_name_and_the_others_ingested(cfg, spark, lakehouse):
    landing = Path(cfg.lakehouse.landing)
    d1, d2 = date(2013, 1, 1), date(2013, 1, 2)
    deliver(landing, d1, b"\x00\x9f\xff\xfe binary garbage \x00\x01\n\x80\x81\x82\n")
    deliver(landing, d2, csv_file(flight_line(d2, 1), flight_line(d2, 2)))
    with log_lines() as messages:
        [result] = bronze.ingest(cfg, spark, dates=[d1, d2], sources=["flights"])
    assert result.refused_files == ["flights/2013/01/01.csv"] and result.rows == 2 and result.rejected == 1
    assert any("flights/2013/01/01.csv: header is not valid utf-8" in m for m in messages)


def test_an_empty_file_has_no_records():
    parsed = bronze.parse_file(b"", FLIGHTS)
    assert (parsed.records, parsed.good.num_rows, parsed.rejected) == (0, 0, [])
    assert bronze.parse_file(HEADER.encode() + b"\r\n", FLIGHTS).records == 0


def test_json_lines_and_parquet_parse_by_the_same_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    planes = load_dataset("nycflights13").source("planes")
    jsonl = planes.__class__(**{**planes.__dict__, "format": "jsonl"})
    lines = [json.dumps({"tailnum": "N1", "year": 2004, "seats": 55}),
             json.dumps({"tailnum": "N2", "year": "old"}),
             json.dumps({"tailnum": "N3", "wings": 2}),
             "{not json"]
    parsed = bronze.parse_file(("\n".join(lines) + "\n").encode(), jsonl)
    assert [r["tailnum"] for r in parsed.rows()] == ["N1"] and parsed.rows()[0]["engines"] is None
    assert [(n, why.split(":")[0]) for n, _, why in parsed.rejected] == [
        (2, "wrong type"), (3, "fields not in the declared columns"), (4, "malformed JSON")]

    parquet = planes.__class__(**{**planes.__dict__, "format": "parquet"})
    buf = io.BytesIO()
    pq.write_table(pa.table({"tailnum": ["N1", "N2"], "year": [2004, None], "type": ["a", "b"],
                             "manufacturer": ["m", "m"], "model": ["x", "y"], "engines": [2, 2],
                             "seats": [55, 10], "speed": [None, None], "engine": ["e", "e"]}), buf)
    parsed = bronze.parse_file(buf.getvalue(), parquet)
    assert (parsed.records, [r["tailnum"] for r in parsed.rows()]) == (2, ["N1", "N2"])
    assert bronze.count_records(buf.getvalue(), parquet) == 2
    assert bronze.header_reason(buf.getvalue(), parquet) is None
    extra = io.BytesIO()
    pq.write_table(pa.table({"tailnum": ["N1"], "wings": [2]}), extra)
    assert bronze.header_reason(extra.getvalue(), parquet).startswith(
        "header does not match the declared columns: extra column wings; missing columns year")


def test_the_header_is_judged_without_parsing_the_records():
    """The driver reads each delivered file's header, so a file with a bad header is refused even
    when no record follows it (a binary blob without a line break)."""
    import gzip

    assert bronze.header_reason(csv_file(flight_line(date(2013, 1, 1), 1)).encode(), FLIGHTS) is None
    assert bronze.header_reason(b"", FLIGHTS) is None
    assert bronze.header_reason(HEADER.encode(), FLIGHTS) is None
    blob = gzip.compress(b"\xff" + csv_file().encode(), mtime=0)
    assert bronze.header_reason(blob, FLIGHTS).startswith("header is not valid utf-8")
    assert bronze.header_reason(b'"year,month\n', FLIGHTS).startswith("header: malformed CSV")
    assert bronze.header_reason((HEADER + ",gate\n").encode(), FLIGHTS).endswith("extra column gate")


# ------------------------------------------------------------------------------------------------
# Ingest runs with Spark


def read_rows(lh, name: str) -> list[dict]:
    return [r.asDict() for r in lh.table(name).read().collect()]


def versions(lh, *names: str) -> dict[str, int]:
    return {n: lh.table(n).version() for n in names}


@pytest.fixture(scope="module")
def bad_week(spark, tmp_path_factory):
    """One ingest over six days of flights, each with its own kind of bad input."""
    from pipelines.config import load_config

    root = tmp_path_factory.mktemp("bad_week") / "lakehouse"
    cfg = load_config("local", [f"lakehouse.root={root}", "spark.master=local[2]"])
    landing = Path(cfg.lakehouse.landing)
    d1, d2, d3, d4, _, d6 = DAYS
    deliver(landing, d1, csv_file(flight_line(d1, 1), untailed_line(d1, 2)).encode()
            + b'2013,1,1,515,819,"UA,3,N1,EWR,IAH,1400,5,15,2013-01-01T10:00:00Z\n'
            + flight_line(d1, 4, distance="late").encode() + b"\n"
            + flight_line(d1, 5, tailnum="N\xe9").encode("latin-1") + b"\n"
            + b"2013,1,1,517\n")
    deliver(landing, d2, csv_file(flight_line(d2, 1) + ",A12", flight_line(d2, 2) + ",B3", header=HEADER + ",gate"))
    deliver(landing, d3, csv_file(flight_line(d3, 1).rsplit(",", 2)[0] + "," + flight_line(d3, 1).rsplit(",", 1)[1],
                                  header=HEADER.replace(",minute", "")))
    deliver(landing, d4, b"")
    deliver(landing, d6, csv_file(flight_line(d6, 1), flight_line(d6, 2)))
    with log_lines() as messages:
        [result] = bronze.ingest(cfg, spark, dates=DAYS, sources=["flights"])
    return Lakehouse.from_config(cfg, spark), result, messages


def test_good_rows_land_typed_with_lineage(bad_week):
    lh, result, _ = bad_week
    rows = read_rows(lh, "bronze.flights")
    by_day = {}
    for r in rows:
        by_day.setdefault(r["date"], []).append(r)
    assert sorted(r["flight"] for r in by_day[DAYS[0]]) == [1, 2]
    assert sorted(r["flight"] for r in by_day[DAYS[5]]) == [1, 2]
    assert set(by_day) == {DAYS[0], DAYS[5]}
    row = by_day[DAYS[0]][0]
    assert row["_source_file"] == "flights/2013/01/01.csv" and row["_run_id"].startswith("ingest-")
    assert isinstance(row["_ingest_time"], datetime)
    assert result.rows == 4 and result.files_ingested == 5


def test_every_bad_line_is_in_the_rejected_table_with_its_reason(bad_week):
    lh, result, _ = bad_week
    rejected = {(r["_source_file"], r["line_number"]): r for r in read_rows(lh, "bronze.flights_rejected")}
    day1 = {n: r["reason"] for (f, n), r in rejected.items() if f == "flights/2013/01/01.csv"}
    assert sorted(day1) == [4, 5, 6, 7]
    assert day1[4].startswith("malformed CSV")
    assert day1[5] == "wrong type: distance: 'late' is not a number"
    assert day1[6].startswith("not valid utf-8: byte 0xe9")
    assert day1[7] == "expected 14 fields, found 4"
    assert "N\\xe9" in rejected[("flights/2013/01/01.csv", 6)]["raw_line"]
    assert rejected[("flights/2013/01/01.csv", 7)]["raw_line"] == "2013,1,1,517"
    assert result.rejected == len(rejected) == 4 + 2 + 1


def test_files_with_an_extra_or_a_missing_column_are_rejected_whole(bad_week):
    lh, result, messages = bad_week
    reasons = {(r["_source_file"], r["line_number"]): r["reason"] for r in read_rows(lh, "bronze.flights_rejected")}
    assert reasons[("flights/2013/01/02.csv", 2)] == "header does not match the declared columns: extra column gate"
    assert reasons[("flights/2013/01/02.csv", 3)] == reasons[("flights/2013/01/02.csv", 2)]
    assert reasons[("flights/2013/01/03.csv", 2)] == "header does not match the declared columns: missing column minute"
    assert result.refused_files == ["flights/2013/01/02.csv", "flights/2013/01/03.csv"]
    assert any("flights/2013/01/02.csv: header does not match" in m for m in messages)


def test_an_empty_file_and_a_day_without_a_file_are_reported_not_fatal(bad_week):
    lh, result, messages = bad_week
    assert result.empty_files == ["flights/2013/01/04.csv"]
    assert result.missing_dates == [date(2013, 1, 5)]
    assert any("no file for 2013-01-05" in m for m in messages)
    assert "1 empty (flights/2013/01/04.csv)" in result.line() and "no file for 1 day" in result.line()
    assert "[ingest] bronze.flights: flights/2013/01/04.csv is empty: no record to ingest" in messages
    assert result.dates == [d for d in DAYS if d != date(2013, 1, 5)]


def test_every_raw_line_is_accounted_for_in_the_log(bad_week):
    lh, _, _ = bad_week
    log = {r["path"]: r for r in read_rows(lh, "ops.ingest_log")}
    assert {p: (r["rows"], r["rejected"]) for p, r in log.items()} == {
        "flights/2013/01/01.csv": (2, 4), "flights/2013/01/02.csv": (0, 2), "flights/2013/01/03.csv": (0, 1),
        "flights/2013/01/04.csv": (0, 0), "flights/2013/01/06.csv": (2, 0)}
    assert all(len(r["sha256"]) == 64 and r["size"] >= 0 for r in log.values())
    assert lh.table("bronze.flights").count() + lh.table("bronze.flights_rejected").count() == sum(
        r["rows"] + r["rejected"] for r in log.values())


def test_the_same_file_delivered_twice_is_skipped(cfg, spark, lakehouse):
    landing = Path(cfg.lakehouse.landing)
    day = DAYS[0]
    deliver(landing, day, csv_file(flight_line(day, 1), "1,2,3"))
    [first] = bronze.ingest(cfg, spark, dates=[day], sources=["flights"])
    tables = ("bronze.flights", "bronze.flights_rejected", "ops.ingest_log")
    before = versions(lakehouse, *tables)
    deliver(landing, day, csv_file(flight_line(day, 1), "1,2,3"))       # the same bytes again
    [second] = bronze.ingest(cfg, spark, dates=[day], sources=["flights"])
    assert (first.files_ingested, first.rows, first.rejected) == (1, 1, 1)
    assert (second.files_ingested, second.files_skipped, second.rows) == (0, 1, 0)
    assert versions(lakehouse, *tables) == before
    assert "skipped" in second.line()


def test_a_replaced_file_replaces_the_rows_it_brought(cfg, spark, lakehouse):
    landing = Path(cfg.lakehouse.landing)
    d1, d2 = DAYS[0], DAYS[1]
    deliver(landing, d1, csv_file(flight_line(d1, 1), flight_line(d1, 2, distance="x"), flight_line(d1, 3)))
    deliver(landing, d2, csv_file(flight_line(d2, 7)))
    bronze.ingest(cfg, spark, dates=[d1, d2], sources=["flights"])
    day2_before = read_rows(lakehouse, "bronze.flights")
    day2_before = [r for r in day2_before if r["date"] == d2]

    deliver(landing, d1, csv_file(flight_line(d1, 1), flight_line(d1, 2, distance="5")))   # corrected, one fewer
    [result] = bronze.ingest(cfg, spark, dates=[d1, d2], sources=["flights"])
    assert (result.files_ingested, result.files_skipped, result.dates) == (1, 1, [d1])
    rows = read_rows(lakehouse, "bronze.flights")
    assert sorted((r["flight"], r["distance"]) for r in rows if r["date"] == d1) == [(1, 1400.0), (2, 5.0)]
    assert [r for r in rows if r["date"] == d2] == day2_before                 # the other day untouched
    assert lakehouse.table("bronze.flights_rejected").count() == 0            # the old bad line is gone
    log = [r for r in read_rows(lakehouse, "ops.ingest_log") if r["path"] == "flights/2013/01/01.csv"]
    assert sorted((r["rows"], r["rejected"]) for r in log) == [(2, 0), (2, 1)]


def test_a_date_that_is_not_a_date_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ingest", "--date", "2013-02-30"])
    assert exit_info.value.code == 2
    assert "argument --date: not a date: '2013-02-30'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["clean", "--from", "yesterday", "--to", "2013-01-02"])
    assert "argument --from: not a date: 'yesterday'" in capsys.readouterr().err


def with_calendar(calendar: str):
    """The nycflights13 dataset with its flights feed on another delivery calendar."""
    import dataclasses

    ds = load_dataset("nycflights13")
    return dataclasses.replace(ds, sources={**ds.sources, "flights": dataclasses.replace(FLIGHTS, calendar=calendar)})


def test_a_weekday_feed_has_no_gap_at_weekends_and_its_gaps_are_a_table(cfg, spark, lakehouse):
    landing = Path(cfg.lakehouse.landing)
    weekdays = [date(2013, 1, d) for d in (7, 8, 10, 11, 14)]          # Mon..Fri, Mon; Wed the 9th missing
    for d in weekdays:
        deliver(landing, d, csv_file(flight_line(d, 1)))
    dataset = with_calendar("weekdays")
    [result] = bronze.ingest(cfg, spark, dataset=dataset, sources=["flights"])
    assert result.missing_dates == [date(2013, 1, 9)]                 # not the 12th and 13th (a weekend)
    gaps = lakehouse.table("ops.feed_gaps")
    assert [(r["source"], r["date"], r["expected_path"]) for r in gaps.to_arrow().to_pylist()] == [
        ("flights", date(2013, 1, 9), "flights/2013/01/09.csv")]
    deliver(landing, date(2013, 1, 9), csv_file(flight_line(date(2013, 1, 9), 1)))
    [result] = bronze.ingest(cfg, spark, dataset=dataset, sources=["flights"])
    assert result.missing_dates == [] and gaps.count() == 0             # the file arrived: no gap left


def test_a_sparse_feed_declared_daily_says_its_gaps_in_one_line_and_a_rerun_commits_nothing(cfg, spark, lakehouse):
    landing = Path(cfg.lakehouse.landing)
    for d in (date(2013, 1, 1), date(2013, 1, 20)):
        deliver(landing, d, csv_file(flight_line(d, 1)))
    with log_lines() as lines:
        [result] = bronze.ingest(cfg, spark, sources=["flights"])
    assert len(result.missing_dates) == 18
    said = [line for line in lines if "no file for" in line and "rows from" not in line]
    assert said == ["[ingest] bronze.flights: no file for 18 days its calendar (daily) expects, "
                    "2013-01-02..2013-01-19; each is a row of ops.feed_gaps"]
    gaps = lakehouse.table("ops.feed_gaps")
    version = gaps.version()
    assert gaps.count() == 18
    bronze.ingest(cfg, spark, sources=["flights"])
    assert gaps.version() == version
    # Declared sparse, the same deliveries have no gap at all.
    [result] = bronze.ingest(cfg, spark, dataset=with_calendar("sparse"), sources=["flights"])
    assert result.missing_dates == [] and gaps.count() == 0
