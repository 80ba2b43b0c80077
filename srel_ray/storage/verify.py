"""``srel-ray verify``: re-read a set's files and check them against what its manifest vouches for.

A manifest (format 3) holds the sha256 of each marker of a unit of work that wrote images and of each label epoch's
record; each marker or record holds the sha256 of its own files, computed by the writer from the bytes it wrote.
Verify checks a batch of markers against the manifest, then their files against them, ``threads`` reads at a
time: it holds one batch's markers, never a map of every image. Manifests of formats 1 and 2 (one sha256 per file)
are checked file by file.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

from srel_ray.errors import DataError
from srel_ray.storage.files import fs_path
from srel_ray.storage.sets import read_set, recorded_files

VERIFY_THREADS = 16  # reading files is I/O (object stores: latency), not CPU


def verify_set(set_dir: str, threads: int = VERIFY_THREADS) -> int:
    """Check every marker and record the manifest lists, and every file they list; returns the number of files
    checked. A DataError names the first (in the manifest's order) that is missing or changed."""
    manifest = read_set(set_dir).manifest
    fs, root = fs_path(set_dir)

    def read(item: tuple[str, str]) -> tuple[str | None, bytes | None]:
        path, digest = item
        if not fs.exists(f"{root}/{path}"):
            return "missing", None
        data = fs.cat_file(f"{root}/{path}")
        return (None if hashlib.sha256(data).hexdigest() == digest else "changed"), data

    def check(items: list[tuple[str, str]], pool: ThreadPoolExecutor) -> list[bytes]:
        contents = []
        for (path, _), (problem, data) in zip(items, pool.map(read, items)):
            if problem:
                raise DataError(f"set {set_dir!r}: {path} is {problem} since the manifest was written")
            contents.append(data)
        return contents

    with ThreadPoolExecutor(threads) as pool:
        if "checksums" in manifest:  # formats 1 and 2
            files = list(manifest["checksums"].items())
            for start in range(0, len(files), threads):
                check(files[start:start + threads], pool)
            return len(files)
        records, checked = list(manifest["records"].items()), 0
        for start in range(0, len(records), threads):
            batch = records[start:start + threads]
            for data in check(batch, pool):
                files = list(recorded_files(json.loads(data)).items())
                for first in range(0, len(files), threads):
                    check(files[first:first + threads], pool)
                checked += len(files)
            checked += len(batch)
    return checked
