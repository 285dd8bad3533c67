"""What stays: the hash-chained SQLite ledger, its head anchor, the watchlist and the export with provenance."""
