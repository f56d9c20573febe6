"""The service manager's use cases, each in a module of its own, over the ports in
`ports.py` (storage, presence, the billing manager, the rating service)."""
