"""spark-submit entry point of one stage, `lakehouse-dl features`.

    spark-submit ... jobs/features.py --env cluster --date 2013-12-30
"""
import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
