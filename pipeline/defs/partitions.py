"""The partition keys of one dataset's asset, for shell scripts and the Makefile.

    python -m pipeline.defs.partitions my-photos lab_shards --range     # 000...004
    python -m pipeline.defs.partitions mirflickr1m archives             # images0 … images9, one a line

A folder's shards exist only once its photos were scanned (``archives``), so a script asks after the scan.
"""

import argparse
from collections.abc import Sequence

import dagster as dg

from pipeline.defs.definitions import build_definitions


def partition_keys(dataset: str, asset: str) -> list[str]:
    """The keys of ``<dataset>/<asset>`` as the definitions see them now (empty: not partitioned)."""
    key = dg.AssetKey([dataset, asset])
    graph = build_definitions().resolve_asset_graph()
    if not graph.has(key):
        known = sorted({k.path[0] for k in graph.get_all_asset_keys()})
        raise SystemExit(f"no asset {key.to_user_string()}; datasets: {known}")
    partitions = graph.get(key).partitions_def
    return partitions.get_partition_keys() if partitions else []


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.defs.partitions", description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("asset")
    parser.add_argument("--range", action="store_true", help="print FIRST...LAST, for --partition-range")
    args = parser.parse_args(argv)
    keys = partition_keys(args.dataset, args.asset)
    if not keys:
        parser.exit(1, f"{args.dataset}/{args.asset} has no partitions yet (a folder: materialize its archives)\n")
    print(f"{keys[0]}...{keys[-1]}" if args.range else "\n".join(keys))


if __name__ == "__main__":
    main()
