"""Where an experiment lives: one :mod:`pyarrow.fs` filesystem and a directory in it.

Local paths are read with :class:`pyarrow.fs.LocalFileSystem`; anything with a scheme goes
through :meth:`pyarrow.fs.FileSystem.from_uri`, so S3/GCS/HDFS work with the usual
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL`` ...). The filesystem is opened once per experiment and every file of it
is read through that one object: a URI is not resolved (credentials, endpoint) again for
each of the hundreds of small files an experiment holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import pyarrow.fs as pafs

from lossearch.errors import LossearchError
from lossearch.storage import is_uri


@dataclass(frozen=True)
class Location:
    """A directory in a filesystem: ``root`` is its path inside ``fs``; ``display`` is the
    path or URI as the user gave it (for messages)."""

    fs: pafs.FileSystem
    root: str
    display: str
    is_uri: bool

    @property
    def name(self) -> str:
        """The directory's last path component."""
        return self.root.rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> str:
        """The path inside ``fs`` of ``root/part/...`` (empty parts are left out)."""
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def read_text(self, path: str) -> str | None:
        """The UTF-8 text of the file at ``path`` (inside ``fs``); None when it cannot be read."""
        try:
            with self.fs.open_input_stream(path) as stream:
                data = stream.read()
        except OSError:  # FileNotFoundError included
            return None
        return data.decode("utf-8", errors="replace")

    def listdir(self, path: str | None = None) -> list[pafs.FileInfo]:
        """What is directly in ``path`` (default: the root); [] when it cannot be listed."""
        try:
            return self.fs.get_file_info(pafs.FileSelector(path or self.root, recursive=False))
        except OSError:
            return []


def locate(path: str | PathLike[str]) -> Location:
    """The :class:`Location` of a local path (made absolute) or a storage URI.

    Raises:
        LossearchError: a URI pyarrow cannot open (``"cannot open storage URI ..."``).
    """
    text = str(path)
    if is_uri(text):
        try:
            fs, root = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise LossearchError(f"cannot open storage URI {text}: {e}") from None
        return Location(fs, root.rstrip("/") or "/", text, True)
    local = Path(text).expanduser().resolve()
    return Location(pafs.LocalFileSystem(), local.as_posix(), text, False)
