"""``python -m liveswap.config`` prints the options table of docs/configuration.md."""

from .options import docs_table

print(docs_table())
