"""The service database (gateways, sessions, service records) and presence in Redis."""
