"""Prefect tasks: thin wrappers, each calling one function of the `tether` package."""
