"""Tensors: a pinned model_input version → Petastorm shards → tf.data batches."""
from __future__ import annotations

import numpy as np
import pytest

from model_input_fixtures import CATEGORICAL, NUMERIC, model_input_lakehouse, write_model_input
from pipelines.ml import tensors
from pipelines.ml.tensors import SplitFiles
from pipelines.ml.inputs import TensorInputError


@pytest.fixture(scope="module")
def lakehouse(spark, tmp_path_factory):
    return model_input_lakehouse(spark, tmp_path_factory.mktemp("tensors") / "lakehouse")


@pytest.fixture(scope="module")
def snapshot(lakehouse):
    return tensors.pin_snapshot(lakehouse, version=0)


@pytest.fixture(scope="module")
def spec(lakehouse, snapshot):
    return tensors.load_feature_spec(lakehouse, snapshot)


def flight_ids(split, spec, **kwargs) -> np.ndarray:
    # Reading the key as the "label" shows exactly which rows a rank got.
    batches = tensors.iter_batches(split, spec, label="flight_id", batch_size=100, **kwargs)
    return np.concatenate([y.ravel() for _, y in batches]).astype(np.int64)


def test_snapshot_selects_split_files_with_row_counts_from_the_log(snapshot):
    train, val = snapshot.splits["train"], snapshot.splits["validation"]
    assert (train.rows, val.rows) == (4000, 1000)
    assert all("/split=train/" in f and f.startswith("file://") for f in train.files)
    assert all("/split=validation/" in f for f in val.files)
    assert len(train.files) == 2 and train.row_groups == 8 and val.row_groups == 2
    assert snapshot.version == 0 and "split" not in snapshot.columns
    assert snapshot.categorical_max == {"cat_carrier": 5, "cat_origin": 3}


def test_feature_spec_gives_inputs_and_embedding_sizes(spec):
    assert spec.numeric == tuple(NUMERIC)
    assert spec.categorical == {name: len(vocab) + 1 for name, vocab in CATEGORICAL.items()}
    assert spec.version == 0
    assert tensors.FeatureSpec.from_dict(spec.to_dict()) == spec


def test_feature_spec_rows_may_name_the_feature_and_must_cover_the_indices():
    columns = ["flight_id", "num_a", "cat_carrier", "label"]
    spec = tensors.feature_spec_from_rows([{"name": "carrier", "vocabulary": ["AA", "B6"], "vocab_size": 2}],
                                          columns, categorical_max={"cat_carrier": 2})
    assert spec.categorical == {"cat_carrier": 3} and spec.numeric == ("num_a",)
    with pytest.raises(TensorInputError, match="cat_carrier holds index 7"):
        tensors.feature_spec_from_rows([{"name": "cat_carrier", "vocabulary": ["AA"], "vocab_size": 2}],
                                       columns, version=4, categorical_max={"cat_carrier": 7})
    with pytest.raises(TensorInputError, match="no row in gold.feature_spec"):
        tensors.feature_spec_from_rows([], columns)


def test_shards_of_two_ranks_are_disjoint_and_cover_the_split(snapshot, spec):
    val = snapshot.splits["validation"]
    shards = [flight_ids(val, spec, rank=r, num_ranks=2, training=False) for r in range(2)]
    assert all(len(s) > 0 for s in shards)
    assert not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate(shards)) == list(range(4000, 5000))


def test_every_rank_takes_the_same_steps_in_a_seeded_order(snapshot, spec):
    train = snapshot.splits["train"]
    steps = tensors.steps_per_epoch(train.rows, 100, 2)
    assert steps == 20
    common = dict(num_ranks=2, training=True, seed=3, steps=steps, shuffle_buffer=1000)
    epoch0 = [flight_ids(train, spec, rank=r, epoch=0, **common) for r in range(2)]
    assert [len(ids) for ids in epoch0] == [2000, 2000]
    assert np.array_equal(epoch0[0], flight_ids(train, spec, rank=0, epoch=0, **common))
    assert not np.array_equal(epoch0[0], flight_ids(train, spec, rank=0, epoch=1, **common))
    # A shard smaller than its share is read again rather than ending early.
    lopsided = SplitFiles(train.table, train.version, "train", train.files[:1], 4000, 4)
    assert len(flight_ids(lopsided, spec, rank=1, num_ranks=2, training=True, steps=20, shuffle_buffer=500)) == 2000


def test_batches_hold_the_model_inputs_with_their_dtypes(snapshot, spec):
    x, y = next(tensors.iter_batches(snapshot.splits["train"], spec, label="label", batch_size=64, steps=1))
    assert set(x) == set(spec.inputs)
    assert all(x[n].dtype == np.float32 and x[n].shape == (64, 1) for n in spec.numeric)
    assert all(x[n].dtype == np.int32 and x[n].shape == (64, 1) for n in spec.categorical)
    assert y.shape == (64, 1) and set(np.unique(y)) <= {0.0, 1.0}


def test_model_inputs_map_unknown_indices_to_zero(spec):
    cols = {n: np.array([1.0, np.nan]) for n in spec.numeric} | {"cat_carrier": np.array([9, 2]),
                                                                   "cat_origin": np.array([-1, 3])}
    x = tensors.model_inputs(cols, spec)
    assert x["cat_carrier"].ravel().tolist() == [0, 2] and x["cat_origin"].ravel().tolist() == [0, 3]
    assert x["num_distance"].ravel().tolist() == [1.0, 0.0]


def test_dataset_holds_the_requested_epochs_back_to_back(snapshot, spec, cfg):
    split = snapshot.splits["train"]
    cfg.training.batch_size, cfg.training.shuffle_buffer = 100, 1000
    ds = tensors.make_dataset(split, spec, cfg.training, label="label", rank=1, num_ranks=2,
                              first_epoch=1, epochs=3)
    assert sum(1 for _ in ds) == 2 * 20
    val = tensors.make_dataset(snapshot.splits["validation"], spec, cfg.training, label="label", training=False)
    assert sum(int(y.shape[0]) for _, y in val) == 1000


def test_a_fit_reads_its_epochs_with_one_reader_and_a_resumed_fit_reads_what_the_rest_of_it_would(
        snapshot, spec, cfg, monkeypatch):
    """One Petastorm reader per rank for the whole fit (each reader plans every file and row group
    again); the fit resumed after an epoch gets exactly the batches of the uninterrupted fit's
    later epochs."""
    split = snapshot.splits["train"]
    cfg.training.batch_size, cfg.training.shuffle_buffer = 100, 1000
    opened = []
    real_open = tensors._open_reader
    monkeypatch.setattr(tensors, "_open_reader", lambda *a, **k: opened.append(a) or real_open(*a, **k))

    def rows(first_epoch: int) -> list[list[int]]:
        # Reading the key as the label shows exactly which rows each batch holds.
        ds = tensors.make_dataset(split, spec, cfg.training, label="flight_id", rank=1, num_ranks=2,
                                  first_epoch=first_epoch, epochs=3)
        return [y.numpy().astype(np.int64).ravel().tolist() for _, y in ds]

    whole = rows(0)
    assert len(opened) == 1 and len(whole) == 3 * 20
    assert whole[:20] != whole[20:40]   # every epoch is shuffled anew
    assert rows(1) == whole[20:] and len(opened) == 2


def test_validation_batches_are_the_same_every_epoch_without_reading_again(snapshot, spec, cfg):
    """Keras expects every validation pass to have as many batches as the first: after the first
    pass the batches come from memory, identical, even with the files gone."""
    import os

    split = snapshot.splits["validation"]
    cfg.training.batch_size = 64
    val = tensors.make_dataset(split, spec, cfg.training, label="label", rank=1, num_ranks=2, training=False)
    first = [y.numpy().ravel().tolist() for _, y in val]
    paths = [f.removeprefix("file://") for f in split.files]
    for p in paths:
        os.rename(p, p + ".away")
    try:
        again = [y.numpy().ravel().tolist() for _, y in val]
    finally:
        for p in paths:
            os.rename(p + ".away", p)
    assert len(first) > 1 and again == first


def test_too_few_row_groups_for_the_ranks_is_a_clear_error(snapshot, spec):
    val = snapshot.splits["validation"]
    with pytest.raises(TensorInputError, match="2 Parquet row group.*3 ranks.*model_input_row_group_rows"):
        next(tensors.iter_batches(val, spec, label="label", batch_size=10, rank=0, num_ranks=3, training=False))
    with pytest.raises(TensorInputError, match="cannot give each of 2 rank"):
        tensors.steps_per_epoch(100, 64, 2)


def test_a_pinned_version_keeps_reading_its_own_files(lakehouse, snapshot):
    write_model_input(lakehouse, rows={"train": 1500, "validation": 500}, seed=11)
    assert tensors.pin_snapshot(lakehouse).splits["train"].rows == 1500
    again = tensors.pin_snapshot(lakehouse, version=snapshot.version)
    assert again.splits == snapshot.splits
    with pytest.raises(TensorInputError, match="no files for split 'test'"):
        tensors.pin_snapshot(lakehouse, splits=("test",))


def test_local_cache_copies_the_files_once(snapshot, spec, tmp_path):
    cached = tensors.cache_locally(snapshot.splits["validation"], str(tmp_path))
    assert all(f.startswith(f"file://{tmp_path}") for f in cached.files)
    assert sorted(flight_ids(cached, spec, training=False)) == list(range(4000, 5000))


def test_sequence_columns_reach_the_batches_as_fixed_length_float_arrays(spark, tmp_path):
    """Petastorm reads an array<float> column of model_input; every batch holds it as (n, days)."""
    from model_input_fixtures import SEQUENCES, model_input_rows

    lakehouse = model_input_lakehouse(spark, tmp_path / "lakehouse", rows={"train": 600, "validation": 200},
                                      row_group_rows=200, sequence_days=5)
    snap = tensors.pin_snapshot(lakehouse)
    spec = tensors.load_feature_spec(lakehouse, snap)
    assert spec.sequences == {name: 5 for name in SEQUENCES}
    x, _ = zip(*tensors.iter_batches(snap.splits["validation"], spec, label="label", batch_size=64, training=False))
    ids = np.concatenate([b["seq_route_late_rate"] for b in x])
    assert ids.shape == (200, 5) and ids.dtype == np.float32
    # The validation rows are the second block the fixture wrote (seed 8), in file order by flight id.
    want = np.stack(model_input_rows(200, 8, first_flight_id=600, sequence_days=5)["seq_route_late_rate"])
    np.testing.assert_array_equal(np.sort(ids, axis=0), np.sort(want, axis=0))
