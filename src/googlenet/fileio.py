"""Crash-safe file writing: a reader sees the old file or the new one, never a torn one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import first_line


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_DEFAULT_MODE = _default_file_mode()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync the file, then rename it over `path`.

    The temporary file lives in the same folder so the rename is atomic; on any error
    it is removed and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _DEFAULT_MODE)  # mkstemp makes 0600; written files are shared like any other
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_folder(path.parent)  # make the rename itself durable
    return path


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Make `path` a second name (hard link) for `source`'s bytes, replacing `path` atomically.

    No bytes are written, so it costs nothing however large the file. `source` can later be
    replaced by `atomic_write` (a rename) without touching `path`. False, with `path` as it
    was, where the file system has no hard links (the caller then writes a copy).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.unlink(tmp)  # mkstemp only reserved the name: the link takes it
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        _remove(tmp)
        return False
    _remove(tmp)  # still there when `path` already was a link to `source` (rename then does nothing)
    _fsync_folder(path.parent)
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_folder(folder: Path) -> None:
    try:  # make a rename durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


# torch's weights-only unpickler uses these words when it refuses to look up or call what a
# pickle names (how a file carries code); its other refusals are bytes it cannot parse.
REFUSED_OBJECT_WORDS = ("GLOBAL", "is blocked", "call reduce", "Can only create new object", "Can only build")


def load_error_reason(error: BaseException) -> str:
    """A short reason for a failed torch.load(weights_only=True), for one-line errors.

    torch's own message for a refused object goes on to suggest weights_only=False, the one
    thing that would run whatever code the file carries: say what happened instead.
    """
    text = str(error).strip()
    if "Weights only load failed" in text:
        if any(word in text for word in REFUSED_OBJECT_WORDS):
            return ("it holds pickled Python objects, not just tensors and plain data; refused without running "
                    "them (a file from an untrusted source may carry code)")
        return "a pickle torch cannot read as plain data: corrupt, truncated or not a checkpoint"
    if "PytorchStreamReader" in text or "zip archive" in text:
        return "not a readable zip archive: truncated, corrupt or not a PyTorch file"
    if isinstance(error, (KeyError, EOFError, UnicodeDecodeError)) or "load key" in text:
        # The legacy (non-zip) loader's errors: a byte it took for a pickle opcode (KeyError '101'),
        # or the file ended early. Neither text means anything to a user.
        return "neither a zip-format PyTorch file nor a pickle: not a checkpoint, or a truncated one"
    return first_line(error, 200)
