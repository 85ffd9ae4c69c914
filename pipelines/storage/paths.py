"""Paths and URIs of table files: one home for turning one into the other."""
from __future__ import annotations

import os
from urllib.parse import unquote


def local_path(uri: str) -> str:
    """A `file://` or `file:` URI (as delta-rs and Spark's binaryFile give them) as a local path."""
    for prefix in ("file://", "file:"):
        if uri.startswith(prefix):
            return uri[len(prefix):]
    return uri


def file_uri(root: str, path: str) -> str:
    """The absolute URI of a data file named in the Delta log (relative and URL-quoted there)."""
    if "://" in path:
        return path
    uri = f"{root.rstrip('/')}/{unquote(path)}" if not os.path.isabs(path) else path
    return uri if "://" in uri else f"file://{uri}"
