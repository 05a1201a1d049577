"""The Dagster layer: definitions, the asset factory, resources, checks, schedules and sensors.

The only code that imports Dagster; every asset calls one plain function of the layers below
(docs/ARCHITECTURE.md).
"""
