"""A real-photo benchmark anyone can build: photos from scikit-image and Debian packages, split by photo.

    .venv/bin/python benchmarks/real_photos.py OUT_DIR [--crops 32] [--test 12] [--validation 10] [--seed 0]

The photos are scikit-image's colour photos and the photographs (not the abstract renders) of Debian's
wallpaper packages and OpenCV's sample data, each tagged with what it shows (``PHOTOS``). Packages are fetched
with ``apt-get download`` (no root needed; a fresh Debian machine reaches its mirror) into ``OUT_DIR/debs`` and
unpacked with ``dpkg-deb -x``; a package that cannot be fetched is left out, and the script says so.

The photos, not their crops, are split: a seeded shuffle makes ``--test`` test photos, ``--validation``
validation photos and the rest training photos. Each photo is cut into random square crops (30-80 % of its
short side, 256² JPEGs with a tag sidecar) under ``photos/1-training``, ``photos/2-validation`` and
``photos/3-test``; the folder's sorted order then gives the test crops the last ids, and the shard size (one
test photo set's crops) makes the held-out shard hold exactly the test photos (training photos get the few
extra crops that fill their shards). The validation crops lie in training shards; the two train configs written
under ``OUT_DIR/train`` (the ``folder`` and ``sample_demo`` presets) name them as ``val_ids``, so ``best.pt`` is
chosen on photos never trained on, and the test photos choose nothing. Then (``split.txt`` lists the photos):

    export TAGCOLOR_DATASETS_DIR=OUT_DIR/datasets TAGCOLOR_DATA_DIR=OUT_DIR/data
    make dataset NAME=real-photos DATA=OUT_DIR/data       # the folder preset, through the whole graph
    .venv/bin/python benchmarks/quality.py --data-root OUT_DIR/data/real-photos \\
        --config OUT_DIR/train/folder.yaml --recipe "no_dropout tag_dropout=0" --budget-s 300
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from skimage import data

TRAIN_DIR = Path(__file__).resolve().parents[1] / "assets_config" / "train"
CROP_SIDE = 256
SPLITS = ("1-training", "2-validation", "3-test")
STEERING = ["sunset", "green grass", "blue sky sea", "autumn orange", "night"]
"""The steering collage's tag sets: words of several training photos each, so they can mean colours."""


@dataclass(frozen=True)
class Photo:
    """One photo: ``source`` is ``skimage`` (``path`` a ``skimage.data`` name) or a Debian package (``path``
    inside it)."""

    name: str
    source: str
    path: str
    tags: tuple[str, ...]


def _debian(package: str, folder: str, entries: dict[str, tuple[str, str]]) -> list[Photo]:
    return [Photo(name, package, f"{folder}/{path}", tuple(tags.split())) for name, (path, tags) in entries.items()]


PLASMA = "plasma-workspace-wallpapers"
PHOTOS: list[Photo] = [
    *(
        Photo(name, "skimage", name, tuple(tags.split()))
        for name, tags in {
            "astronaut": "astronaut portrait people flag space",
            "chelsea": "cat pet animal fur orange",
            "coffee": "coffee cup table food",
            "hubble_deep_field": "galaxy stars night space",
            "immunohistochemistry": "microscope tissue science pink",
            "stereo_motorcycle": "motorcycle bike studio red",
            "retina": "retina eye medical red",
            "rocket": "rocket launch sky sunset",
        }.items()
    ),
    *_debian(
        "lomiri-wallpapers-16.04",
        "usr/share/backgrounds",
        {
            "bridge": ("Bridge_by_Sander_Klootwijk.jpg", "bridge sky sea blue clouds"),
            "dragonfly": ("Dragonfly_by_Bolly.jpg", "leaves tree green sky nature"),
            "fig": ("Picture_0B_by_freespace.jpg", "fig fruit bowl red food"),
            "brushes": ("Picture_1A_by_freespace.jpg", "brushes paint colours art"),
            "wine": ("Wine_by_Jakkub_Mede.jpg", "room table interior wood"),
            "aitzgorri": ("aitzgorri_by_Aitzol_Berasategi.jpg", "mountain autumn grass trees sky"),
            "bird_lamps": ("free_by_Peter_Nerlich.jpg", "bird lamps interior flying"),
            "dog_door": ("friends_by_Aitzol_Berasategi.jpg", "dog pet animal door wood"),
            "stream": ("life_by_Aitzol_Berasategi.jpg", "stream water forest rocks green"),
            "picos": ("picosdeeuropa_by_Aitzol_Berasategi.jpg", "mountain sky clouds path grass"),
            "dandelion_field": ("seeding_by_Clements_Engelhardt.jpg", "dandelion field grass sunset"),
            "hill_sunset": ("sunset_by_Aitzol_Berasategi.jpg", "sunset sun sky hills"),
        },
    ),
    *_debian(
        "lomiri-wallpapers-20.04",
        "usr/share/backgrounds",
        {
            "milky_way_sea": ("Infinite-Sea_by_Aury88.jpg", "night stars sky sea"),
            "nuthatch": ("Kleiber_by_Lukas_Baubkus.jpg", "bird tree bark animal nature"),
        },
    ),
    *_debian(
        "mate-backgrounds",
        "usr/share/backgrounds/mate/nature",
        {
            "water_drop": ("Aqua.jpg", "water drop blue"),
            "leaf_lines": ("Blinds.jpg", "leaf green plant nature"),
            "dune": ("Dune.jpg", "grass sea sky beach"),
            "orange_flower": ("FreshFlower.jpg", "flower orange petals"),
            "marigold": ("Garden.jpg", "flower red garden green"),
            "meadow": ("GreenMeadow.jpg", "grass green meadow"),
            "ladybird": ("LadyBird.jpg", "ladybird flowers blue grass green"),
            "raindrops": ("RainDrops.jpg", "leaf water drops green"),
            "storm": ("Storm.jpg", "storm clouds sky road"),
            "dandelion_seeds": ("TwoWings.jpg", "dandelion seeds orange"),
            "white_wood": ("Wood.jpg", "wood white texture"),
            "yellow_flower": ("YellowFlower.jpg", "flower yellow petals"),
        },
    ),
    *_debian(
        PLASMA,
        "usr/share/wallpapers",
        {
            "pier_sunset": ("BytheWater/contents/images/2560x1600.jpg", "pier lake water sunset"),
            "pier_fog": ("ColdRipple/contents/images/2560x1600.jpg", "pier fog lake water grey"),
            "night_lake": ("DarkestHour/contents/images/2560x1600.jpg", "lake night blue water"),
            "boats": ("EveningGlow/contents/images/2560x1600.jpg", "boats lake sunset clouds"),
            "fallen_leaf": ("FallenLeaf/contents/images/2560x1600.jpg", "leaf autumn orange"),
            "architecture": ("Grey/contents/images/2560x1600.jpg", "building architecture grey"),
            "kite": ("Kite/contents/images/2560x1600.jpg", "kite sky clouds blue"),
            "moss": ("OneStandsOut/contents/images/2560x1600.jpg", "moss plants green nature"),
            "forest_path": ("Path/contents/images/2560x1600.jpg", "forest trees path green"),
            "beach": ("Volna/contents/images/5120x2880.jpg", "beach sea sand waves"),
            "dusk_lake": ("summer_1am/contents/images/2560x1600.jpg", "lake dusk sky water"),
        },
    ),
    *_debian(
        "opencv-doc",
        "usr/share/doc/opencv-doc/examples/data",
        {
            "aerial_city": ("aero1.jpg", "city aerial buildings river"),
            "aloe": ("aloeL.jpg", "aloe plant pot green"),
            "apple": ("apple.jpg", "apple fruit red food"),
            "baboon": ("baboon.jpg", "baboon animal monkey face"),
            "circuit": ("board.jpg", "circuit board electronics green"),
            "office_building": ("building.jpg", "building architecture sky trees"),
            "butterfly": ("butterfly.jpg", "butterfly insect leaf green"),
            "notebook": ("ela_original.jpg", "notebook black table"),
            "fruits": ("fruits.jpg", "fruits orange lemon food"),
            "graffiti": ("graf1.png", "graffiti wall art colours"),
            "palace": ("home.jpg", "building sky blue architecture"),
            "street": ("leuvenA.jpg", "street houses brick sky"),
            "football": ("messi5.jpg", "football grass people sport"),
            "orange": ("orange.jpg", "orange fruit food"),
            "toys": ("rubberwhale1.png", "toys colours table"),
            "squirrel": ("squirrel_cls.jpg", "squirrel animal tree green"),
            "desk": ("stuff.jpg", "table pencil desk"),
            "dog": ("chicky_512.png", "dog pet animal fur"),
            "car": ("licenseplate_motion.jpg", "car street road"),
            "books": ("left.jpg", "books table"),
        },
    ),
]
"""Every photo of the benchmark and its tags (words a photographer would use, shared across photos where the
same things are shown: ``sky``, ``sunset``, ``grass``, ``green`` …)."""


def fetch_packages(packages: set[str], debs: Path) -> tuple[Path, list[str]]:
    """``apt-get download`` each package into ``debs`` (once) and unpack it under ``debs/root``; the packages
    that could not be fetched."""
    root = debs / "root"
    missing = []
    for package in sorted(packages):
        stamp = root / f".{package}"
        if stamp.exists():
            continue
        debs.mkdir(parents=True, exist_ok=True)
        fetched = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        archive = sorted(debs.glob(f"{package}_*.deb"))
        if fetched.returncode != 0 or not archive:
            print(f"{package}: not fetched ({fetched.stderr.strip().splitlines()[-1:]}); its photos are left out")
            missing.append(package)
            continue
        subprocess.run(["dpkg-deb", "-x", str(archive[-1]), str(root)], check=True)
        stamp.touch()
    return root, missing


def load_rgb(photo: Photo, root: Path) -> np.ndarray:
    if photo.source == "skimage":
        loaded = getattr(data, photo.path)()
        return np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)[..., :3]  # the stereo pair's left
    with Image.open(root / photo.path) as image:
        image.draft("RGB", (2 * CROP_SIDE * 4, 2 * CROP_SIDE * 4))  # a JPEG decoded at a fraction of its size
        return np.asarray(image.convert("RGB"))


def crops(rgb: np.ndarray, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """``count`` random square crops, 30-80 % of the short side, at most ``CROP_SIDE`` pixels a side."""
    height, width = rgb.shape[:2]
    out = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(0.3, 0.8))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(np.ascontiguousarray(rgb[top : top + side, left : left + side]))
        out.append(crop.resize((CROP_SIDE, CROP_SIDE), Image.Resampling.LANCZOS) if side > CROP_SIDE else crop)
    return out


def split_photos(photos: list[Photo], test: int, validation: int, seed: int) -> dict[str, list[Photo]]:
    order = np.random.default_rng(seed).permutation(len(photos))
    shuffled = [photos[i] for i in order]
    return {
        SPLITS[2]: shuffled[:test],
        SPLITS[1]: shuffled[test : test + validation],
        SPLITS[0]: shuffled[test + validation :],
    }


def crop_counts(split: dict[str, list[Photo]], per_photo: int) -> dict[str, list[int]]:
    """Crops per photo: ``per_photo`` each, and the extra training crops that make the training and validation
    crops fill whole shards of ``len(test photos) · per_photo``."""
    shard_size = len(split[SPLITS[2]]) * per_photo
    counts = {name: [per_photo] * len(photos) for name, photos in split.items()}
    before_test = sum(sum(c) for name, c in counts.items() if name != SPLITS[2])
    extra = -before_test % shard_size
    for k in range(extra):
        counts[SPLITS[0]][k % len(counts[SPLITS[0]])] += 1
    return counts


def write_train_configs(out: Path, val_ids: list[int]) -> None:
    """The ``folder`` and ``sample_demo`` presets with the validation photos' crops as ``val_ids``, on the CPU
    (the targets are this benchmark's on two CPU cores)."""
    folder = out / "train"
    folder.mkdir(exist_ok=True)
    for preset in ("folder", "sample_demo"):
        text = (TRAIN_DIR / f"{preset}.yaml").read_text()
        added = {"device": "cpu"} if "device" not in yaml.safe_load(text) else {}
        text += yaml.safe_dump(added | {"val_ids": val_ids}, default_flow_style=None, width=100)
        (folder / f"{preset}.yaml").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--crops", type=int, default=32, help="crops per photo")
    parser.add_argument("--test", type=int, default=12, help="test photos (the held-out shard)")
    parser.add_argument("--validation", type=int, default=10, help="validation photos (best.pt is chosen on them)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        print("apt-get and dpkg-deb not found: only scikit-image's photos are used")
        root, missing = args.out / "debs" / "root", sorted({p.source for p in PHOTOS} - {"skimage"})
    else:
        root, missing = fetch_packages({p.source for p in PHOTOS} - {"skimage"}, args.out / "debs")
    photos = [p for p in PHOTOS if p.source not in missing]
    split = split_photos(photos, args.test, args.validation, args.seed)
    if len(split[SPLITS[0]]) < 2:
        sys.exit(f"{len(photos)} photos are too few for {args.test} test and {args.validation} validation photos")
    counts = crop_counts(split, args.crops)
    folder = args.out / "photos"
    if folder.exists():
        shutil.rmtree(folder)  # a rebuild starts over: the dataset's ids follow the folder's sorted order
    rng = np.random.default_rng(args.seed)
    image_id, val_ids, lines = 0, [], []
    for name in SPLITS:
        (folder / name).mkdir(parents=True)
        for photo, count in zip(split[name], counts[name], strict=True):
            for k, crop in enumerate(crops(load_rgb(photo, root), count, rng)):
                stem = folder / name / f"{photo.name}_{k:03d}"
                crop.save(stem.with_suffix(".jpg"), quality=95)
                stem.with_suffix(".txt").write_text("\n".join(photo.tags) + "\n")
                if name == SPLITS[1]:
                    val_ids.append(image_id)
                image_id += 1
            lines.append(f"{name}\t{photo.name}\t{count}\t{' '.join(photo.tags)}")
    (args.out / "split.txt").write_text("split\tphoto\tcrops\ttags\n" + "\n".join(lines) + "\n")
    write_train_configs(args.out, val_ids)
    datasets = args.out / "datasets"
    datasets.mkdir(exist_ok=True)
    shard_size = len(split[SPLITS[2]]) * args.crops
    (datasets / "real-photos.yaml").write_text(
        f"name: real-photos\nkind: folder\npath: {folder.resolve()}\nshard_size: {shard_size}\n"
        f"train_config: {(args.out / 'train' / 'folder.yaml').resolve()}\n"
        f"steering_tags: {STEERING}\n"
    )
    sizes = ", ".join(f"{len(split[name])} {name[2:]}" for name in SPLITS)
    print(f"{len(photos)} photos ({sizes}), {image_id} crops in {folder}; {args.out / 'split.txt'}")
    print(f"dataset file {datasets / 'real-photos.yaml'} (shards of {shard_size}: the last holds the test photos)")


if __name__ == "__main__":
    main()
