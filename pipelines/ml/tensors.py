"""A pinned `gold.model_input` version → Petastorm → `tf.data`, one shard per Horovod rank.

The snapshot's own Parquet files are read in place (no copy unless `training.local_cache`), and
every rank takes the same number of steps per epoch, so allreduce never waits for a rank that ran dry.

    >>> snap = pin_snapshot(lakehouse)                       # latest version, train + validation files
    >>> spec = load_feature_spec(lakehouse, snap)
    >>> ds = make_dataset(snap.splits["train"], spec, cfg.training, label="label", rank=0, num_ranks=2)
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np

from pipelines import catalog
from pipelines.catalog import FEATURE_SPEC, MODEL_INPUT
from pipelines.ml.inputs import CATEGORICAL_PREFIX, FeatureSpec, TensorInputError, feature_spec_from_rows, model_inputs

# Petastorm 0.13 calls pyarrow's legacy dataset API, which warns on every reader and row group.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"petastorm(\.|$)")

# gold.model_input's partition column: which split a file's rows belong to.
[SPLIT_COLUMN] = catalog.entry(MODEL_INPUT).partition_by


@dataclass(frozen=True)
class SplitFiles:
    """The data files of one split of one table version, with their row and row-group counts."""

    table: str
    version: int
    split: str
    files: tuple[str, ...]
    rows: int
    row_groups: int
    # Inclusive (first, last) `day` (yyyymmdd) to keep, for a backtest fold; None keeps every row.
    days: tuple[int, int] | None = None


@dataclass(frozen=True)
class Snapshot:
    """A pinned version of the model-ready table: its columns and the files of each split."""

    table: str
    version: int
    columns: tuple[str, ...]
    splits: dict[str, SplitFiles]
    # Largest value of each cat_* column in the selected files, from the Delta statistics.
    categorical_max: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Pinning a snapshot


def pin_snapshot(lakehouse, version: int | None = None, splits: tuple[str, ...] = ("train", "validation"),
                 table: str = MODEL_INPUT) -> Snapshot:
    """The files of `splits` in `table` at `version` (the latest when None), selected by the add
    actions' `partition.split` value, with row counts from the Delta statistics.

        >>> pin_snapshot(lakehouse, version=3).splits["train"].rows
    """
    t = lakehouse.table(table)
    if not t.exists():
        raise TensorInputError(f"table {table} does not exist yet under {lakehouse.root}; build the gold tables first")
    pinned = t.version() if version is None else version
    actions = t.add_actions(pinned)
    key = f"partition.{SPLIT_COLUMN}"
    if actions and key not in actions[0]:
        raise TensorInputError(f"{table} v{pinned} is not partitioned by '{SPLIT_COLUMN}', as gold.model_input must be")
    columns = tuple(f.name for f in t.schema(pinned).fields if f.name != SPLIT_COLUMN)
    by_split: dict[str, SplitFiles] = {}
    cat_max: dict[str, int] = {}
    for split in splits:
        chosen = sorted((a for a in actions if a[key] == split), key=lambda a: a["path"])
        if not chosen:
            present = sorted({str(a[key]) for a in actions})
            raise TensorInputError(f"{table} v{pinned} has no files for split '{split}' (splits present: {', '.join(present) or 'none'})")
        files = tuple(a["path"] for a in chosen)
        rows = int(sum(a["num_records"] or 0 for a in chosen))
        by_split[split] = SplitFiles(table, pinned, split, files, rows, count_row_groups(files))
        for a in chosen:
            for column in columns:
                if column.startswith(CATEGORICAL_PREFIX) and a.get(f"max.{column}") is not None:
                    cat_max[column] = max(cat_max.get(column, 0), int(a[f"max.{column}"]))
    return Snapshot(table, pinned, columns, by_split, cat_max)


def count_row_groups(files: tuple[str, ...] | list[str]) -> int:
    """Parquet row groups in `files` (read from the footers only): the unit Petastorm shards by."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    total = 0
    for uri in files:
        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_file(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_row_groups
    return total


def restrict_days(splits: list[SplitFiles], first: int, last: int, name: str) -> SplitFiles:
    """The rows of `splits` (files of one table version) whose `day` lies in [first, last]
    (yyyymmdd), as one split named `name`: a backtest fold. Files without such a day are left
    out; the rows are counted from the `day` column alone.

        >>> restrict_days([snap.splits["train"], snap.splits["validation"]], 20130101, 20130831, "fold_1_train")
    """
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    kept, rows = [], 0
    for uri in (f for s in splits for f in s.files):
        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_file(path) as handle:
            day = pq.read_table(handle, columns=["day"])["day"]
        n = int(pc.sum(pc.and_(pc.greater_equal(day, first), pc.less_equal(day, last))).as_py() or 0)
        if n:
            kept.append(uri)
            rows += n
    if not kept:
        raise TensorInputError(f"{splits[0].table} v{splits[0].version} has no rows from day {first} to {last} ({name})")
    return SplitFiles(splits[0].table, splits[0].version, name, tuple(kept), rows, count_row_groups(kept), (first, last))


def split_frame(split: SplitFiles, columns: list[str]):
    """The rows of `split` (its files, in order; only the days it keeps) as a pandas frame of
    `columns`, read with pyarrow on this process: a fold's month to score, with its keys.

        >>> split_frame(fold_validation, ["flight_id", "label", *spec.inputs])
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    wanted = list(dict.fromkeys([*columns, *(["day"] if split.days else [])]))
    tables = []
    for uri in split.files:
        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=wanted)
        if split.days:
            first, last = split.days
            table = table.filter(pc.and_(pc.greater_equal(table["day"], first), pc.less_equal(table["day"], last)))
        # Files of different writes may declare a column nullable or not: read them all as nullable.
        tables.append(table.cast(pa.schema([f.with_nullable(True) for f in table.schema])))
    return pa.concat_tables(tables).select(list(columns)).to_pandas()


def load_feature_spec(lakehouse, snapshot: Snapshot, version: int | None = None) -> FeatureSpec:
    """The feature spec at `version` (latest when None) matched against the snapshot's columns."""
    t = lakehouse.table(FEATURE_SPEC)
    if not t.exists():
        raise TensorInputError(f"table {FEATURE_SPEC} does not exist yet under {lakehouse.root}; build the gold tables first")
    pinned = t.version() if version is None else version
    # The spec is one small table: read on the driver without Spark (notebooks, workers).
    rows = t.to_arrow(version=pinned).to_pylist()
    return feature_spec_from_rows(rows, snapshot.columns, pinned, snapshot.categorical_max)


# --------------------------------------------------------------------------------------------
# Shards and batches


def steps_per_epoch(rows: int, batch_size: int, num_ranks: int, max_rows: int = 0) -> int:
    """Batches every rank takes per epoch: the split's rows (or `max_rows`) divided over all ranks.

    Every rank takes exactly this many; a rank whose shard holds fewer rows reads its shard again.
    """
    usable = min(rows, max_rows) if max_rows else rows
    steps = usable // (batch_size * num_ranks)
    if steps < 1:
        raise TensorInputError(f"{usable} rows cannot give each of {num_ranks} rank(s) one batch of {batch_size}; "
                               "lower training.batch_size or train on more rows")
    return steps


def check_shardable(split: SplitFiles, num_ranks: int) -> None:
    """Petastorm shards by row group: a rank without a row group would have no data at all."""
    if split.row_groups < num_ranks:
        raise TensorInputError(
            f"{split.table} v{split.version} split '{split.split}' has {split.row_groups} Parquet row group(s) but "
            f"training runs {num_ranks} ranks, and Petastorm shards by row group, so a rank would get no rows. "
            "Rewrite the table with a smaller lakehouse.model_input_row_group_rows, or lower training.num_proc.")


def iter_batches(split: SplitFiles, spec: FeatureSpec, *, label: str, batch_size: int, rank: int = 0,
                 num_ranks: int = 1, training: bool = True, epoch: int = 0, seed: int = 0,
                 steps: int | None = None, shuffle_buffer: int = 10_000, reader_threads: int = 1
                 ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(inputs, label) batches of one epoch of this rank's shard, read by Petastorm.

    Training: row groups in a seeded order, rows shuffled in blocks of `shuffle_buffer`, exactly
    `steps` full batches (the shard is read again, in another seeded order, if it runs out).
    Evaluation: the shard once, in file order, the last batch possibly short. The order depends
    only on (seed, epoch, rank); `make_dataset` reads a whole fit as one such "epoch" of all its
    steps.
    """
    for x, y in iter_blocks(split, spec, label=label, batch_size=batch_size, rank=rank, num_ranks=num_ranks,
                            training=training, epoch=epoch, seed=seed, steps=steps,
                            shuffle_buffer=shuffle_buffer, reader_threads=reader_threads):
        for start in range(0, len(y), batch_size):
            yield {k: v[start:start + batch_size] for k, v in x.items()}, y[start:start + batch_size]


def iter_blocks(split: SplitFiles, spec: FeatureSpec, *, label: str, batch_size: int, rank: int = 0,
                num_ranks: int = 1, training: bool = True, epoch: int = 0, seed: int = 0,
                steps: int | None = None, shuffle_buffer: int = 10_000, reader_threads: int = 1,
                skip_steps: int = 0) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """The batches of `iter_batches`, back to back in blocks of whole batches (the last one of an
    evaluation pass possibly short): cut them with `tf.data.Dataset.rebatch(batch_size)`.

    Training with `skip_steps`: the first `skip_steps` of the `steps` batches are read and
    shuffled as they would be, then dropped, so a fit resumed after some epochs reads exactly what
    the rest of an uninterrupted one would (`make_dataset` reads a whole fit with one reader).

    Handing tf.data one block per shuffle buffer instead of one batch at a time means the Python
    generator, which holds the GIL, runs once per block (about five batches of 2,048) instead of
    once per batch. bench.input_pipeline measured no gain from it on 2 cores (Petastorm 199k-225k
    samples/s either way); it leaves the batch cutting to tf.data's C++.
    """
    check_shardable(split, num_ranks)
    fields = [*spec.inputs, label]
    if split.days and "day" not in fields:
        fields.append("day")
    reader = _open_reader(split, fields, training, seed, epoch, rank, num_ranks, reader_threads)
    rng = np.random.default_rng([seed, epoch, rank])
    wanted = steps * batch_size if training else None
    skip = skip_steps * batch_size if training else 0
    emitted = 0
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    try:
        for chunk in reader:
            block = {name: np.asarray(getattr(chunk, name)) for name in fields}
            if split.days:
                inside = (block["day"] >= split.days[0]) & (block["day"] <= split.days[1])
                block = {name: column[inside] for name, column in block.items()}
            pending.append(block)
            pending_rows += len(block[label])
            threshold = max(shuffle_buffer, batch_size) if training else batch_size
            if pending_rows < threshold:
                continue
            merged = _concat(pending, fields)
            if training:
                order = rng.permutation(pending_rows)
                merged = {k: v[order] for k, v in merged.items()}
            full = (pending_rows // batch_size) * batch_size
            if wanted is not None:
                full = min(full, wanted - emitted)
            if emitted + full > skip:
                yield _batch(merged, spec, label, max(0, skip - emitted), full)
            emitted += full
            pending = [{k: v[full:] for k, v in merged.items()}]
            pending_rows -= full
            if wanted is not None and emitted >= wanted:
                return
        if not training and pending_rows:
            yield _batch(_concat(pending, fields), spec, label, 0, pending_rows)
    finally:
        reader.stop()
        reader.join()


def _open_reader(split: SplitFiles, fields: list[str], training: bool, seed: int, epoch: int, rank: int,
                 num_ranks: int, reader_threads: int):
    from petastorm import make_batch_reader

    # Training reads the shard endlessly (the caller stops after its steps), each pass in a new
    # seeded row-group order; evaluation reads it once, in file order.
    return make_batch_reader(
        list(split.files), schema_fields=fields, reader_pool_type="thread", workers_count=reader_threads,
        shuffle_row_groups=training, seed=seed * 1_000_003 + epoch if training else seed,
        num_epochs=None if training else 1,
        cur_shard=rank if num_ranks > 1 else None, shard_count=num_ranks if num_ranks > 1 else None)


def _concat(blocks: list[dict[str, np.ndarray]], fields: list[str]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([b[name] for b in blocks]) for name in fields}


def _batch(columns: dict[str, np.ndarray], spec: FeatureSpec, label: str, start: int, end: int):
    part = {k: v[start:end] for k, v in columns.items()}
    return model_inputs(part, spec), np.asarray(part[label], dtype=np.float32).reshape(-1, 1)


def make_dataset(split: SplitFiles, spec: FeatureSpec, training_cfg, *, label: str, rank: int = 0,
                 num_ranks: int = 1, training: bool = True, first_epoch: int = 0, epochs: int = 1):
    """A prefetched `tf.data.Dataset` of (inputs, label) batches for this rank.

    For training it holds epochs `first_epoch .. epochs-1` back to back, each exactly
    `steps_per_epoch(...)` batches, so Keras' `fit(steps_per_epoch=..., initial_epoch=first_epoch)`
    walks through it epoch by epoch. The whole fit is one pass of one Petastorm reader over the
    shard, read again as often as the epochs need: a reader opens every file's footer and plans
    every row group, which cost each epoch as much again when each epoch opened its own, and grew
    with the table. A fit resumed at `first_epoch` reads the epochs before it
    and drops them, so it gets the batches an uninterrupted fit would. For evaluation it is the
    rank's shard once, kept in memory after the first pass (validation splits are small), so every
    epoch sees the same batches.
    """
    import tensorflow as tf

    cfg = training_cfg
    check_shardable(split, num_ranks)
    signature = ({name: tf.TensorSpec((None, 1), tf.float32) for name in spec.numeric}
                 | {name: tf.TensorSpec((None, 1), tf.int32) for name in spec.categorical}
                 | {name: tf.TensorSpec((None, n), tf.float32) for name, n in spec.sequences.items()},
                 tf.TensorSpec((None, 1), tf.float32))
    common = dict(label=label, batch_size=cfg.batch_size, rank=rank, num_ranks=num_ranks, seed=cfg.seed,
                  shuffle_buffer=cfg.shuffle_buffer, reader_threads=cfg.reader_threads)
    if training:
        steps = steps_per_epoch(split.rows, cfg.batch_size, num_ranks, cfg.max_train_rows)

        def whole_fit():
            return iter_blocks(split, spec, training=True, epoch=0, steps=steps * epochs,
                               skip_steps=steps * first_epoch, **common)

        dataset = tf.data.Dataset.from_generator(whole_fit, output_signature=signature).rebatch(cfg.batch_size)
    else:
        # Keras counts the batches of the first validation pass and expects exactly as many in every
        # later epoch; a pass that came up short would stop this rank alone and break Horovod's
        # collectives (seen once in a benchmark run, on epoch 4 of 4). The first pass is cached, so every
        # epoch validates on the same batches, and later epochs do not read the files again.
        dataset = (tf.data.Dataset.from_generator(lambda: iter_blocks(split, spec, training=False, **common),
                                                  output_signature=signature)
                   .rebatch(cfg.batch_size).cache())
    return dataset.prefetch(tf.data.AUTOTUNE)


def cache_locally(split: SplitFiles, cache_root: str | None = None) -> SplitFiles:
    """Copy the split's files to local disk once per table version; return the split reading them.

    Used when `training.local_cache` is set, for storage that is slow to read row group by row group.
    """
    import pyarrow.fs as pafs

    root = cache_root or os.path.join(tempfile.gettempdir(), "lakehouse-dl-cache")
    folder = os.path.join(root, split.table.replace(".", "_"), f"v{split.version}", split.split)
    os.makedirs(folder, exist_ok=True)
    local = []
    for uri in split.files:
        target = os.path.join(folder, os.path.basename(uri))
        if not os.path.exists(target):
            fs, path = pafs.FileSystem.from_uri(uri)
            # Copy under a temporary name and rename, so another rank never reads a half-written file.
            partial = f"{target}.{os.getpid()}.partial"
            with fs.open_input_stream(path) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
            os.replace(partial, target)
        local.append(f"file://{target}")
    return SplitFiles(split.table, split.version, split.split, tuple(local), split.rows, split.row_groups, split.days)


def split_to_dict(split: SplitFiles) -> dict:
    """A JSON-ready description of the split read (table, version, files, rows)."""
    return asdict(split)
