"""Prefect flows: compositions of tasks, no stage logic of their own."""
