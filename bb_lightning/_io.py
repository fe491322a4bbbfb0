"""The one atomic file writer: every file the library writes (exported configs, plots, CSV, sidecars) goes through it.

The data goes to a temporary file in the target's folder, is flushed to disk, then published under the target name
in one step, so a crash or a full disk never leaves a half-written file (nor a stray temporary).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _publish_new(tmp: Path, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path`` unless that exists (atomically where hard links work)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.") from None
    except OSError:  # no hard links here (some network or FAT file systems)
        if path.exists():
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; missing parent folders are created.

    Args:
        path: the target file.
        data: text (UTF-8) or bytes.
        overwrite: replace an existing file. Otherwise an existing ``path`` raises `FileExistsError`, also when
            another process creates it while this one writes (published with a hard link, which fails if the name
            exists; on file systems without hard links, an existence check right before the rename).

    Returns:
        ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def unique_path(path: str | os.PathLike) -> Path:
    """``path``, or ``<stem>-v1<suffix>``, ``-v2``, ... if it exists: an export never replaces an older one."""
    path = Path(path)
    if not path.exists():
        return path
    i = 1
    while (candidate := path.with_name(f"{path.stem}-v{i}{path.suffix}")).exists():
        i += 1
    return candidate


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["atomic_write", "unique_path"]
