"""Files: load `.keras` models safely, write every output atomically.

Every output is written to a hidden temporary sibling and renamed into place
only once it is complete, so a crash or an error never leaves a half-written
file where the user expects a result, and never touches an existing one
unless asked to (`force`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
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


def check_output(path, force=False, suffix=None, probe=True):
    """Refuse, before any work, an output that could not be written at the end.

    That is: an existing `path` unless `force`, a missing parent folder, a
    wrong `suffix`, and (with `probe`) a folder this process cannot write in,
    tried by creating a file there: permission bits do not tell for root or
    read-only file systems.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise OutputError(f"cannot write to {path}: give the name of a new file or folder")
    if suffix is not None and path.suffix != suffix:
        raise OutputError(f"{path}: a Keras model file must be named NAME{suffix}")
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path} already exists; overwrite it with --force (force=True in Python)")
    if not path.parent.is_dir():
        problem = "is not a folder" if path.parent.exists() else "does not exist"
        raise OutputError(f"cannot write {path}: folder {path.parent} {problem}")
    if probe:
        trial = path.parent / f".{path.name}.probe-{secrets.token_hex(6)}"
        try:
            try:
                trial.touch(exist_ok=False)
            finally:
                trial.unlink(missing_ok=True)  # also when interrupted
        except OSError as exc:
            raise OutputError(f"cannot write in {path.parent}: {exc.strerror}") from None
    return path


@contextlib.contextmanager
def atomic_output(path, force=False, directory=False):
    """Yield a temporary sibling of `path`; move it into place if the block succeeds.

    Without `force`, the move never replaces anything: if another process
    created `path` meanwhile, the result is refused (`OutputError`) and theirs
    is kept.

    Args:
        path: The final file or folder.
        force: Replace an existing `path`.
        directory: Create the temporary path as an empty folder.

    Example:
        >>> with atomic_output("model.keras") as tmp:  # doctest: +SKIP
        ...     model.save(tmp)
    """
    path = check_output(path, force, probe=False)
    suffix = "" if directory else path.suffix  # Keras wants `.keras` at the end
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}{suffix}"
    if directory:
        try:
            tmp.mkdir()  # not mkdtemp: that makes the folder private (0700), and the result should not be
        except OSError as exc:
            raise OutputError(f"cannot write in {path.parent}: {exc.strerror}") from None
    try:
        yield tmp  # a file is created by the writer
        if force:
            _replace(tmp, path)
        elif not _rename(tmp, path, _RENAME_NOREPLACE):
            raise OutputError(f"{path} was created by someone else meanwhile; kept theirs, wrote nothing")
    except BaseException:
        _remove(tmp)
        raise


def _replace(tmp, path):
    if not os.path.lexists(path) or not (os.path.isdir(tmp) or os.path.isdir(path)):
        os.replace(tmp, path)  # atomic for files, even over an existing one
        return
    if _rename(tmp, path, _RENAME_EXCHANGE):  # atomic swap; tmp now holds the old one
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


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # Linux renameat2 flags


def _rename(a, b, flag):
    """Rename `a` to `b` atomically with Linux's renameat2(flag).

    Returns False when `b` exists (no-replace) or the swap is not possible;
    raises OSError for other failures.
    Where renameat2 is missing, no-replace falls back to a check then a
    rename (with a small race between the two), and an exchange is reported
    as not possible.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd = -100
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flag) == 0:
            return True
        error = ctypes.get_errno()
        if error == errno.EEXIST and flag == _RENAME_NOREPLACE:
            return False
        if error not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a real failure, not a missing feature
            if flag == _RENAME_EXCHANGE:
                return False  # the caller moves the old one aside instead
            raise OSError(error, os.strerror(error), os.fspath(b))
    if flag == _RENAME_EXCHANGE or os.path.lexists(b):
        return False
    os.rename(a, b)
    return True


@contextlib.contextmanager
def claimed_folder(path, force=False, unique=False):
    """Claim the output folder `path` before a long job, so that no other job takes it.

    The folder is created, empty, at once: creating a folder is atomic, so
    of two jobs one gets it and the other is refused before any work. The
    job fills it at the end with `atomic_output(path, force=True,
    directory=True)`. If the job fails, the folder is removed again while it
    is still empty. With `force`, an existing folder stays as it is until the
    end replaces it.

    Args:
        path: The folder.
        force: Accept an existing folder (replaced at the end).
        unique: Take the first free one of `path`, `path-2`, `path-3`, ...
            instead of refusing a taken name (for default run folders:
            two jobs started in the same second get different folders).

    Yields:
        The claimed folder's path.
    """
    path = Path(path)
    if unique:
        path, claimed = _first_free(path), True
    else:
        path = check_output(path, force)
        try:
            path.mkdir()
            claimed = True
        except FileExistsError:
            if not force:
                raise OutputError(f"{path} already exists; overwrite it with --force (force=True in Python)") from None
            if not path.is_dir():
                raise OutputError(f"{path} exists and is not a folder; a run writes a folder") from None
            claimed = False
    try:
        yield path
    except BaseException:
        if claimed:
            with contextlib.suppress(OSError):
                path.rmdir()  # only while it is still empty
        raise


@contextlib.contextmanager
def claimed_file(path):
    """Hold the output file `path` for one job until it ends, against a second job.

    A lock file `.NAME.lock` beside it, created atomically, holds this
    process's id and start time; a second job that wants `path` is refused
    before any work while that process lives. A lock whose process is gone
    (killed), or whose id now names another process (ids are reused, and a
    restarted container gives its first process the same id), is taken over.

    Raises:
        OutputError: another live process holds `path`.
    """
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    mine = path.with_name(f".{path.name}.lock-{os.getpid()}")
    try:
        mine.write_text(f"{os.getpid()} {_started(os.getpid()) or ''}".strip())
        for _ in range(2):
            try:
                os.link(mine, lock)  # creates the lock with its content, atomically, or fails
                break
            except FileExistsError:
                owner = _lock_owner(lock)
                if owner is not None:
                    raise OutputError(f"{path} is being written by another process (pid {owner}, lock {lock})") from None
                lock.unlink(missing_ok=True)  # its process is gone
        else:
            raise OutputError(f"cannot take the lock {lock}")
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent}: {exc.strerror}") from None
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield path
    finally:
        lock.unlink(missing_ok=True)


def _lock_owner(lock):
    """The id of the live process that wrote `lock`, or None if it is gone."""
    try:
        pid, *started = lock.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None  # unreadable: treat as stale
    if pid <= 0 or pid == os.getpid():
        return None  # not a process, or an earlier life of this process id
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    if started and _started(pid) not in (None, started[0]):
        return None  # the id now names a later process
    return pid


def _started(pid):
    """When process `pid` started (Linux: clock ticks since boot), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def _first_free(stem):
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{stem.parent} exists but is not a folder; give the output folder with -o") from None
    except OSError as exc:
        raise OutputError(f"cannot create {stem.parent}: {exc.strerror}") from None
    for n in range(1, 1000):
        path = stem if n == 1 else stem.with_name(f"{stem.name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot create {path}: {exc.strerror}") from None
        return path
    raise OutputError(f"no free folder name for {stem} after 999 tries")


SETTINGS = "splitnet/train.json"  # the archive member that holds `save_keras(settings=...)`


def save_keras(model, path, force=False, settings=None):
    """Save `model` as a `.keras` file atomically (a complete file or nothing).

    Args:
        model: The model.
        path: The `.keras` file.
        force: Replace an existing file.
        settings: A JSON-able mapping stored in the archive beside the model
            (Keras ignores it): the train settings `splitnet train` goes on
            with. Read it with `read_settings`.

    Example:
        >>> save_keras(model, "split.keras", settings={"epochs": 5})  # doctest: +SKIP
    """
    path = check_output(path, force, suffix=".keras", probe=False)  # writing at once tells
    with atomic_output(path, force) as tmp:
        model.save(tmp)
        if settings is not None:
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(SETTINGS, json.dumps(settings, indent=2))
    return path


def read_settings(path):
    """The settings `save_keras` stored in a `.keras` file, or None."""
    with zipfile.ZipFile(path) as archive:
        if SETTINGS not in archive.namelist():
            return None
        return json.loads(archive.read(SETTINGS))
