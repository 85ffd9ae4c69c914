"""The model's inputs, one way for every caller: which columns of `gold.model_input` the model
reads (`FeatureSpec`) and how a batch of those columns becomes its tensors (`model_inputs`).

Training (Petastorm batches), scoring (pandas frames in Spark tasks), baselines and notebooks all
go through `model_inputs`, so they feed the model the same arrays: numeric columns as float32 with
NaN read as 0, categorical columns as int32 indices with anything outside the vocabulary read as
0 (the out-of-vocabulary index the features stage also writes for unseen values), sequence columns
(`seq_*`, fixed-length arrays of daily values) as (n, length) float32 with NaN read as 0.

    >>> spec = feature_spec_from_rows(spec_rows, columns)      # from gold.feature_spec
    >>> spec = spec_of_model(model)                            # or from a saved model itself
    >>> x = model_inputs(frame, spec)                          # {name: (n, 1) array}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from pipelines.catalog import FEATURE_SPEC

NUMERIC_PREFIX = "num_"
CATEGORICAL_PREFIX = "cat_"
SEQUENCE_PREFIX = "seq_"


class TensorInputError(ValueError):
    """The pinned snapshot cannot feed training as asked; the message says what to change."""


@dataclass(frozen=True)
class FeatureSpec:
    """The model's inputs: numeric columns, categorical columns with their embedding sizes and
    sequence columns with their lengths (none unless the features declare them)."""

    numeric: tuple[str, ...]
    categorical: dict[str, int]
    version: int | None = None
    sequences: dict[str, int] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical, *self.sequences)

    def to_dict(self) -> dict:
        return {"numeric": list(self.numeric), "categorical": dict(self.categorical), "version": self.version,
                "sequences": dict(self.sequences)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "FeatureSpec":
        return cls(tuple(data["numeric"]), {k: int(v) for k, v in data["categorical"].items()}, data.get("version"),
                   {k: int(v) for k, v in (data.get("sequences") or {}).items()})


def feature_spec_from_rows(rows: list[Mapping], columns: tuple[str, ...] | list[str], version: int | None = None,
                           categorical_max: Mapping[str, int] | None = None) -> FeatureSpec:
    """Model inputs: the table's num_*, cat_* and seq_* columns; each cat_* column's embedding size comes
    from its feature-spec row (`vocab_size`, or the vocabulary plus the out-of-vocabulary index 0),
    each seq_* column's length from its row's `vocab_size` (the sequence's days).

    A spec row may name the column (`cat_carrier`) or the feature (`carrier`).
    """
    by_name: dict[str, Mapping] = {}
    for row in rows:
        by_name[row["name"]] = row
        by_name.setdefault(CATEGORICAL_PREFIX + row["name"], row)
    numeric = tuple(c for c in columns if c.startswith(NUMERIC_PREFIX))
    categorical: dict[str, int] = {}
    for column in (c for c in columns if c.startswith(CATEGORICAL_PREFIX)):
        row = by_name.get(column)
        if row is None:
            raise TensorInputError(f"model input column {column} has no row in {FEATURE_SPEC}, so its vocabulary size is unknown")
        vocabulary = row.get("vocabulary") or []
        # Index 0 means out of vocabulary, so a vocabulary of n words needs n + 1 embedding rows;
        # taking the larger reading of vocab_size is safe whichever convention the spec follows.
        size = max(int(row.get("vocab_size") or 0), len(vocabulary) + 1)
        seen = (categorical_max or {}).get(column)
        if seen is not None and seen >= size:
            raise TensorInputError(f"{column} holds index {seen} but {FEATURE_SPEC} v{version} gives it {size} values; "
                                   "the feature spec and model_input versions do not belong together")
        categorical[column] = size
    sequences: dict[str, int] = {}
    for column in (c for c in columns if c.startswith(SEQUENCE_PREFIX)):
        row = by_name.get(column)
        if row is None or not row.get("vocab_size"):
            raise TensorInputError(f"model input column {column} has no row with its length in {FEATURE_SPEC}")
        sequences[column] = int(row["vocab_size"])
    if not numeric and not categorical:
        raise TensorInputError(f"no num_* or cat_* columns among {', '.join(columns)}")
    return FeatureSpec(numeric, categorical, version, sequences)


def spec_of_model(model) -> FeatureSpec:
    """The spec a built or saved model was made for, read off the model: its float inputs are the
    numeric columns (seq_* ones the sequences, sized by their shape), its int inputs the
    categorical ones, sized by their embedding layers."""
    numeric, categorical, sequences = [], {}, {}
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        if tensor.dtype.is_integer:
            categorical[name] = int(model.get_layer(f"{name}_embedding").input_dim)
        elif name.startswith(SEQUENCE_PREFIX):
            sequences[name] = int(tensor.shape[-1])
        else:
            numeric.append(name)
    return FeatureSpec(tuple(numeric), categorical, None, sequences)


def model_inputs(columns: Mapping, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """The model's named inputs from columns of model_input rows (a dict of arrays or a pandas
    frame): (n, 1) float32 / int32 arrays, and (n, length) float32 arrays for the sequences.

    Numeric NaN (a null) reads as 0, the training mean after standardisation. Categorical indices
    outside the model's vocabulary (negative, or beyond it: a newer spec's values) read as 0, the
    out-of-vocabulary index.
    """
    out: dict[str, np.ndarray] = {}
    for name in spec.numeric:
        out[name] = np.nan_to_num(np.asarray(columns[name], dtype=np.float32)).reshape(-1, 1)
    for name, size in spec.categorical.items():
        values = np.asarray(columns[name], dtype=np.int64).reshape(-1, 1)
        out[name] = np.where((values < 0) | (values >= size), 0, values).astype(np.int32)
    for name, length in spec.sequences.items():
        out[name] = _sequence(columns[name], name, length)
    return out


def _sequence(values, name: str, length: int) -> np.ndarray:
    """(n, length) float32 from a 2-D array or a column of arrays (a null array reads as zeros)."""
    array = np.asarray(values)
    if array.dtype == object:
        rows = [np.zeros(length, np.float32) if v is None else np.asarray(v, dtype=np.float32) for v in array]
        array = np.stack(rows) if rows else np.zeros((0, length), np.float32)
    array = np.nan_to_num(array.astype(np.float32, copy=False))
    if array.ndim != 2 or array.shape[1] != length:
        raise TensorInputError(f"{name} holds arrays of shape {array.shape[1:]}, the model expects {length} values per row")
    return array
