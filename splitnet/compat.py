"""Every use of private Keras API in splitnet, in one place.

Each function says which public API is missing. `check()` touches all of
them on a tiny model, so a Keras upgrade that removes one fails one test
(tests/test_compat.py) with a message naming it, instead of failing
somewhere deep inside a split.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np

# Not exported by name: the class of models built from a graph of layers
# (`keras.Model(inputs, outputs)`), which `keras.models.clone_model` can rebuild.
from keras.src.models.functional import Functional  # noqa: F401

# The files of a `.keras` archive (Keras' saving_lib names them; no public constants).
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_GROUP = "optimizer/vars"  # where `Optimizer.save_own_variables` lands in WEIGHTS_FILE


def sublayers(layer):
    """The layers `layer` holds directly (attributes, lists, a Functional graph).

    Public API covers `Model.layers` only; a plain `Layer` (keras-hub's
    `TransformerEncoder`, Keras' `MultiHeadAttention`) has no public list of
    its sub-layers.
    """
    if isinstance(layer, keras.Sequential):
        return list(layer._layers)  # `.layers` hides its InputLayer, whose name is part of its config
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return list(layer._flatten_layers(include_self=False, recursive=False))


def graph_of(model):
    """The Functional graph that runs `model` (itself, or a Sequential's), or None.

    Keras keeps a built Sequential's graph in `_functional`; no public API
    exposes it.
    """
    if isinstance(model, Functional):
        return model
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return None


def graph_nodes(graph):
    """The nodes of a Functional graph, each after the nodes it reads from.

    Public API has `graph.operations` but not the calls (nodes) themselves,
    which a layer called twice has two of.
    """
    by_depth = graph._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def node_kwargs(node):
    """The keyword arguments a layer was called with in a graph (`reverse=True`, ...)."""
    return dict(node.arguments.kwargs)


def set_keras_mask(x, mask):
    """Attach a mask to a tensor, as `ReversibleEmbedding.call` does (not exported by Keras)."""
    from keras.src.backend import set_keras_mask as set_mask

    set_mask(x, mask)


def reads_masked_input(layer):
    """Whether a layer is called, in a graph, on a tensor that carries a Keras mask.

    A layer's calls (`_inbound_nodes`) and a symbolic tensor's mask have no
    public API.
    """
    from keras.src.backend import get_keras_mask

    return any(get_keras_mask(t) is not None for node in layer._inbound_nodes for t in node.input_tensors)


def producers(layer):
    """`[(layer, output index)]` that a layer called once in a graph reads its inputs from.

    A call's input tensors (`_inbound_nodes`, `_keras_history`) have no public API.
    The call is the layer's last node (a nested model may hold one of its own first).
    """
    node = layer._inbound_nodes[-1]
    return [(t._keras_history.operation, t._keras_history.tensor_index) for t in node.input_tensors]


def take_keras_mask(x):
    """The Keras mask of `x`, removed from it (as `MultiHeadAttention.call` does)."""
    from keras.src.backend import get_keras_mask, set_keras_mask as set_mask

    mask = get_keras_mask(x)
    set_mask(x, None)
    return mask


def attention_uses_gate(layer):
    """`MultiHeadAttention(use_gate=True)`: not in its config under a public attribute."""
    return bool(getattr(layer, "_use_gate", False))


def attention_sliding_window(layer):
    return getattr(layer, "_sliding_window", None)


def attention_mask(layer, query, value, query_mask, value_mask, key_mask, attention_mask, use_causal_mask):
    """`MultiHeadAttention`'s own mask logic (a private method)."""
    return layer._compute_attention_mask(
        query,
        value,
        query_mask=query_mask,
        value_mask=value_mask,
        key_mask=key_mask,
        attention_mask=attention_mask,
        use_causal_mask=use_causal_mask,
    )


def has_assets(model):
    """Whether anything the model holds saves assets (a vocabulary), as Keras' saving checks.

    `_flatten_layers` also reaches layers that are not in the graph, such as a
    keras-hub task's preprocessor and its tokenizer.
    """
    return any(hasattr(layer, "save_assets") for layer in model._flatten_layers(include_self=True, recursive=True))


@contextlib.contextmanager
def unlocked(layer):
    """Allow `add_weight` on a built layer (no public API; Keras' own
    `Dense.enable_lora` and `quantize` unlock the same tracker)."""
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def forget_variables(layer, attributes):
    """Stop tracking a built layer's variables held in `attributes` and drop them.

    Keras keeps a layer's main weight in a private attribute (`Dense._kernel`,
    `Conv2D._kernel`, `EinsumDense._kernel`, `Embedding._embeddings`; the
    public names are properties); `del layer.attr` would untrack publicly but
    runs `gc.collect()` each time (seconds for a model with many layers).
    The first attribute (the main weight) must be there; the others (a
    bias) may be missing or hold None.
    """
    for i, attribute in enumerate(attributes):
        if attribute not in layer.__dict__ and i > 0:
            continue
        if attribute not in layer.__dict__:
            raise RuntimeError(
                f"Keras {keras.__version__}: a built {type(layer).__name__} has no {attribute!r} attribute "
                "(splitnet/compat.py)"
            )
        value = layer.__dict__.pop(attribute)
        if isinstance(value, keras.Variable):
            layer._untrack_variable(value)


# --------------------------------------------------------------------------
# `.keras` archives. A split layer writes a note (JSON bytes as a uint8 array)
# beside its variables; these read and strip them with h5py (Keras' own
# dependency) because Keras has no public API to walk a weights file.


def _weights(file, mode="r"):
    import h5py

    return h5py.File(file, mode)


def _find(h5, name):
    """`[(group path, value)]` of every dataset called `name` in an open weights file."""
    found = []

    def visit(item_name, item):
        if item_name.rsplit("/", 1)[-1] == name and hasattr(item, "shape"):
            found.append((item_name.rsplit("/", 1)[0] if "/" in item_name else "", item[()]))

    h5.visititems(visit)
    return found


@contextlib.contextmanager
def _archived_weights(path):
    """The archive's weights file, open for reading in place (not copied into memory)."""
    with zipfile.ZipFile(path) as zf:
        if WEIGHTS_FILE not in zf.namelist():
            yield None
            return
        with zf.open(WEIGHTS_FILE) as member, _weights(member) as h5:
            yield h5


def read_notes(path, name):
    """`[(group path, note)]`: every dataset called `name` in the archive's weights file,
    decoded as JSON, with the path of the layer that wrote it."""
    with _archived_weights(path) as h5:
        if h5 is None:
            return []
        return [(group, json.loads(bytes(value).decode("utf-8"))) for group, value in _find(h5, name)]


def read_config(path):
    """The archive's `config.json` as a dict."""
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(CONFIG_FILE))


def read_optimizer_variables(path):
    """The optimizer's saved variables, in order, or None when the archive has none."""
    with _archived_weights(path) as h5:
        if h5 is None or OPTIMIZER_GROUP not in h5:
            return None
        group = h5[OPTIMIZER_GROUP]
        return [group[str(i)][()] for i in range(len(group))]


def weight_paths(model, layers, folder):
    """`{group path in a weights file: layer}` for `layers` of `model`, as Keras' own saving names them.

    Keras files each layer's weights under a path it derives while walking
    the model (attribute names, class names, counters); there is no public
    way to ask for it. So each layer is given a subclass, under the same
    class name, that writes a marker instead of its weights, and Keras
    writes a weights file: the markers land where the layers' weights would.
    """
    marker = "splitnet_marker"
    originals = [type(layer) for layer in layers]
    try:
        for i, layer in enumerate(layers):
            cls = type(layer)

            def save_own_variables(self, store, _i=i):
                store[marker] = np.array([_i])

            layer.__class__ = type(cls.__name__, (cls,), {"save_own_variables": save_own_variables})
        path = f"{folder}/markers.weights.h5"
        model.save_weights(path)
    finally:
        for layer, cls in zip(layers, originals):
            layer.__class__ = cls
    with _weights(path) as h5:
        return {group: layers[int(value[0])] for group, value in _find(h5, marker)}


def rewrite_archive(src, dst, *, config=None, drop=()):
    """Copy a `.keras` archive, changing its config and dropping datasets.

    Streams member by member, with the weights file edited on disk beside
    `dst`, so a large model is never held in memory twice.

    Args:
        src, dst: Archive paths.
        config: `fn(dict) -> dict` applied to the model config, or None.
        drop: Dataset names to delete wherever they are in the weights file.
    """
    dst = Path(dst)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename == CONFIG_FILE and config is not None:
                zout.writestr(info, json.dumps(config(json.loads(zin.read(info)))))
            elif info.filename == WEIGHTS_FILE and drop:
                scratch = dst.with_name(dst.name + ".weights.h5")
                with zin.open(info) as member, open(scratch, "wb") as out:
                    shutil.copyfileobj(member, out, 1 << 24)
                with _weights(scratch, "r+") as h5:
                    found = []
                    h5.visititems(lambda n, item: found.append(n) if n.rsplit("/", 1)[-1] in drop else None)
                    for item_name in found:
                        del h5[item_name]
                zout.write(scratch, info.filename)
                scratch.unlink()
            else:
                with zin.open(info) as member, zout.open(info, "w") as out:
                    shutil.copyfileobj(member, out, 1 << 24)


def _built(layer, shape):
    layer.build(shape)
    return layer


def check():
    """Touch every private attribute used above; raise naming the first one missing."""
    inputs = keras.Input((2,))
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(inputs))
    mha = keras.layers.MultiHeadAttention(1, 2)
    needs = {
        "Sequential._layers": lambda: keras.Sequential([keras.Input((2,))])._layers,
        "Layer._flatten_layers": lambda: mha._flatten_layers,
        "Layer._tracker.unlock/lock": lambda: (dense._tracker.unlock, dense._tracker.lock),
        "Layer._untrack_variable": lambda: dense._untrack_variable,
        "Dense._kernel": lambda: dense.__dict__["_kernel"],
        "Conv2D._kernel": lambda: _built(keras.layers.Conv2D(1, 1), (1, 2, 2, 1)).__dict__["_kernel"],
        "EinsumDense._kernel": lambda: _built(keras.layers.EinsumDense("ab,bc->ac", 2), (1, 2)).__dict__["_kernel"],
        "Embedding._embeddings": lambda: _built(keras.layers.Embedding(2, 2), (1,)).__dict__["_embeddings"],
        "MultiHeadAttention._compute_attention_mask": lambda: mha._compute_attention_mask,
        "MultiHeadAttention._use_gate": lambda: mha._use_gate,
        "MultiHeadAttention._sliding_window": lambda: mha.__dict__["_sliding_window"],
        "Functional._nodes_by_depth": lambda: graph_nodes(model),
        "Node.arguments.kwargs": lambda: node_kwargs(graph_nodes(model)[-1]),
        "Sequential._functional": lambda: graph_of(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])).inputs,
        "Layer._inbound_nodes / Node.input_tensors": lambda: dense._inbound_nodes[0].input_tensors,
        "backend.get_keras_mask": lambda: __import__("keras.src.backend", fromlist=["get_keras_mask"]).get_keras_mask,
    }
    # `kinds/attention.py` replaces `MultiHeadAttention.call` on split instances
    # with one of the same arguments; a new argument must not go unnoticed.
    expected = (
        "self", "query", "value", "key", "query_mask", "value_mask", "key_mask", "attention_mask",
        "return_attention_scores", "training", "use_causal_mask",
    )
    needs["MultiHeadAttention.call arguments"] = lambda: (
        None if tuple(inspect.signature(keras.layers.MultiHeadAttention.call).parameters) == expected
        else {}["different"]
    )
    for name, get in needs.items():
        try:
            get()
        except (AttributeError, KeyError) as exc:
            raise RuntimeError(
                f"Keras {keras.__version__} no longer has {name}, which splitnet uses "
                f"(splitnet/compat.py): {exc}"
            ) from exc
    del model
