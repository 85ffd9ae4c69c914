"""Errors of the table layer; each message says which table and what to do."""


class LakehouseError(RuntimeError):
    """Base class of the table layer's errors."""


class TableNotFoundError(LakehouseError):
    """No Delta table at the path."""


class SchemaMismatchError(LakehouseError):
    """The data written does not have the table's schema."""


class ConcurrentWriteError(LakehouseError):
    """Another writer committed a conflicting change first; nothing of this write was committed."""


class LayoutMismatchError(LakehouseError):
    """The table on disk is partitioned otherwise than its declared layout asks for."""
