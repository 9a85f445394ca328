"""Write results atomically: `.keras` files and checked SavedModel exports.

Every output is written to a hidden temporary sibling and renamed into place
only once it is complete (and, for exports, reloaded and checked), so a
crash or an error never leaves a half-written file where the user expects a
result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from splitnet.errors import InputError, SplitnetError
from splitnet.merge import merge_model


class OutputError(InputError):
    """An output path cannot be written (exists without `force`, missing folder)."""


class ExportError(SplitnetError):
    """The exported SavedModel does not reproduce the model."""


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def check_output(path, force=False):
    """Refuse an existing `path` unless `force`, and a missing parent folder."""
    path = Path(path)
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path} already exists; pass --force (force=True) to overwrite it")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
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
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
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
    # A folder cannot be swapped in one step: move the old one aside first.
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    _remove(old)


def save_keras(model, path, force=False):
    """Save `model` as a `.keras` file atomically (a complete file or nothing).

    Example:
        >>> save_keras(model, "split.keras")  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise OutputError(f"{path}: a Keras model file must end in .keras")
    with atomic_output(path, force) as tmp:
        model.save(tmp)
    return path


def probe_inputs(model, batch=16, seed=0):
    """A fixed random batch shaped like `model`'s inputs (variable axes: 8)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model.inputs:
        shape = (batch,) + tuple(8 if d is None else d for d in tensor.shape[1:])
        if "int" in str(tensor.dtype):
            arrays.append(np.zeros(shape, dtype=str(tensor.dtype)))
        else:
            arrays.append(rng.normal(size=shape).astype(str(tensor.dtype)))
    return arrays[0] if len(arrays) == 1 else arrays


def max_difference(a, b):
    """Largest absolute difference between two (nests of) arrays."""
    a, b = keras.tree.flatten(a), keras.tree.flatten(b)
    return max(float(np.max(np.abs(np.asarray(x, "float64") - np.asarray(y, "float64")))) for x, y in zip(a, b))


def export_saved_model(model, path, *, force=False, rtol=1e-5, atol=1e-6):
    """Merge `model` and export it as a TensorFlow SavedModel, checked and atomic.

    The merged model is exported with `model.export(format="tf_saved_model")`
    (a `serve` endpoint and a `serving_default` signature), reloaded with
    `tf.saved_model.load`, and its outputs on a probe batch are compared with
    the merged model's before the export is moved into place. The SavedModel
    needs neither splitnet nor Keras to load.

    Args:
        model: A split or plain Functional/Sequential model.
        path: The export folder; must not exist unless `force`.
        force: Replace an existing folder.
        rtol, atol: Tolerance of the reload check.

    Returns:
        `(merged_model, max_abs_difference)`.

    Raises:
        OutputError: `path` exists (without `force`) or cannot be written.
        ExportError: the reloaded export does not reproduce the model.

    Example:
        >>> merged, diff = export_saved_model(split, "export/")  # doctest: +SKIP
    """
    import tensorflow as tf

    merged = merge_model(model)
    check_output(path, force)
    with atomic_output(path, force, directory=True) as tmp:
        merged.export(str(tmp), format="tf_saved_model", verbose=False)
        probe = probe_inputs(merged)
        expected = merged(probe, training=False)
        reloaded = tf.saved_model.load(str(tmp))
        got = reloaded.serve(probe)
        diff = max_difference(got, expected)
        for g, e in zip(keras.tree.flatten(got), keras.tree.flatten(expected)):
            if not np.allclose(np.asarray(g), np.asarray(e), rtol=rtol, atol=atol):
                raise ExportError(f"the reloaded SavedModel differs from the model by up to {diff:.3g}")
        del reloaded
    return merged, diff
