"""splitnet: freeze part of a Keras layer, exactly.

Example:
    >>> import splitnet
    >>> model = splitnet.build_model("configs/quickstart.yaml")  # doctest: +SKIP
    >>> splitnet.frozen_masks(model)["hidden"]["kernel"].shape   # doctest: +SKIP
    (32, 64)
"""

import importlib

from splitnet._startup import invoked_as_command

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "ModelError": "splitnet.errors",
    "SpecError": "splitnet.errors",
    "SplitnetError": "splitnet.errors",
    "export_saved_model": "splitnet.export",
    "grow_model": "splitnet.grow",
    "SplitDense": "splitnet.kinds.dense",
    "SplitEinsumDense": "splitnet.kinds.einsum",
    "SplitConv1D": "splitnet.kinds.conv",
    "SplitConv2D": "splitnet.kinds.conv",
    "SplitConv3D": "splitnet.kinds.conv",
    "SplitEmbedding": "splitnet.kinds.embedding",
    "SplitReversibleEmbedding": "splitnet.kinds.embedding",
    "merge_model": "splitnet.merge",
    "merged_weights": "splitnet.merge",
    "load_model": "splitnet.saving",
    "Spec": "splitnet.spec",
    "load_spec": "splitnet.spec",
    "build_model": "splitnet.split",
    "frozen_masks": "splitnet.split",
    "split_model": "splitnet.split",
    "verify": "splitnet.verify",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'splitnet' has no attribute {name!r}")


def import_all():
    """Import every public name now; this also registers splitnet's layers with Keras."""
    for name in _PUBLIC:
        __getattr__(name)


# `import splitnet` registers the split layers with Keras, so that
# `keras.saving.load_model` reads split models; only the command defers it
# (see `_startup`).
if not invoked_as_command():
    import_all()
