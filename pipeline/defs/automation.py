"""Jobs, schedules and the automation sensor: what runs without anyone asking."""

import dagster as dg
import yaml

from pipeline.core.config import ConfigError
from pipeline.datasets import CONFIG_DIR, identifier
from pipeline.defs.keys import asset_key
from pipeline.sources.base import DatasetSpec

SCHEDULE_KEYS = {"training_cron", "stats_cron"}


def load_schedule_crons() -> dict[str, str]:
    """Cron strings of the schedules from ``assets_config/schedules.yaml``."""
    raw = yaml.safe_load((CONFIG_DIR / "schedules.yaml").read_text()) or {}
    unknown = set(raw) - SCHEDULE_KEYS
    if unknown or not all(isinstance(raw.get(key), str) for key in SCHEDULE_KEYS):
        raise ConfigError(f"schedules.yaml: expected string keys {sorted(SCHEDULE_KEYS)}, got {raw}")
    return raw


def dataset_automation(spec: DatasetSpec, crons: dict[str, str]) -> tuple[list, list[dg.ScheduleDefinition]]:
    """A training+evaluation job and a stats job for one dataset, each on its schedule."""
    name = identifier(spec.name)
    training = dg.define_asset_job(
        f"{name}_training",
        selection=dg.AssetSelection.assets(asset_key(spec, "colorizer"), asset_key(spec, "evaluation")),
        tags={"tagcolor/dataset": spec.name, "tagcolor/gpu": "true"},
    )
    stats = dg.define_asset_job(
        f"{name}_stats",
        selection=dg.AssetSelection.assets(asset_key(spec, "data_stats")),
        tags={"tagcolor/dataset": spec.name},
    )
    schedules = [
        dg.ScheduleDefinition(name=f"{name}_weekly_training", job=training, cron_schedule=crons["training_cron"]),
        dg.ScheduleDefinition(name=f"{name}_stats_refresh", job=stats, cron_schedule=crons["stats_cron"]),
    ]
    return [training, stats], schedules


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates every asset's automation condition (stats follow the data, evaluation the colorizer)."""
    return dg.AutomationConditionSensorDefinition(
        "tagcolor_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        run_tags={"tagcolor/trigger": "automation"},
    )
