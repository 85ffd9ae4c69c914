"""Flows: the jobs a scheduler runs, as a list of stages (`nightly`: one date; `run_backfill`:
a range of dates), with the lock, resume and the run record."""
