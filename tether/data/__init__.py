"""Data ingest and validation: raw files in any supported layout -> canonical tables -> validated or quarantined."""
