"""What is on disk under the root: content-addressed blobs and one SQLite database."""

from ferryd.store.store import Store

__all__ = ["Store"]
