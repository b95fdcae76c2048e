"""Airflow hooks of the KT Export provider."""
