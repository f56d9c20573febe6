"""The service manager: starts services, meters them over a bidirectional stream,
terminates them and writes service records (meterline.service.v1.ServiceManager)."""
