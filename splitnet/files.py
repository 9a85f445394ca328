"""Files: load `.keras` models safely, write every output atomically.

Every output is written to a hidden temporary sibling and renamed into place
only once it is complete, so a crash or an error never leaves a half-written
file where the user expects a result, and never touches an existing one
unless asked to (`force`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import tempfile
import zipfile
from pathlib import Path

from splitnet import saving
from splitnet.errors import InputError
from splitnet.spec import first_line


class ModelFileError(InputError):
    """A file cannot be loaded as a Keras model."""


def load_keras(path, compile=True):
    """Load a `.keras` model with `safe_mode=True` (no Lambda, no pickle), split layers included.

    Raises:
        ModelFileError: the file is missing or not a loadable Keras archive.

    Example:
        >>> model = load_keras("split.keras")  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelFileError(f"{path}: expected a Keras model file (.keras)")
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a Keras archive (a .keras file is a zip archive)")
    try:
        return saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - any failure means: not a loadable Keras model
        raise ModelFileError(f"cannot load {path} as a Keras model: {first_line(exc)}") from None


class OutputError(InputError):
    """An output path cannot be written (exists without `force`, missing folder)."""


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def check_output(path, force=False, suffix=None):
    """Refuse, before any work, an output that could not be written at the end.

    That is: an existing `path` unless `force`, a missing parent folder, a
    folder this process cannot write in (tried by creating a file there:
    permission bits do not tell for root or read-only file systems), and a
    wrong `suffix`.
    """
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise OutputError(f"{path}: a Keras model file must end in {suffix}")
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path} already exists; overwrite it with --force (force=True in Python)")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.probe-", dir=path.parent):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent}: {exc.strerror}") from None
    return path


@contextlib.contextmanager
def atomic_output(path, force=False, directory=False):
    """Yield a temporary sibling of `path`; move it into place if the block succeeds.

    Args:
        path: The final file or folder.
        force: Replace an existing `path`.
        directory: Create the temporary path as an empty folder.

    Example:
        >>> with atomic_output("model.keras") as tmp:  # doctest: +SKIP
        ...     model.save(tmp)
    """
    path = check_output(path, force)
    suffix = "" if directory else path.suffix  # Keras wants `.keras` at the end
    try:
        if directory:
            # Not mkdtemp: that makes the folder private (0700), and the result should not be.
            tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
            tmp.mkdir()
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
            os.close(fd)
            os.unlink(name)  # writers expect to create the file themselves
            tmp = Path(name)
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent}: {exc.strerror}") from None
    try:
        yield tmp
        _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _replace(tmp, path):
    if not os.path.lexists(path) or not (os.path.isdir(tmp) or os.path.isdir(path)):
        os.replace(tmp, path)  # atomic for files, even over an existing one
        return
    if _exchange(tmp, path):  # atomic swap (Linux); tmp now holds the old one
        _remove(tmp)
        return
    # Elsewhere a folder cannot be swapped in one step: move the old one aside first.
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    _remove(old)


def _exchange(a, b):
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False if unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def save_keras(model, path, force=False):
    """Save `model` as a `.keras` file atomically (a complete file or nothing).

    Example:
        >>> save_keras(model, "split.keras")  # doctest: +SKIP
    """
    path = check_output(path, force, suffix=".keras")
    with atomic_output(path, force) as tmp:
        model.save(tmp)
    return path
