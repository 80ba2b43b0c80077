"""Files of a run on any filesystem fsspec reaches (a local folder, s3://, gs://, file://).

Every file is written under a temporary name and renamed into place, so a crash never leaves a file that looks
complete: a marker, a manifest or a record that exists is whole, and work that wrote it is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import fsspec
import torch

TMP_SUFFIX = ".tmp"  # a file being written; never read as a finished one


def fs_path(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of ``path`` and the path on it."""
    return fsspec.core.url_to_fs(str(path))


def join(*parts: str) -> str:
    return "/".join(str(p).rstrip("/") for p in parts)


def is_url(path: str) -> bool:
    return "://" in str(path)


def write_bytes_atomic(path: str, data: bytes) -> None:
    fs, p = fs_path(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    tmp = p + TMP_SUFFIX
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, p)


def write_json_atomic(path: str, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=False).encode())


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def read_bytes(path: str) -> bytes:
    fs, p = fs_path(path)
    with fs.open(p, "rb") as f:
        return f.read()


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


def write_torch(path: str, obj: Any) -> None:
    """``torch.save`` through memory, so the file can live on any filesystem."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def write_torch_local(path: str | Path, obj: Any) -> None:
    """``torch.save`` straight to a local file (the archive inside is named after the file, as torch names it)."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    torch.save(obj, tmp)
    tmp.replace(path)


def read_torch(path: str) -> Any:
    """A tensor file (weights only: no code runs on load)."""
    return torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=True)


def listdir(path: str) -> list[str]:
    """Names in a folder; empty when it does not exist."""
    fs, p = fs_path(path)
    if not fs.isdir(p):
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(p, detail=False))


def exists(path: str) -> bool:
    fs, p = fs_path(path)
    return fs.exists(p)


def is_file(path: str) -> bool:
    fs, p = fs_path(path)
    return fs.isfile(p)


def remove(path: str) -> None:
    fs, p = fs_path(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str | None]:
    """A local path holding the file at ``path``: the file itself when local, else a temporary copy (for tools
    that read local files only); None when there is no such file."""
    fs, p = fs_path(path)
    if not fs.exists(p):
        yield None
    elif not is_url(path):
        yield p
    else:
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, p.rsplit("/", 1)[-1])
            fs.get(p, local)
            yield local


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock beside a local ``folder`` (released when the block ends or the process dies)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f".{folder.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
