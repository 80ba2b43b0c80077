"""``srel-ray verify``: re-read a set's files and check them against what its manifest vouches for.

A manifest (format 3) holds, for each marker of a unit of work that wrote images and each label epoch's record, a
digest of the file list it vouches for (``sets.listing_digest``); each marker or record holds the sha256 of its own
files, computed by the writer from the bytes it wrote. Verify checks a batch of markers against the manifest, then
their files against them, ``threads`` reads at a time: it holds one batch's markers, never a map of every image.
Manifests of formats 1 and 2 (one sha256 per file) are checked file by file.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

from srel_ray.errors import DataError
from srel_ray.storage.files import fs_path
from srel_ray.storage.sets import listing_digest, read_set, recorded_files

VERIFY_THREADS = 16  # reading files is I/O (object stores: latency), not CPU


def verify_set(set_dir: str, threads: int = VERIFY_THREADS) -> int:
    """Check every marker and record the manifest lists, and every file they list; returns the number of files
    checked. A DataError names the first (in the manifest's order) that is missing or changed."""
    manifest = read_set(set_dir).manifest
    fs, root = fs_path(set_dir)

    def read(path: str) -> bytes | None:
        return fs.cat_file(f"{root}/{path}") if fs.exists(f"{root}/{path}") else None

    def file_state(item: tuple[str, str]) -> str | None:
        data = read(item[0])
        return "missing" if data is None else None if hashlib.sha256(data).hexdigest() == item[1] else "changed"

    def record_state(item: tuple[str, str]) -> tuple[str | None, dict]:
        data = read(item[0])
        if data is None:
            return "missing", {}
        files = recorded_files(json.loads(data))
        return (None if listing_digest(files) == item[1] else "changed"), files

    def check(items: list[tuple[str, str]], states) -> None:
        for (path, _), state in zip(items, states):
            if state:
                raise DataError(f"set {set_dir!r}: {path} is {state} since the manifest was written")

    def check_files(files: list[tuple[str, str]], pool: ThreadPoolExecutor) -> int:
        for start in range(0, len(files), threads):
            batch = files[start:start + threads]
            check(batch, pool.map(file_state, batch))
        return len(files)

    with ThreadPoolExecutor(threads) as pool:
        if "checksums" in manifest:  # formats 1 and 2
            return check_files(list(manifest["checksums"].items()), pool)
        records, checked = list(manifest["records"].items()), 0
        for start in range(0, len(records), threads):
            batch = records[start:start + threads]
            states = list(pool.map(record_state, batch))
            check(batch, [state for state, _ in states])
            checked += len(batch) + sum(check_files(list(files.items()), pool) for _, files in states)
    return checked
