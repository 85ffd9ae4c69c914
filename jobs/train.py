"""spark-submit entry point of one stage, `lakehouse-dl train`.

    spark-submit ... jobs/train.py --env cluster --date 2013-12-30
"""
import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
