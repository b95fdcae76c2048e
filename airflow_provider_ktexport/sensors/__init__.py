"""Sensors of the KT Export provider."""
