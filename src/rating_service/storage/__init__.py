"""The rating database (tariffs): schema, migrations and the tariff store."""
