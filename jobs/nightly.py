"""spark-submit entry point of the nightly job.

    spark-submit --master spark://HOST:7077 --py-files dist/lakehouse_dl-0.1.0.zip \
        jobs/nightly.py --env cluster --date 2013-12-30
"""
import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
