"""The SQLite ledger: schema, migrations, ingest of job events, and every SQL query pisweep runs."""
