"""Triggers of the KT Export provider."""
