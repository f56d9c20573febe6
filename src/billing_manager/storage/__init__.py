"""The account database: schema, migrations and the ledger store."""
