"""spark-submit entry point of a backfill: the nightly job for every date of a range, in order.

    spark-submit ... jobs/backfill.py --env cluster --from 2013-12-01 --to 2013-12-07
"""
import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["backfill", *sys.argv[1:]]))
