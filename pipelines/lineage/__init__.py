"""Lineage: every row back to the raw line it came from, every model to the table versions it read.

`columns` names the provenance columns each layer carries; `pins` walks the table versions a table
version was built from (what the model registry pins); `trace` walks one row back to its landing file.
"""
