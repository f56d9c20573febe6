"""Meterline kernel."""
