"""One asset graph per dataset: archives → shards and tokens → stats → colorizer → evaluation."""

import os
import sys
import time
import zipfile
from pathlib import Path

import dagster as dg
import numpy as np

from pipeline import metadata
from pipeline.convert import convert_shards
from pipeline.core.contract import PAD_ID, TOKENS_PER_IMAGE, token_problems
from pipeline.core.layout import alignment_problems, shard_problems
from pipeline.core.render import preview_markdown
from pipeline.core.vocabulary import load_tag_encoding
from pipeline.datasets import CONFIG_DIR, DatasetSpec
from pipeline.resources import TagcolorStorage
from pipeline.sources import download, sample
from pipeline.stats import compute_data_stats
from pipeline.tokens import build_tag_tokens

REPO_ROOT = CONFIG_DIR.parent
DEFAULT_TRAIN_CONFIG = {"sample": "sample_demo", "mirflickr25k": "mirflickr25k_1gpu", "mirflickr1m": "mirflickr1m_1gpu"}
GPU_POOL = "tagcolor-gpu"


class ShardsConfig(dg.Config):
    """How many processes convert shards in one run (0: one per core)."""

    workers: int = 0


class StatsConfig(dg.Config):
    """How many processes stream the shards' histograms (0: one per core)."""

    workers: int = 0


class ColorizerConfig(dg.Config):
    """Which training configuration to run: a name under ``assets_config/train`` or a path.

    Empty means the dataset's default (``DEFAULT_TRAIN_CONFIG``); ``run_name`` empty means the dataset's name.
    """

    train_config: str = ""
    run_name: str = ""
    overrides: list[str] = []
    gpus: int = 1


class EvaluationConfig(dg.Config):
    """Which run to score (empty: the run the colorizer last trained) and on how many held-out photos."""

    run_name: str = ""
    n_images: int = 256
    collage_rows: int = 8
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"


def train_config_path(name: str) -> Path:
    """Resolve a training configuration name (``ci``) or path to an existing YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIG_DIR / "train" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (CONFIG_DIR / "train").glob("*.yaml"))
        raise dg.Failure(f"train_config {name!r}: no such file {path}; available: {available}")
    return path


def training_command(config: ColorizerConfig, data_root: Path, run_name: str) -> list[str]:
    """``python -m model.train`` for one process, ``torchrun`` for several GPUs."""
    if config.gpus < 0:
        raise dg.Failure(f"gpus must be ≥ 0, got {config.gpus}")
    launcher = [sys.executable, "-m", "model.train"]
    if config.gpus > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={config.gpus}",
            "-m",
            "model.train",
        ]
    return [
        *launcher,
        "--config",
        str(train_config_path(config.train_config)),
        f"data_root={data_root}",
        f"run_name={run_name}",
        *config.overrides,
    ]


def build_dataset_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """The asset graph of one dataset, keys prefixed and grouped by the dataset's name."""
    prefix = [spec.name]
    group = spec.name
    archive_partitions = dg.StaticPartitionsDefinition(spec.archives())
    shard_partitions = dg.StaticPartitionsDefinition(spec.shard_keys())
    archives_key = dg.AssetKey([*prefix, "archives"])
    tags_key = dg.AssetKey([*prefix, "tags_archive"])
    shards_key = dg.AssetKey([*prefix, "lab_shards"])
    tokens_key = dg.AssetKey([*prefix, "tag_tokens"])
    stats_key = dg.AssetKey([*prefix, "data_stats"])
    colorizer_key = dg.AssetKey([*prefix, "colorizer"])

    def obtain(storage: TagcolorStorage, archive: str, log: dg.DagsterLogManager) -> dict:
        dest = storage.paths(spec.name).archive(archive)
        if spec.sample is not None:
            start = time.perf_counter()
            if archive == spec.layout.tags_archive:
                count = sample.write_tags_archive(spec, dest)
            else:
                count = sample.write_image_archive(spec, archive, dest)
            md5 = download.verify_archive(dest, None)
            return {
                "path": str(dest),
                "members": count,
                "size_bytes": dest.stat().st_size,
                "md5": md5,
                "duration_s": time.perf_counter() - start,
            }
        url = download.archive_url(storage.base_url(spec), spec.layout.filename(archive))
        result = download.fetch_archive(
            url, dest, md5=spec.md5.get(archive), progress=metadata.byte_progress_logger(log, archive)
        )
        return {
            "path": str(result.path),
            "url": url,
            "size_bytes": result.size_bytes,
            "md5": result.md5,
            "md5_published": spec.md5.get(archive, ""),
            "duration_s": result.duration_s,
            "bytes_fetched": result.bytes_fetched,
            "fetched": result.fetched,
        }

    @dg.asset(
        key=archives_key,
        group_name=group,
        partitions_def=archive_partitions,
        kinds={"zip"},
        description=f"{spec.name} image archives, downloaded (or generated) and verified.",
    )
    def archives(context: dg.AssetExecutionContext, storage: TagcolorStorage) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=obtain(storage, context.partition_key, context.log))

    if spec.layout.tags_archive in spec.archives():

        @dg.asset(
            key=tags_key,
            group_name=group,
            deps=[archives_key],
            description="Tag files: they live inside the image archive, so this checks they are there.",
        )
        def tags_archive(storage: TagcolorStorage) -> dg.MaterializeResult:
            path = storage.paths(spec.name).archive(spec.layout.tags_archive)
            if not path.is_file():
                raise dg.Failure(f"{path} not found: materialize {spec.name}/archives first")
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
            found = sum(spec.layout.tag_member(i) in names for i in range(spec.n_images))
            if not found:
                raise dg.Failure(f"{path} holds none of the {spec.n_images:,} tag files of the layout")
            return dg.MaterializeResult(metadata={"path": str(path), "tag_files": found, "images": spec.n_images})

    else:

        @dg.asset(key=tags_key, group_name=group, kinds={"zip"}, description="tags.zip, verified.")
        def tags_archive(context: dg.AssetExecutionContext, storage: TagcolorStorage) -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata=obtain(storage, spec.layout.tags_archive, context.log))

    @dg.asset(
        key=shards_key,
        group_name=group,
        partitions_def=shard_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[
            dg.AssetDep(archives_key, partition_mapping=dg.StaticPartitionMapping(spec.shards_by_archive())),
            tags_key,
        ],
        kinds={"numpy"},
        check_specs=[
            dg.AssetCheckSpec(
                "shard_contract",
                asset=shards_key,
                description="Each shard's shape and dtype, and its images.parquet rows are its image ids in order.",
            )
        ],
        description=f"Lab {spec.image_size}² uint8 shards of {spec.shard_size} images and images.parquet rows.",
    )
    def lab_shards(
        context: dg.AssetExecutionContext, config: ShardsConfig, storage: TagcolorStorage
    ) -> dg.MaterializeResult:
        paths = storage.paths(spec.name)
        shards = [int(key) for key in context.partition_keys]
        context.log.info(f"converting shards {context.partition_keys} with {config.workers or 'all'} workers")

        def progress(result: object) -> None:
            context.log.info(
                f"shard {result.shard:03d}: {result.n_valid}/{result.n_images} valid in {result.seconds:.1f} s"
            )

        results = convert_shards(
            spec, paths, shards, storage.vocabulary_dir, workers=config.workers or None, progress=progress
        )
        problems = [
            problem
            for result in results
            for problem in shard_problems(paths, result.shard, spec.shard_ids(result.shard), spec.image_size)
        ]
        reasons: dict[str, int] = {}
        for result in results:
            for reason, count in result.reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
        n_images = sum(r.n_images for r in results)
        return dg.MaterializeResult(
            metadata={
                "shards": ", ".join(f"{r.shard:03d}" for r in results),
                "images": n_images,
                "valid": sum(r.n_valid for r in results),
                "grayscale": sum(r.n_grayscale for r in results),
                "images_per_s": n_images / max(sum(r.seconds for r in results), 1e-9),
                **{f"count/{reason}": count for reason, count in sorted(reasons.items())},
                "path": str(paths.shards),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="shard_contract",
                    passed=not problems,
                    metadata={"problems": "; ".join(problems) or "none"},
                )
            ],
        )

    @dg.asset(
        key=tokens_key,
        group_name=group,
        deps=[tags_key],
        kinds={"numpy"},
        description=f"tokens.npy: int32 (N, {TOKENS_PER_IMAGE}) o200k_base ids padded with {PAD_ID}.",
    )
    def tag_tokens(context: dg.AssetExecutionContext, storage: TagcolorStorage) -> dg.MaterializeResult:
        paths = storage.paths(spec.name)
        encoding = load_tag_encoding(storage.vocabulary_dir)
        result = build_tag_tokens(
            spec, paths, encoding, progress=lambda done, total: context.log.info(f"tags {done:,}/{total:,}")
        )
        return dg.MaterializeResult(
            metadata={
                "path": str(paths.tokens),
                "images": result.n_images,
                "missing_tag_files": result.missing,
                "invalid_utf8": result.invalid_utf8,
                "unreadable_tag_files": result.unreadable,
                "without_tags": result.empty,
                "truncated": result.truncated,
                "unsafe_members": result.unsafe_members,
                "distinct_tokens": result.distinct_tokens,
                "seconds": result.seconds,
            }
        )

    @dg.asset_check(asset=tokens_key, description="Token ids lie in [0, pad] and pads only trail.")
    def tokens_in_range(storage: TagcolorStorage) -> dg.AssetCheckResult:
        problems = token_problems(np.load(storage.paths(spec.name).tokens, mmap_mode="r"))
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": problems or "none"})

    @dg.asset(
        key=stats_key,
        group_name=group,
        deps=[shards_key, tokens_key],
        kinds={"parquet", "markdown"},
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[
            dg.AssetCheckSpec(
                "tokens_align_with_images",
                asset=stats_key,
                description="images.parquet and tokens.npy both hold the dataset's images once each, in id order.",
            )
        ],
        description="Token, tag and Lab statistics: Parquet tables, data_stats.md and plots.",
    )
    def data_stats(config: StatsConfig, storage: TagcolorStorage) -> dg.MaterializeResult:
        paths = storage.paths(spec.name)
        encoding = load_tag_encoding(storage.vocabulary_dir)
        result = compute_data_stats(
            paths,
            spec.n_shards,
            lambda i: encoding.decode_single_token_bytes(i).decode("utf-8", "backslashreplace"),
            workers=config.workers or os.cpu_count() or 1,
        )
        report = result.report_path.read_text()
        problems = alignment_problems(paths, spec.n_images)
        return dg.MaterializeResult(
            check_results=[
                dg.AssetCheckResult(
                    check_name="tokens_align_with_images",
                    passed=not problems,
                    metadata={"problems": problems or "none"},
                )
            ],
            metadata={
                "report": dg.MetadataValue.path(str(result.report_path)),
                "preview": dg.MetadataValue.md(report[:20_000]),
                **metadata.numbers(result.figures),
                **{f"table/{name}": metadata.table(df) for name, df in result.tables.items()},
                "seconds": result.seconds,
                "gb_scanned": result.bytes_scanned / 1e9,
            },
        )

    @dg.asset(
        key=colorizer_key,
        group_name=group,
        deps=[shards_key, tokens_key],
        kinds={"pytorch"},
        pool=GPU_POOL,
        description="The tag-conditioned cWGAN-GP, trained in its own process (torchrun for several GPUs).",
    )
    def colorizer(
        context: dg.AssetExecutionContext,
        config: ColorizerConfig,
        storage: TagcolorStorage,
        pipes: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        if not config.train_config:
            config = config.model_copy(update={"train_config": DEFAULT_TRAIN_CONFIG[spec.name]})
        paths = storage.paths(spec.name)
        command = training_command(config, paths.root, config.run_name or spec.name)
        context.log.info(" ".join(command))
        return pipes.run(context=context, command=command, cwd=str(REPO_ROOT)).get_materialize_result()

    @dg.asset(
        key=[*prefix, "evaluation"],
        group_name=group,
        deps=[colorizer_key, shards_key, tokens_key],
        kinds={"pytorch", "png"},
        pool=GPU_POOL,
        automation_condition=dg.AutomationCondition.eager().allow(dg.AssetSelection.assets(colorizer_key)),
        description="Held-out metrics with a tag ablation (true / no / shuffled tags), baselines and the collage.",
    )
    def evaluation(
        context: dg.AssetExecutionContext, config: EvaluationConfig, storage: TagcolorStorage
    ) -> dg.MaterializeResult:
        from model.evaluation import evaluate_checkpoint, trained_split

        paths = storage.paths(spec.name)
        if config.run_name:
            run_dir = paths.inside(paths.runs / config.run_name)
        else:
            run_dir = paths.inside(last_trained_run(context.instance, colorizer_key) or paths.runs / spec.name)
        checkpoint = run_dir / "latest.pt"
        if not checkpoint.is_file():
            raise dg.Failure(f"no checkpoint at {checkpoint}: materialize {spec.name}/colorizer first")
        holdout, train_shards = trained_split(run_dir)
        result = evaluate_checkpoint(
            paths,
            checkpoint,
            holdout,
            train_shards=train_shards,
            n_images=config.n_images,
            collage_rows=config.collage_rows,
            seed=config.seed,
            batch_size=config.batch_size,
            device=config.device,
        )
        preview = preview_markdown(result.collage_path, "result collage")
        return dg.MaterializeResult(
            metadata={
                "collage": dg.MetadataValue.path(str(result.collage_path)),
                "best_collage": dg.MetadataValue.path(str(result.best_collage_path)),
                "metrics_json": dg.MetadataValue.path(str(result.metrics_path)),
                "preview": dg.MetadataValue.md(f"{preview}\n\nheld-out shard {holdout:03d}, run {run_dir.name}"),
                **metadata.numbers(result.figures),
            }
        )

    return [
        archives,
        tags_archive,
        lab_shards,
        tag_tokens,
        tokens_in_range,
        data_stats,
        colorizer,
        evaluation,
    ]


def last_trained_run(instance: dg.DagsterInstance, colorizer_key: dg.AssetKey) -> Path | None:
    """The ``run_dir`` the latest ``colorizer`` materialization reported, so automation scores that run."""
    event = instance.get_latest_materialization_event(colorizer_key)
    reported = event.asset_materialization.metadata.get("run_dir") if event and event.asset_materialization else None
    return Path(str(reported.value)) if reported is not None else None
