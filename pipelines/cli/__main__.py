"""`python -m pipelines.cli ...` is `lakehouse-dl ...`."""
import sys

from pipelines.cli.main import main

sys.exit(main())
