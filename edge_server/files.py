"""Writing the node's files: whole or not at all, with their mode from the first byte."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write `path` through a temporary file in its directory, created with `mode`.

    A reader sees the old file or the new one, never half of it; a private file (keys,
    passwords) is never readable by others, even briefly: mkstemp makes it 0600.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
