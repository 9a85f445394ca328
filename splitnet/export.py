"""Export a SavedModel that anyone can load: merged, reloaded, checked, atomic."""

from __future__ import annotations

import keras
import numpy as np

from splitnet.errors import SplitnetError
from splitnet.files import atomic_output, check_output
from splitnet.merge import merge_model


class ExportError(SplitnetError):
    """The exported SavedModel does not reproduce the model."""


def probe_inputs(model, batch=16, seed=0):
    """A fixed batch in the structure of `model`'s inputs (dict, list or one array).

    Float inputs are standard normal; integer and boolean ones (token ids,
    segment ids, padding masks) are ones, valid for any vocabulary. Axes of
    unknown size get 8.
    """
    rng = np.random.default_rng(seed)

    def make(tensor):
        shape = (batch,) + tuple(8 if d is None else d for d in tensor.shape[1:])
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if "float" in dtype:
            return rng.normal(size=shape).astype(dtype)
        return np.ones(shape, dtype=dtype)

    return keras.tree.map_structure(make, input_structure(model))


def input_structure(model):
    """The model's symbolic inputs as it takes them: a dict, a list, or one tensor."""
    try:
        return model.input  # Functional models keep the structure they were built with
    except (AttributeError, ValueError):  # a Sequential model never called on a tensor
        return model.inputs[0] if len(model.inputs) == 1 else list(model.inputs)


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
