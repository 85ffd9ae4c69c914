"""Benchmarks of lakehouse-dl: scripts, not tests (`make bench`, or `python -m bench.<name>`).

Each script prints its figures and the ratios measured in the same run and writes
bench/results/<name>.json with the machine it ran on; `python -m bench.run_all` runs them all.
"""
