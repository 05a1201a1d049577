"""A local web page to colour a photo under words of your choosing: tag steering, in a Gradio app.

    python -m model.app [--data DIR] [--run DATASET/RUN | --checkpoint PATH] [--port 7860] [--host 127.0.0.1]

Upload a photo (or pick a held-out photo of the run's dataset), type one tag set per line, and the page shows
the grey input, the colouring without tags and one colouring per tag set side by side; each is a full-size PNG
to download. Runs and their checkpoints are found in the data directory (``<data>/<dataset>/runs/<run>/``).

The app works with no network: Gradio's analytics are off, the theme uses the system's fonts, and uploads and
results live in one temporary directory that is removed when the app stops. It listens on 127.0.0.1 unless
``--host`` says otherwise: anyone who can reach that address can then upload photos and read the results.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from PIL import Image

from model.checkpoint import CheckpointError
from model.colorize import ColorizeError, colorize_under_tag_sets, grey_rgb, read_rgb, write_png
from model.data import tag_ids, unknown_words
from model.inference import Colorizer
from model.photo_sets import holdout_set
from pipeline.core.color import lab_u8_to_rgb
from pipeline.core.layout import DataError, DatasetPaths
from pipeline.core.vocabulary import VocabularyError, parse_tags

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7860
PREVIEW_SIDE = 1600
"""The longest side of the page's previews; the downloads keep the photo's size."""
HELD_OUT_CHOICES = 24
"""Held-out photos offered per run: enough to try several scenes, few enough to read quickly."""
CHECKPOINT_ORDER = ("best.pt", "latest.pt")
OFFLINE_ENVIRONMENT = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "GRADIO_SSR_MODE": "False"}
"""Set before Gradio is imported: no analytics or version checks, no Hub calls, no Node server."""
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
SYSTEM_MONO_FONTS = ("ui-monospace", "monospace")


class AppError(ValueError):
    """What a person did that cannot be coloured; its message is the one line the page shows."""


@dataclass(frozen=True)
class Picture:
    """One picture of a colouring: the full-size PNG to download, a preview for the page, its caption."""

    full: Path
    preview: Path
    caption: str


def write_picture(rgb: np.ndarray, full: Path, caption: str) -> Picture:
    """The full-size PNG, and a JPEG preview at most :data:`PREVIEW_SIDE` wide or high where the photo is larger
    (the page need not carry tens of megabytes of PNG to show a photo)."""
    write_png(rgb, full)
    height, width = rgb.shape[:2]
    if max(height, width) <= PREVIEW_SIDE:
        return Picture(full, full, caption)
    scale = PREVIEW_SIDE / max(height, width)
    small = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    preview = full.with_name(f"{full.stem}_preview.jpg")
    Image.fromarray(small).save(preview, quality=90)
    return Picture(full, preview, caption)


def find_runs(data_dir: Path) -> dict[str, Path]:
    """Every run with a checkpoint under ``data_dir``, as ``<dataset>/<run>`` → its directory, sorted by name."""
    runs = {
        f"{run.parent.parent.name}/{run.name}": run
        for run in data_dir.glob("*/runs/*")
        if run.is_dir() and checkpoints_of(run)
    }
    return dict(sorted(runs.items()))


def checkpoints_of(run_dir: Path) -> list[str]:
    """A run's checkpoint files by name: ``best.pt`` and ``latest.pt`` first, then ``ckpt_<step>.pt`` newest first."""
    named = [name for name in CHECKPOINT_ORDER if (run_dir / name).is_file()]
    steps = sorted((path.name for path in run_dir.glob("ckpt_*.pt")), reverse=True)
    return named + steps


def parse_tag_sets(text: str) -> list[list[str]]:
    """One tag set per non-empty line, its tags separated by commas."""
    return [tags for line in text.splitlines() if (tags := parse_tags(line))]


@functools.lru_cache(maxsize=2)
def _load(path: Path, modified_ns: int, device: str) -> Colorizer:
    del modified_ns  # part of the cache key only: a checkpoint rewritten in place is loaded again
    return Colorizer.from_checkpoint(path, device=device)


def load_colorizer(path: Path, device: str = "cpu") -> Colorizer:
    """The checkpoint's colorizer, kept for the next request; a missing or foreign file is an :class:`AppError`."""
    try:
        return _load(path, path.stat().st_mtime_ns, device)
    except FileNotFoundError as error:
        raise AppError(f"no checkpoint at {path}") from error
    except CheckpointError as error:
        raise AppError(f"not a tagcolor checkpoint: {one_line(str(error))}") from error


def tag_rows(tag_sets: Sequence[list[str]], colorizer: Colorizer) -> np.ndarray:
    """Raw tag ids per set, the no-tag row first; words a ``words`` checkpoint never saw are an :class:`AppError`
    (they would be dropped without a sound, colouring as if the set were empty)."""
    for number, tags in enumerate(tag_sets, start=1):
        if unseen := unknown_words(tags, colorizer.index):
            known = ", ".join(colorizer.index.words[1:6])
            raise AppError(
                f"tag set {number}: this checkpoint's words tokenizer never saw {', '.join(unseen)} "
                f"(it knows {len(colorizer.index.words) - 1} words, e.g. {known})"
            )
    try:
        return np.stack([tag_ids(tags, colorizer.index) for tags in ([], *tag_sets)])
    except VocabularyError as error:
        raise AppError(one_line(str(error))) from error


def colour(
    rgb: np.ndarray, colorizer: Colorizer, tag_sets: Sequence[list[str]], out_dir: Path, stem: str
) -> list[Picture]:
    """The grey input, the no-tag colouring and one colouring per tag set, written as full-size PNGs named after
    the photo's ``stem`` and the tags (with previews) into a new directory under ``out_dir``."""
    rows = tag_rows(tag_sets, colorizer)
    coloured = colorize_under_tag_sets(rgb, colorizer, rows)
    target = out_dir / uuid.uuid4().hex
    target.mkdir(parents=True)
    captions = ["grey input", "no tags", *(", ".join(tags) for tags in tag_sets)]
    names = ["grey", "no-tags", *(f"tags{k}-{slug(tags)}" for k, tags in enumerate(tag_sets, start=1))]
    pictures = [grey_rgb(rgb), *coloured]
    return [write_picture(picture, target / f"{stem}_{name}.png", caption) for picture, name, caption in
            zip(pictures, names, captions, strict=True)]  # fmt: skip


def slug(tags: Sequence[str], limit: int = 40) -> str:
    """Tags as a file-name part: letters and digits of any script, runs of anything else as one hyphen."""
    text = "-".join(tags).casefold()
    return "-".join("".join(c if c.isalnum() else " " for c in text).split())[:limit] or "tags"


def read_upload(path: Path) -> np.ndarray:
    """An uploaded photo as uint8 RGB; anything else (text, a truncated file, a decompression bomb) is an
    :class:`AppError` naming the file as the person called it."""
    try:
        return read_rgb(path)
    except ColorizeError as error:
        reason = str(error).removeprefix(f"{path}: ").replace(str(path), path.name)  # no temporary paths shown
        raise AppError(f"{path.name} cannot be coloured: {one_line(reason)}") from error


def held_out_photos(run_dir: Path, n_images: int = HELD_OUT_CHOICES) -> dict[str, np.ndarray]:
    """Up to ``n_images`` photos of the run's held-out shard, as ``label`` → uint8 RGB, for people without a
    photo at hand; none where the run's dataset is not on this machine."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    if not isinstance(config, dict) or "data_root" not in config or "holdout_shard" not in config:
        return {}
    try:
        photos = holdout_set(
            DatasetPaths(Path(config["data_root"])), int(config["holdout_shard"]), config.get("tokenizer", "o200k"),
            n_images=n_images,
        )  # fmt: skip
        labs = photos.read(np.arange(len(photos)))
    except (DataError, OSError, ValueError) as error:
        logger.warning("%s: no held-out photos to offer (%s)", run_dir, error)
        return {}
    return {
        f"{image_id}: {photos.captions.get(int(image_id)) or '(no tags)'}"[:80]: lab_u8_to_rgb(lab)
        for image_id, lab in zip(photos.image_ids, labs, strict=True)
    }


def first_status(session: Session, runs: Sequence[str]) -> str:
    """The page's line before any colouring: what to do, or where runs would be found."""
    if not runs:
        where = session.data_dir
        return f"**No run with a checkpoint under {where}**: train one (`make demo`), or name one with --checkpoint."
    return "Upload a photo (or pick a held-out one), type tag sets, press **Colour**."


def coloured_status(tag_sets: int) -> str:
    """The page's line after a colouring."""
    if tag_sets == 0:
        return "Coloured without tags; type tag sets, one per line, to steer the colours. Downloads are full size."
    return f"Coloured under {tag_sets} tag set{'s' * (tag_sets != 1)} and without tags; downloads are full size."


def one_line(text: str) -> str:
    """A message as one line of the page: its first line, whitespace collapsed."""
    return " ".join(text.strip().splitlines()[0].split()) if text.strip() else "unknown error"


class Session:
    """What the page's callbacks share: the runs, the given checkpoint (a file, or a run's directory), the device
    and the results directory."""

    def __init__(self, data_dir: Path, work_dir: Path, checkpoint: Path | None, device: str) -> None:
        self.data_dir, self.work_dir, self.device = data_dir, work_dir, device
        self.given = checkpoint
        self._held_out: dict[str, dict[str, np.ndarray]] = {}

    @property
    def given_label(self) -> str:
        return f"given: {self.given.name if self.given is not None else ''}"

    def runs(self) -> dict[str, Path]:
        found = find_runs(self.data_dir)
        if self.given is not None:
            found = {self.given_label: self.given if self.given.is_dir() else self.given.parent, **found}
        return found

    def checkpoints(self, run: str | None) -> list[str]:
        if run is None:
            return []
        if self.given is not None and run == self.given_label and not self.given.is_dir():
            return [self.given.name]
        run_dir = self.runs().get(run)
        return checkpoints_of(run_dir) if run_dir is not None else []

    def held_out(self, run: str | None) -> dict[str, np.ndarray]:
        run_dir = self.runs().get(run or "")
        if run_dir is None:
            return {}
        if run not in self._held_out:
            self._held_out[run] = held_out_photos(run_dir)
        return self._held_out[run]

    def checkpoint_path(self, run: str | None, checkpoint: str | None) -> Path:
        runs = self.runs()
        if not run or run not in runs:
            raise AppError(f"choose a run: none found under {self.data_dir}" if not runs else "choose a run")
        if checkpoint not in self.checkpoints(run):  # a page's value is never trusted as a path
            raise AppError(f"choose one of {run}'s checkpoints" if checkpoint else f"{run} has no checkpoint to choose")
        return runs[run] / checkpoint

    def colour(
        self, run: str | None, checkpoint: str | None, upload: str | None, held_out: str | None, tags_text: str
    ) -> list[Picture]:
        """Colour the uploaded photo (else the chosen held-out one) under the typed tag sets."""
        if upload:
            rgb, stem = read_upload(Path(upload)), Path(upload).stem
        elif held_out and held_out in self.held_out(run):
            rgb, stem = self.held_out(run)[held_out], f"held-out-{held_out.split(':')[0]}"
        else:
            raise AppError("upload a photo or pick a held-out one")
        colorizer = load_colorizer(self.checkpoint_path(run, checkpoint), self.device)
        return colour(rgb, colorizer, parse_tag_sets(tags_text or ""), self.work_dir / "results", stem)


def build_app(session: Session, initial_run: str | None) -> Any:
    """The page: inputs on the left, the status line, the pictures side by side and their downloads on the right."""
    import gradio as gr  # the [app] extra, imported once the offline environment is set

    runs = list(session.runs())
    run = initial_run if initial_run in runs else (runs[0] if runs else None)
    checkpoints = session.checkpoints(run)

    def choose_run(chosen: str | None) -> tuple[Any, Any]:
        names = session.checkpoints(chosen)
        photos = list(session.held_out(chosen))
        return (gr.update(choices=names, value=names[0] if names else None),
                gr.update(choices=photos, value=None))  # fmt: skip

    def on_colour(
        chosen_run: str | None, checkpoint: str | None, upload: str | None, held_out: str | None, tags_text: str
    ) -> tuple[str, list[tuple[str, str]], list[str]]:
        try:
            result = session.colour(chosen_run, checkpoint, upload, held_out, tags_text)
        except AppError as error:
            return f"**Error:** {error}", [], []
        except Exception as error:  # the page shows one line and keeps serving; the log keeps the traceback
            logger.exception("colouring failed")
            return f"**Error:** {type(error).__name__}: {one_line(str(error))}", [], []
        gallery = [(str(picture.preview), picture.caption) for picture in result]
        return coloured_status(len(result) - 2), gallery, [str(picture.full) for picture in result]

    with gr.Blocks(title="tagcolor", analytics_enabled=False) as app:
        gr.Markdown(
            "## tagcolor: colour a photo under your own words\n"
            "The same grey photo, coloured without tags and once per tag set: one set per line, tags separated by "
            "commas (`sunset, beach`)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                run_box = gr.Dropdown(runs, value=run, label="Run (dataset/run)", elem_id="run")
                checkpoint_box = gr.Dropdown(
                    checkpoints, value=checkpoints[0] if checkpoints else None, label="Checkpoint", elem_id="checkpoint"
                )
                upload = gr.File(label="Photo", type="filepath", elem_id="photo")
                held_out = gr.Dropdown(
                    list(session.held_out(run)), value=None, label="… or a held-out photo of the run's dataset",
                    elem_id="held-out",
                )  # fmt: skip
                tags = gr.Textbox(
                    label="Tag sets, one per line", lines=4, placeholder="sunset, beach\nsnow\nforest", elem_id="tags"
                )
                button = gr.Button("Colour", variant="primary", elem_id="colour")
            with gr.Column(scale=2):
                status = gr.Markdown(first_status(session, runs), elem_id="status")
                gallery = gr.Gallery(
                    label="Grey input, no tags, each tag set", columns=4, height="auto", elem_id="results"
                )
                downloads = gr.File(label="Full-size PNGs", file_count="multiple", elem_id="downloads")
        run_box.change(choose_run, run_box, [checkpoint_box, held_out], api_visibility="private")
        inputs = [run_box, checkpoint_box, upload, held_out, tags]
        button.click(on_colour, inputs, [status, gallery, downloads], api_name="colour")  # also for gradio_client
    return app


@contextlib.contextmanager
def work_directory() -> Iterator[Path]:
    """A temporary directory for uploads and results (Gradio's too), removed when the app stops, a SIGTERM
    included."""
    work_dir = Path(tempfile.mkdtemp(prefix="tagcolor-app-"))
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds through the finally below
    try:
        yield work_dir
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.app", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("TAGCOLOR_DATA_DIR", "data")),
        help="the data directory whose runs are offered (default: $TAGCOLOR_DATA_DIR, else data)",
    )  # fmt: skip
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--run", help="the run chosen at first, as <dataset>/<run>")
    chosen.add_argument(
        "--checkpoint", type=Path, help="a checkpoint file (.pt), or a run directory, offered first beside the runs"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on; 0.0.0.0 serves every network this machine is on, to anyone who reaches it",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and not (args.checkpoint.is_file() or checkpoints_of(args.checkpoint)):
        parser.error(f"--checkpoint {args.checkpoint}: neither a checkpoint file nor a run directory holding one")
    if args.run is not None and args.run not in find_runs(args.data):
        parser.error(f"--run {args.run}: no run with a checkpoint at {args.data / args.run.replace('/', '/runs/')}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes of its server
    with work_directory() as work_dir:
        os.environ.update(OFFLINE_ENVIRONMENT | {"GRADIO_TEMP_DIR": str(work_dir / "gradio")})
        try:
            import gradio as gr
        except ImportError:
            parser.exit(2, f"{parser.prog}: error: the app needs Gradio: pip install -e '.[app]'\n")
        session = Session(args.data, work_dir, args.checkpoint, args.device)
        initial = session.given_label if args.checkpoint is not None else args.run
        theme = gr.themes.Base(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO_FONTS)
        print(f"tagcolor app: http://{args.host}:{args.port}  (uploads and results in {work_dir})", flush=True)
        build_app(session, initial).launch(
            server_name=args.host, server_port=args.port, theme=theme, share=False, ssr_mode=False,
            footer_links=[], quiet=True, allowed_paths=[str(work_dir)],
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
