"""``evaluation``: a trained run, this dataset's or any other's, scored on this dataset, with the collages.

The asset and ``python -m pipeline.commands.evaluate`` (no Dagster) call one entry point,
:func:`pipeline.commands.evaluate.score`.
"""

from pathlib import Path
from typing import Literal

import dagster as dg

from pipeline.commands.evaluate import ScoringOptions, named_run, score
from pipeline.defs.errors import user_errors
from pipeline.defs.keys import GPU_POOL, asset_key, group_name
from pipeline.defs.metadata import check_result, to_metadata
from pipeline.defs.resources import TagcolorStorage
from pipeline.sources.base import DatasetSpec

DEFAULTS = ScoringOptions()


class EvaluationConfig(dg.Config):
    """Which run to score on which photos of this dataset, and how (:class:`ScoringOptions`, whose defaults these are).

    ``run``: ``<run_name>`` of this dataset or ``<dataset>/<run_name>`` of another; empty:
    the run this dataset's colorizer last trained. ``split``: ``holdout`` (the held-out shard, ``n_images``
    of it) or ``all`` (every original file of a folder dataset, cropped and resized per ``crop``/``size``,
    the first ``first_n`` by file name). ``steering``: tag sets for the steering collage (empty: the
    dataset's ``steering_tags``, else sunset / snow / forest / sea). ``device``: ``auto`` takes the GPU if
    there is one.
    """

    run: str = DEFAULTS.run
    split: Literal["holdout", "all"] = "holdout"
    crop: Literal["center", "resize"] = "center"
    size: int = DEFAULTS.size
    first_n: int | None = DEFAULTS.first_n
    n_images: int | None = DEFAULTS.n_images
    collage_rows: int = DEFAULTS.collage_rows
    steering: list[str] = []
    steering_rows: int = DEFAULTS.steering_rows
    seed: int = DEFAULTS.seed
    batch_size: int = DEFAULTS.batch_size
    device: str = DEFAULTS.device


def last_trained_run(instance: dg.DagsterInstance, colorizer_key: dg.AssetKey) -> Path | None:
    """The ``run_dir`` the latest ``colorizer`` materialization reported, so automation scores that run."""
    event = instance.get_latest_materialization_event(colorizer_key)
    reported = event.asset_materialization.metadata.get("run_dir") if event and event.asset_materialization else None
    return Path(str(reported.value)) if reported is not None else None


def evaluation_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    colorizer_key, evaluation_key = asset_key(spec, "colorizer"), asset_key(spec, "evaluation")

    @dg.asset(
        key=evaluation_key,
        group_name=group_name(spec),
        deps=[colorizer_key, asset_key(spec, "lab_shards"), asset_key(spec, "tag_tokens")],
        kinds={"pytorch", "png"},
        pool=GPU_POOL,
        automation_condition=dg.AutomationCondition.eager().allow(dg.AssetSelection.assets(colorizer_key)),
        check_specs=[
            dg.AssetCheckSpec(
                "beats_grey",
                asset=evaluation_key,
                description="With their true tags the photos come out no worse than left grey: ab error not above "
                "the grey baseline's, PSNR no more than 0.5 dB below it.",
            )
        ],
        description="FID, ΔCF, PSNR, SSIM, hue and ab error under true / no / shuffled tags, baselines and the "
        "collages (results, best, tag steering); any run, held-out shard or whole folder under a protocol.",
    )
    def evaluation(
        context: dg.AssetExecutionContext, config: EvaluationConfig, storage: TagcolorStorage
    ) -> dg.MaterializeResult:
        with user_errors():
            paths = storage.paths(spec.name)
            if config.run:  # any dataset's run, but one under the data directory
                run_dir = named_run(storage.plain, spec.name, config.run)
            else:
                run_dir = last_trained_run(context.instance, colorizer_key) or paths.latest_run()
                if run_dir is None:
                    raise dg.Failure(f"no run under {paths.runs}: materialize {spec.name}/colorizer first")
                run_dir = paths.inside(run_dir)
            result = score(storage.resolve(spec), paths, run_dir, ScoringOptions(**config.model_dump()))
            against = {key: result.figures[key] for key in ("ab_error/tags", "ab_error/grey", "psnr/tags", "psnr/grey")}
            return dg.MaterializeResult(
                metadata=to_metadata(result.metadata),
                check_results=[check_result(result.beats_grey, "beats_grey", against)],  # severity ERROR
            )

    return [evaluation]
