"""The tagcolor code location: one asset graph per dataset, resources, jobs and schedules."""

from __future__ import annotations

import dagster as dg
import yaml

from pipeline.core.config import ConfigError
from pipeline.datasets import CONFIG_DIR, DATASETS, load_dataset_spec
from pipeline.factory import build_dataset_assets
from pipeline.resources import storage_from_environ

SCHEDULE_KEYS = {"training_cron", "stats_cron"}


def load_schedule_crons() -> dict[str, str]:
    """Cron strings of the schedules from ``assets_config/schedules.yaml``."""
    raw = yaml.safe_load((CONFIG_DIR / "schedules.yaml").read_text()) or {}
    unknown = set(raw) - SCHEDULE_KEYS
    if unknown or not all(isinstance(raw.get(key), str) for key in SCHEDULE_KEYS):
        raise ConfigError(f"schedules.yaml: expected string keys {sorted(SCHEDULE_KEYS)}, got {raw}")
    return raw


def dataset_automation(dataset: str, crons: dict[str, str]) -> tuple[list, list]:
    """A training+evaluation job and a stats job for one dataset, each on its schedule."""
    training = dg.define_asset_job(
        f"{dataset}_training",
        selection=dg.AssetSelection.assets([dataset, "colorizer"], [dataset, "evaluation"]),
        tags={"tagcolor/dataset": dataset, "tagcolor/gpu": "true"},
    )
    stats = dg.define_asset_job(
        f"{dataset}_stats",
        selection=dg.AssetSelection.assets([dataset, "data_stats"]),
        tags={"tagcolor/dataset": dataset},
    )
    schedules = [
        dg.ScheduleDefinition(name=f"{dataset}_weekly_training", job=training, cron_schedule=crons["training_cron"]),
        dg.ScheduleDefinition(name=f"{dataset}_stats_refresh", job=stats, cron_schedule=crons["stats_cron"]),
    ]
    return [training, stats], schedules


def build_definitions() -> dg.Definitions:
    crons = load_schedule_crons()
    assets, jobs, schedules = [], [], []
    for dataset in DATASETS:
        assets += build_dataset_assets(load_dataset_spec(dataset))
        dataset_jobs, dataset_schedules = dataset_automation(dataset, crons)
        jobs += dataset_jobs
        schedules += dataset_schedules
    return dg.Definitions(
        assets=[a for a in assets if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[a for a in assets if isinstance(a, dg.AssetChecksDefinition)],
        jobs=jobs,
        schedules=schedules,
        sensors=[
            dg.AutomationConditionSensorDefinition(
                "tagcolor_automation",
                target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING,
                run_tags={"tagcolor/trigger": "automation"},
            )
        ],
        resources={"storage": storage_from_environ(), "pipes": dg.PipesSubprocessClient()},
    )


defs = build_definitions()
