"""Pure unit tests of the domain modules: no I/O, no database, no network."""
