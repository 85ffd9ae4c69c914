"""Datasets by declaration: the contract of `conf/base/datasets/<name>.yaml` (sources, schemas,
rules, missing-value policies) and each dataset's features module (`features/<name>.py`).

    >>> from pipelines.datasets import load_dataset
    >>> load_dataset("nycflights13").source("flights").daily
    True
"""
from pipelines.catalog import PARTITION_COLUMN
from pipelines.datasets.dataset import Column, CsvOptions, Dataset, MissingPolicy, Rule, Source
from pipelines.datasets.loader import dataset_for, dataset_path, load_dataset

__all__ = ["Dataset", "Source", "Column", "CsvOptions", "Rule", "MissingPolicy", "PARTITION_COLUMN",
           "load_dataset", "dataset_for", "dataset_path"]
