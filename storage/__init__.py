"""LiveDPO storage: one SQLite DB (WAL) behind ``Store``; import/export in storage.io.

Imports neither torch nor gradio nor transformers.
"""

from storage.db import Store
from storage.errors import BadChoice, BadInput, ImportFailed, StoreError, UnknownPair

__all__ = ["Store", "StoreError", "UnknownPair", "BadChoice", "BadInput", "ImportFailed"]
