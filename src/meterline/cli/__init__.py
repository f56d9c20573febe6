"""The `meterline` command line: run the stack, operate accounts, tariffs and sessions."""
