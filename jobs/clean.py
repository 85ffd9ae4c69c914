"""spark-submit entry point of one stage, `lakehouse-dl clean`.

    spark-submit ... jobs/clean.py --env cluster --date 2013-12-30
"""
import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["clean", *sys.argv[1:]]))
