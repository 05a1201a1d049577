"""The colouring page (``model.app``): its steps without a browser, then the page itself in Debian's Chromium,
served with the network cut off."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import BrowserContext

from model.app import (
    PREVIEW_SIDE,
    AppError,
    Session,
    checkpoints_of,
    coloured_status,
    find_runs,
    first_status,
    held_out_photos,
    load_colorizer,
    main,
    parse_tag_sets,
    slug,
    tag_rows,
    write_picture,
)
from model.data import TokenIndex
from tests.conftest import TinyRun
from tests.helpers import REPO_ROOT, free_port, png_header, wait_for_http

PHOTO_SIZE = (101, 67)


def photo_file(path: Path) -> Path:
    """A 101×67 colour photo with a gradient and a disc."""
    x = np.linspace(0, 255, PHOTO_SIZE[0], dtype=np.uint8)
    rgb = np.stack(np.broadcast_arrays(x[None, :], np.full((PHOTO_SIZE[1], 1), 120, np.uint8), x[::-1][None]), -1)
    Image.fromarray(np.ascontiguousarray(rgb)).save(path)
    return path


@pytest.fixture
def data_dir(tiny_run: TinyRun) -> Path:
    """The tiny dataset's data directory: one run, ``data/tiny``, with its config and checkpoint."""
    return tiny_run.paths.root.parent


def test_tag_sets_names_and_runs(tmp_path: Path, tiny_checkpoint: Path) -> None:
    assert parse_tag_sets("sunset, beach\n\n  snow ,\nforest") == [["sunset", "beach"], ["snow"], ["forest"]]
    assert slug(["Sunset!", "東京 tower"]) == "sunset-東京-tower" and slug(["!!"]) == "tags"
    run = tmp_path / "photos" / "runs" / "big"
    run.mkdir(parents=True)
    for name in ("ckpt_00000010.pt", "latest.pt", "ckpt_00000200.pt", "best.pt"):
        shutil.copy(tiny_checkpoint, run / name)
    (tmp_path / "photos" / "runs" / "empty").mkdir()
    (tmp_path / "other" / "runs" / "only_best").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, tmp_path / "other" / "runs" / "only_best" / "best.pt")
    assert list(find_runs(tmp_path)) == ["other/only_best", "photos/big"], "runs without a checkpoint left out"
    assert checkpoints_of(run) == ["best.pt", "latest.pt", "ckpt_00000200.pt", "ckpt_00000010.pt"]


def test_a_given_checkpoint_or_run_directory_comes_first(
    tmp_path: Path, data_dir: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = Session(data_dir, tmp_path / "work", tiny_checkpoint, "cpu")
    assert list(given.runs()) == [f"given: {tiny_checkpoint.name}", "data/tiny"]
    assert given.checkpoints(given.given_label) == [tiny_checkpoint.name]
    run_dir = Session(data_dir, tmp_path / "work", tiny_checkpoint.parent, "cpu")
    assert run_dir.checkpoints(run_dir.given_label) == checkpoints_of(tiny_checkpoint.parent)
    refusals = {
        "neither a checkpoint file nor a run directory": ["--checkpoint", str(tmp_path / "missing.pt")],
        "no run with a checkpoint": ["--data", str(data_dir), "--run", "data/nope"],
    }
    for expected, arguments in refusals.items():
        with pytest.raises(SystemExit) as exit_status:
            main(arguments)
        assert exit_status.value.code == 2 and expected in capsys.readouterr().err, expected


def test_a_photo_is_coloured_at_full_size_under_each_tag_set(tmp_path: Path, data_dir: Path) -> None:
    session = Session(data_dir, tmp_path / "work", None, "cpu")
    (run,) = session.runs()
    assert session.checkpoints(run) == ["latest.pt", "ckpt_00000006.pt"]
    upload = photo_file(tmp_path / "my photo.png")
    result = session.colour(run, "latest.pt", str(upload), None, "red, circle\nsea, blue")
    names = [picture.full.name for picture in result]
    assert names == ["my photo_grey.png", "my photo_no-tags.png", "my photo_tags1-red-circle.png",
                     "my photo_tags2-sea-blue.png"]  # fmt: skip
    assert [picture.caption for picture in result] == ["grey input", "no tags", "red, circle", "sea, blue"]
    assert all(picture.preview == picture.full for picture in result), "a small photo is its own preview"
    pictures = [np.asarray(Image.open(picture.full)) for picture in result]
    assert all(picture.shape == (*PHOTO_SIZE[::-1], 3) for picture in pictures)
    grey = pictures[0].astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1, "the input is shown grey"
    assert not np.array_equal(pictures[2], pictures[3]), "two tag sets, two colourings"
    assert all(picture.full.is_relative_to(tmp_path / "work") for picture in result)


def test_a_held_out_photo_of_the_runs_dataset_can_be_chosen(tmp_path: Path, data_dir: Path) -> None:
    session = Session(data_dir, tmp_path / "work", None, "cpu")
    (run,) = session.runs()
    photos = held_out_photos(session.runs()[run])
    assert photos and all(rgb.dtype == np.uint8 and rgb.ndim == 3 for rgb in photos.values())
    label = next(iter(photos))
    result = session.colour(run, "latest.pt", None, label, "")
    assert len(result) == 2 and result[0].full.name.startswith(f"held-out-{label.split(':')[0]}_")


def test_a_large_photo_gets_a_preview_and_keeps_its_size_for_download(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (900, 2000, 3), dtype=np.uint8)
    picture = write_picture(rgb, tmp_path / "big.png", "no tags")
    assert Image.open(picture.full).size == (2000, 900)
    assert Image.open(picture.preview).size == (PREVIEW_SIDE, round(900 * PREVIEW_SIDE / 2000))


def test_what_cannot_be_coloured_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    session = Session(data_dir, tmp_path / "work", None, "cpu")
    (run,) = session.runs()
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\nat all\n")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20_000, 20_000))  # 400 megapixels declared: Pillow's guard refuses it unread
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, foreign)
    words = types.SimpleNamespace(index=TokenIndex(np.array([1, 2, 3]), "words", ["", "sky", "sea", "red"]))
    cases = {
        "notes.txt cannot be coloured": lambda: session.colour(run, "latest.pt", str(text), None, "red"),
        "bomb.png cannot be coloured: .*decompression bomb": lambda: session.colour(
            run, "latest.pt", str(bomb), None, ""
        ),
        "not a tagcolor checkpoint": lambda: load_colorizer(garbage),
        "not a tagcolor checkpoint: ": lambda: load_colorizer(foreign),
        "no checkpoint at": lambda: load_colorizer(tmp_path / "missing.pt"),
        "tag set 2: .* never saw sunset, beach .*knows 3 words": lambda: tag_rows(
            [["sky"], ["sunset", "beach"]], words
        ),
        "upload a photo or pick a held-out one": lambda: session.colour(run, "latest.pt", None, None, "red"),
        "choose a run": lambda: session.colour(None, None, str(photo_file(tmp_path / "p.png")), None, ""),
        "choose one of data/tiny's checkpoints": lambda: session.colour(
            run, "../../../etc/passwd", str(photo_file(tmp_path / "p.png")), None, ""
        ),
    }
    for expected, attempt in cases.items():
        with pytest.raises(AppError, match=expected) as error:
            attempt()
        message = str(error.value)
        assert "\n" not in message and "Traceback" not in message, expected
        if "cannot be coloured" in expected:
            assert str(tmp_path) not in message, "an upload is named as its owner called it, not by its temporary path"
    assert tag_rows([["sky", "red"]], words).tolist()[1][:2] == [1, 3], "known words pass"
    assert coloured_status(0).startswith("Coloured without tags") and "2 tag sets" in coloured_status(2)
    assert "No run with a checkpoint under" in first_status(Session(tmp_path / "empty", tmp_path, None, "cpu"), [])


NETWORK_CUT = """
import runpy, socket, sys

log = open(sys.argv.pop(1), "a")
LOCAL = {"127.0.0.1", "::1", "localhost", None}
real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def refused(host):
    log.write(f"{host}\\n")
    log.flush()
    return OSError(101, f"network is unreachable (cut off by the test): {host}")


def connect(self, address, real=real_connect):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
        raise refused(address[0])
    return real(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host not in LOCAL:
        raise refused(host)
    return real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = connect
socket.socket.connect_ex = lambda self, address: connect(self, address, real_connect_ex)
socket.getaddrinfo = getaddrinfo
sys.argv[0] = "model.app"
runpy.run_module("model.app", run_name="__main__", alter_sys=True)
"""
"""``python -c`` this, the log's path, then the app's arguments: the app with every connection and name lookup
beyond this machine refused and logged, as on a machine without a network."""


@pytest.fixture
def app_server(tmp_path: Path, data_dir: Path, vocabulary_dir: Path) -> Iterator[tuple[str, Path, Path]]:
    """The app on 127.0.0.1 over the tiny run, network cut off; its URL, the log of outside attempts and the
    temporary directory it works in (``TMPDIR``), checked empty once it stops."""
    port, outside, temporary = free_port(), tmp_path / "outside.log", tmp_path / "tmp"
    outside.touch()
    temporary.mkdir()
    env = os.environ | {"TIKTOKEN_CACHE_DIR": str(vocabulary_dir), "TMPDIR": str(temporary)}
    command = [sys.executable, "-c", NETWORK_CUT, str(outside), "--data", str(data_dir), "--run", "data/tiny",
               "--port", str(port)]  # fmt: skip
    with (tmp_path / "app.log").open("w") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_http(url, server)
            yield url, outside, temporary
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert server.returncode == 0, (tmp_path / "app.log").read_text()[-4000:]
    assert list(temporary.iterdir()) == [], "uploads and results are removed when the app stops"


@pytest.mark.slow
def test_the_page_colours_an_upload_under_two_tag_sets_offline(
    app_server: tuple[str, Path, Path], browser: BrowserContext, tmp_path: Path
) -> None:
    url, outside, temporary = app_server
    photo, text = photo_file(tmp_path / "photo.png"), tmp_path / "notes.txt"
    text.write_text("not a photo\n")
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url)
    status = page.locator("#status")

    def colour(upload: Path, tag_sets: str, expected: str) -> str:
        clear = page.locator("#photo").get_by_role("button", name="Clear")
        if clear.is_visible():  # the photo of the previous colouring
            clear.click()
        page.locator("#photo input[type=file]").set_input_files(upload)
        page.locator("#photo").get_by_label(upload.name).wait_for()
        page.locator("#tags textarea").fill(tag_sets)
        page.locator("#colour").click()
        status.get_by_text(expected).wait_for(timeout=60_000)
        return status.inner_text()

    assert colour(photo, "red, circle\nsea, blue", "Coloured under 2 tag sets").startswith("Coloured")
    images = page.locator("#results img")
    page.wait_for_function(
        "() => { const all = [...document.querySelectorAll('#results img')];"
        " return all.length === 4 && all.every(image => image.complete && image.naturalWidth > 0); }",
        timeout=30_000,
    )
    assert images.count() == 4
    links = page.locator("#downloads a[download]")
    names = links.evaluate_all("links => links.map(link => link.getAttribute('download'))")
    assert names == ["photo_grey.png", "photo_no-tags.png", "photo_tags1-red-circle.png", "photo_tags2-sea-blue.png"]
    downloads = links.evaluate_all("links => links.map(link => link.href)")
    pictures = [np.asarray(Image.open(io.BytesIO(page.request.get(link).body()))) for link in downloads]
    assert [picture.shape for picture in pictures] == [(*PHOTO_SIZE[::-1], 3)] * 4, "downloads are full size"
    assert not np.array_equal(pictures[2], pictures[3]), "the two tag sets colour differently"
    assert next(temporary.iterdir()).name.startswith("tagcolor-app-"), "uploads live in the app's own directory"

    error = colour(text, "red", "Error:")
    assert error.startswith("Error: notes.txt cannot be coloured") and "\n" not in error.strip(), error
    assert "Traceback" not in page.content()
    assert colour(photo, "sea", "Coloured under 1 tag set").startswith("Coloured"), "still serving"
    page.close()
    client = Client(url, verbose=False, download_files=str(tmp_path / "client"))
    line, gallery, files = client.predict(
        "data/tiny", "latest.pt", handle_file(str(photo)), None, "red\nsea", api_name="/colour"
    )
    assert line.startswith("Coloured under 2 tag sets") and len(gallery) == len(files) == 4, "the API colours too"
    assert [request for request in requested if not request.startswith((url, "data:", "blob:"))] == []
    assert outside.read_text() == "", "the app tried to reach beyond this machine"
