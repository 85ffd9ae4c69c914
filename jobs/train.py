"""spark-submit entry point of one stage, `lakehouse-dl train`.

    spark-submit ... jobs/train.py --env cluster --table-version 12   # default: the latest version
"""
import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
