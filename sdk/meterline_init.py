"""Meterline's wire contract: the generated protobuf modules, as the device SDK ships them."""
