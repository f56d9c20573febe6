"""The `meterline` command line: run the stack, operate accounts, tariffs and sessions."""

import os

# gRPC's core logs each failed TLS handshake on stderr at its default verbosity; the CLI
# reports a failure in one line of its own. Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
