"""The core: what both the pipeline and the model read, defined once; imports neither Dagster nor torch."""
