"""``evaluation``: a trained run scored on its held-out shard, with the collages."""

from pathlib import Path

import dagster as dg

from pipeline.defs.errors import user_errors
from pipeline.defs.keys import GPU_POOL, asset_key, group_name
from pipeline.defs.metadata import to_metadata
from pipeline.defs.resources import TagcolorStorage
from pipeline.sources.base import DatasetSpec


class EvaluationConfig(dg.Config):
    """Which run to score (empty: the run the colorizer last trained) and on how many held-out photos."""

    run_name: str = ""
    n_images: int = 256
    collage_rows: int = 8
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"


def last_trained_run(instance: dg.DagsterInstance, colorizer_key: dg.AssetKey) -> Path | None:
    """The ``run_dir`` the latest ``colorizer`` materialization reported, so automation scores that run."""
    event = instance.get_latest_materialization_event(colorizer_key)
    reported = event.asset_materialization.metadata.get("run_dir") if event and event.asset_materialization else None
    return Path(str(reported.value)) if reported is not None else None


def evaluation_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    colorizer_key = asset_key(spec, "colorizer")

    @dg.asset(
        key=asset_key(spec, "evaluation"),
        group_name=group_name(spec),
        deps=[colorizer_key, asset_key(spec, "lab_shards"), asset_key(spec, "tag_tokens")],
        kinds={"pytorch", "png"},
        pool=GPU_POOL,
        automation_condition=dg.AutomationCondition.eager().allow(dg.AssetSelection.assets(colorizer_key)),
        description="Held-out metrics with a tag ablation (true / no / shuffled tags), baselines and the collage.",
    )
    def evaluation(
        context: dg.AssetExecutionContext, config: EvaluationConfig, storage: TagcolorStorage
    ) -> dg.MaterializeResult:
        from model.evaluation import evaluate_run  # torch is loaded by this step only, not by the definitions

        with user_errors():
            paths = storage.paths(spec.name)
            named = paths.runs / config.run_name if config.run_name else None
            run_dir = named or last_trained_run(context.instance, colorizer_key) or paths.latest_run()
            if run_dir is None:
                raise dg.Failure(f"no run under {paths.runs}: materialize {spec.name}/colorizer first")
            result = evaluate_run(paths, paths.inside(run_dir), **config.model_dump(exclude={"run_name"}))
            return dg.MaterializeResult(metadata=to_metadata(result.metadata))

    return [evaluation]
