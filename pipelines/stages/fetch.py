"""Stage `cnf fetch DATASET --source URI --out DEST`: a dataset release -> verified WebDataset shards.

URI: a folder, an archive (.zip, .tar, .tar.gz, .tgz), ``file://``, ``https://``, ``s3://bucket/key``, or
``demo`` for the embedded demo set. DEST: a folder or ``s3://bucket/prefix``. A rerun whose DEST already holds
this dataset from the same source and shard size, content as its manifest says, does nothing. Any failure
(checksum, missing or undecodable file, wrong labels or counts) exits 2 naming the file, and leaves DEST as
it was. A second fetch into the same DEST waits for the first. The work: ``pipelines.data.fetching.fetch``.
"""
from __future__ import annotations

import argparse
import signal
import sys

from pipelines.data import shards, storage
from pipelines.data.datasets.readers import ReaderError
from pipelines.data.fetching import FetchError, fetch


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset name (pipelines/data/datasets/registry.py)")
    parser.add_argument("--source", required=True,
                        help="folder, archive, file://, https://, s3://bucket/key, or 'demo'")
    parser.add_argument("--out", required=True, help="destination folder or s3://bucket/prefix")
    parser.add_argument("--shard-size", type=int, default=shards.DEFAULT_SHARD_SIZE,
                        help="samples per shard (default %(default)s)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the checksum check of known archives (for re-packed copies)")


def _terminate(signum, frame):
    # SIGTERM (DVC, Ray, a CI timeout) becomes an exception so the writer removes what it wrote.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        manifest = fetch(args.dataset, args.source, args.out, shard_size=args.shard_size,
                         verify=not args.no_verify)
    except (FetchError, ReaderError, shards.ShardError, storage.StorageError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cnf fetch {args.dataset}: error: {message}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{s}={v['count']}" for s, v in manifest["splits"].items())
    print(f"{args.dataset}: {counts} -> {args.out}")
    return 0
