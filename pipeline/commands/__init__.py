"""Command lines over the dataset kinds and the model together, without Dagster (docs/ARCHITECTURE.md)."""
