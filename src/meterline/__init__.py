"""Meterline."""
