"""The tagcolor code location: one asset graph per dataset, resources, jobs, schedules and the sensor."""

import dagster as dg

from pipeline.datasets import load_dataset_specs
from pipeline.defs.automation import automation_sensor, dataset_automation, load_schedule_crons
from pipeline.defs.factory import build_dataset_assets
from pipeline.defs.resources import storage_from_environ
from pipeline.storage import dataset_dirs_from_environ


def build_definitions() -> dg.Definitions:
    crons = load_schedule_crons()
    storage = storage_from_environ()
    assets, jobs, schedules = [], [], []
    for spec in load_dataset_specs(dataset_dirs_from_environ()).values():
        assets += build_dataset_assets(storage.resolve(spec))
        dataset_jobs, dataset_schedules = dataset_automation(spec, crons)
        jobs += dataset_jobs
        schedules += dataset_schedules
    return dg.Definitions(
        assets=[a for a in assets if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[a for a in assets if isinstance(a, dg.AssetChecksDefinition)],
        jobs=jobs,
        schedules=schedules,
        sensors=[automation_sensor()],
        resources={"storage": storage, "pipes": dg.PipesSubprocessClient()},
    )


defs = build_definitions()
