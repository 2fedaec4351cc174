"""Prefect flows: thin wiring of the components into tasks and flows (no logic of their own)."""
