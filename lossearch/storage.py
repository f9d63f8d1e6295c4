"""Small files and folders in a folder that is a local path or a URI (``s3://bucket/prefix?...``).

The experiment directory, its ``lossearch_search.yaml``, the confirm stage's files and the
checkpoints of trials trained without Ray Train go through these functions, so every caller
treats a local folder and an object store alike. A URI goes through ``pyarrow.fs``
(credentials and endpoint from the standard AWS environment); a ``?query`` stays at the end
of the joined URI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from lossearch.errors import LossearchError


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (S3, GCS, ...), False for a local path."""
    return "://" in path


def absolute_path(path: str | os.PathLike[str]) -> str:
    """A local ``path`` with ``~`` expanded, made absolute against this process's working
    directory (symlinks kept).

    Every local path a user gives (data files, a model directory, ``--storage``, an
    experiment) is made absolute in the command's own process: trials and Ray Train workers
    run in other working directories, where a relative path named nothing (every trial failed
    with "file not found"), and a quoted or ``--opt=~/x`` path keeps its ``~``.
    """
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def join_uri(base: str, *parts: str) -> str:
    """Join a local path or a URI with ``/``; a URI's ``?query`` stays at the end."""
    path, sep, query = base.partition("?") if is_uri(base) else (base, "", "")
    return "/".join([path.rstrip("/"), *parts]) + sep + query


def write_text(folder: str, name: str, text: str) -> None:
    """Write ``folder/name``, creating the folder.

    Locally the write is atomic (a temporary file, then a rename): a full disk or a quota
    leaves no half-written file, nor a folder this call created and left empty.
    """
    if is_uri(folder):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(folder)
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root.rstrip('/')}/{name}") as f:
            f.write(text.encode())
        return
    where = Path(folder)
    created = not where.exists()
    tmp = where / f".{name}.tmp"
    try:
        where.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, where / name)
    except OSError:
        if where.is_dir():
            tmp.unlink(missing_ok=True)
            if created and not any(where.iterdir()):
                where.rmdir()
        raise


def read_text(folder: str, name: str) -> str:
    """The text of ``folder/name``; ``OSError`` (``FileNotFoundError`` locally) when absent."""
    if is_uri(folder):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(folder)
        with fs.open_input_stream(f"{root.rstrip('/')}/{name}") as f:
            return f.read().decode()
    return Path(folder, name).read_text()


def file_exists(folder: str, name: str) -> bool:
    """True when ``folder/name`` is a file."""
    if is_uri(folder):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(folder)
        return fs.get_file_info(f"{root.rstrip('/')}/{name}").type == pafs.FileType.File
    return Path(folder, name).is_file()


def copy_dir(source: str | Path, folder: str, name: str) -> None:
    """Copy the local folder ``source`` to ``folder/name`` (replacing what is there)."""
    if is_uri(folder):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(folder)
        dest = f"{root.rstrip('/')}/{name}"
        fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(source), dest, destination_filesystem=fs)
        return
    import shutil

    dest_path = Path(folder, name)
    if dest_path.exists():
        shutil.rmtree(dest_path)
    shutil.copytree(source, dest_path)


def fetch_dir(folder: str, name: str, local: str | Path) -> Path:
    """``folder/name`` as a local folder: itself when local, else downloaded into ``local``."""
    if not is_uri(folder):
        return Path(folder, name)
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(folder)
    pafs.copy_files(f"{root.rstrip('/')}/{name}", str(local), source_filesystem=fs)
    return Path(local)


def remove_dir(folder: str, name: str) -> None:
    """Delete ``folder/name`` and what it holds; nothing happens when it is absent."""
    if is_uri(folder):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(folder)
        path = f"{root.rstrip('/')}/{name}"
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)
        return
    import shutil

    shutil.rmtree(Path(folder, name), ignore_errors=True)


def read_local_text(path: Path, what: str) -> str:
    """The UTF-8 text of the local file ``path``; a one-line
    :class:`~lossearch.errors.LossearchError` for a directory (``what`` names the file
    expected: "a YAML file"), a missing file, or text that is not UTF-8."""
    if path.is_dir():
        raise LossearchError(f"{path} is a directory; name {what}")
    if not path.is_file():
        raise LossearchError(f"file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LossearchError(f"{path} is not a UTF-8 text file") from None


def check_local_target(path: str | Path, flag: str, *, kind: Literal["file", "dir"]) -> Path:
    """``path`` (resolved) if a ``kind`` (``"file"`` or ``"dir"``) can be written there: it is
    absent or already a ``kind``, and its nearest existing ancestor is a directory. Else a
    one-line :class:`~lossearch.errors.LossearchError` naming ``flag`` (checked before
    anything is written, so a bad path damages nothing)."""
    if not str(path).strip():
        raise LossearchError(f"{flag} is empty; name a {'folder' if kind == 'dir' else 'file'}")
    target = Path(path).expanduser().resolve()
    if target.exists() and target.is_dir() != (kind == "dir"):
        what = "a directory; name a file" if target.is_dir() else "a file, not a directory"
        raise LossearchError(f"{flag} {path} is {what}")
    parent = next(p for p in target.parents if p.exists())
    if not parent.is_dir():
        raise LossearchError(f"{flag} {path}: {parent} is not a directory")
    return target
