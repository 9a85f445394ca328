"""Saving, loading and copying split models through Keras' own `.keras` format.

A split model is saved with plain `model.save` (or `ModelCheckpoint`): each
split layer writes the plain layer's weights plus a note of its split. A
split layer in a Functional graph is also in the model config, so
`keras.saving.load_model` (after `import splitnet`) restores it. One held
by a subclassed layer's Python code is not: its parent rebuilds a plain
layer on load, and Keras refuses the note ("expected 2 variables, but
received 3"), so such a model cannot silently come back unsplit.
`load_model` handles both: it loads the archive without the notes, splits
the noted layers again in place, and restores the optimizer state.

Copies (what `split_model` and `merge_model` return) are made the way Keras
rebuilds a saved model, so they keep what Keras keeps: the model's class
(keras-hub's `BertTextClassifier` stays one, with its preprocessor and
vocabulary), layer and input names, configs, and compile settings (see
`_copy` for the three ways, cheapest first).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np

from splitnet import compat, kinds, tree
from splitnet.compat import Functional
from splitnet.errors import ModelError


def load_model(path, compile=True, safe_mode=True, custom_objects=None):
    """Load a `.keras` model, split layers and optimizer state included.

    Args:
        path: A `.keras` file saved by `model.save` (or `ModelCheckpoint`),
            split or not.
        compile: Restore the compile settings and the optimizer state.
        safe_mode: Keras' `safe_mode` (True refuses `Lambda` layers).
        custom_objects: As for `keras.saving.load_model`.

    Returns:
        The model, with every layer that was split when it was saved split
        again (bit-identical values) and, with `compile`, its optimizer
        state, so training resumes where it stopped. A model whose split
        layers all sit in its graph loads exactly as `keras.saving.load_model`
        loads it.

    Example:
        >>> model = splitnet.load_model("checkpoint.keras")  # doctest: +SKIP
        >>> model.fit(x, y)  # doctest: +SKIP
    """
    notes = [found for kind in kinds.KINDS for found in compat.read_notes(path, kind.note)]
    config = compat.read_config(path)
    if len(notes) <= _split_entries(config):  # every split layer is in the config
        return keras.saving.load_model(path, compile=compile, safe_mode=safe_mode, custom_objects=custom_objects)
    with _scratch() as folder:
        plain = folder / "plain.keras"
        compat.rewrite_archive(path, plain, drop={kind.note for kind in kinds.KINDS})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")  # restored below
            model = keras.saving.load_model(plain, compile=False, safe_mode=safe_mode, custom_objects=custom_objects)
        _install_noted(model, notes, folder)
    compile_config = config.get("compile_config")
    if compile and compile_config:
        _compile(model, compile_config)
        _restore_optimizer(model, compat.read_optimizer_variables(path), path)
    return model


def _install_noted(model, notes, folder):
    """Split again the noted layers that the model config did not restore.

    A note sits where its layer's weights sit in the file, which is how the
    layer is found again: names are no guide (a layer made in a parent's
    Python code may get a new automatic name on every load).
    """
    candidates = [layer for _, layer in tree.walk(model) if kinds.any_kind_of(layer)]
    located = compat.weight_paths(model, candidates, folder)
    for group, note in notes:
        layer, kind = located.get(group), kinds.by_name(note["kind"])
        if layer is None:
            raise ModelError(f"the saved model has a split layer {note['key']!r} that its loaded form lacks")
        if not isinstance(layer, kind.split):  # else: restored from the model config
            kind.install(layer, kind.plan_from_note(note), note["key"])
        _rename_along(model, layer, note["key"])
    kinds.after_split(model)


def _rename_along(model, layer, key):
    """Give the layer and its parents the names they had when it was split.

    Keras names a layer made in a parent's Python code anew on each load
    (`dense` -> `dense_6`), and a layer whose config leaves out `name` too;
    the split's path is what the rules, masks and `verify` refer to.
    """
    if not key:
        return  # made from the model config, which has its name
    layers, names = tree.chain(model, layer), key.split("/")
    if layers is not None and len(layers) == len(names):
        for each, name in zip(layers, names):
            each.name = name


def _split_entries(config):
    """How many split layers a model config describes (each is saved once, shared or not)."""
    if isinstance(config, dict):
        names = {keras.saving.get_registered_name(cls) for kind in kinds.KINDS for cls in kind.split}
        return int(config.get("registered_name") in names) + sum(_split_entries(v) for v in config.values())
    if isinstance(config, list):
        return sum(_split_entries(v) for v in config)
    return 0


def _compile(model, compile_config):
    """`compile` with saved settings, as `Model.compile_from_config` does, also for
    models whose `compile` is their own (keras-hub tasks), which Keras skips."""
    model.compile(**keras.saving.deserialize_keras_object(compile_config))


def recompile(copy, original):
    """Compile `copy` as `original` is compiled, with a fresh optimizer (not built:
    `split_model` changes the variables first)."""
    if getattr(original, "compiled", False) and original.get_compile_config():
        _compile(copy, original.get_compile_config())


def compile_like(copy, original):
    """`recompile`, then build the fresh optimizer for `copy`'s (split or merged)
    variables, so it is saved with the model and loads without Keras' warning."""
    recompile(copy, original)
    if getattr(copy, "optimizer", None) is not None:
        copy.optimizer.build(copy.trainable_variables)


def _restore_optimizer(model, saved, path):
    """Build the optimizer for the split variables and fill it with the saved state."""
    model.optimizer.build(model.trainable_variables)
    if saved is None:
        return
    if len(saved) != len(model.optimizer.variables):
        raise ModelError(
            f"{path}: the saved optimizer has {len(saved)} variables but the split model needs "
            f"{len(model.optimizer.variables)}; was it saved by another version of splitnet?"
        )
    model.optimizer.load_own_variables({str(i): value for i, value in enumerate(saved)})


@contextlib.contextmanager
def _scratch():
    with tempfile.TemporaryDirectory(prefix="splitnet-") as folder:
        yield Path(folder)


def _classes(model):
    """`{class name: class}` of the user's own classes in the model, so a copy needs no registration."""
    classes = {}
    for layer in [model] + [layer for _, layer in tree.walk(model)]:
        cls = type(layer)
        if not cls.__module__.startswith(("keras", "splitnet")):  # Keras' and keras-hub's are registered
            classes.setdefault(cls.__name__, cls)
    return classes


def _cannot_copy(model, why, exc=None):
    """The error for a model that cannot be copied: why, and Keras' own reason if any."""
    reason = f": {_first_line(exc)}" if exc is not None else ""
    return ModelError(f"cannot copy model {model.name!r}: {why}{reason}")


def _save(model, path):
    try:
        model.save(path)
    except Exception as exc:  # noqa: BLE001 - Keras' reason, with the model's name
        raise _cannot_copy(model, "Keras cannot save it", exc) from exc


def _first_line(exc):
    """The line that says what went wrong (for Keras' nested deserialization errors, the innermost)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line[len("Exception encountered:"):].strip() for line in lines if line.startswith("Exception encountered:")]
    return (causes or lines or [type(exc).__name__])[-1 if causes else 0]


def copy_model(model):
    """An independent copy of `model` (split or not): same class, names, weights, compile
    settings (with a fresh optimizer).

    Example:
        >>> twin = copy_model(model)  # doctest: +SKIP
    """
    return _copy(model, plain=False)


def plain_copy(model):
    """A copy in which every split layer is its plain layer again (what `merge_model` returns).

    The copy is compiled from the model's compile settings with a fresh
    optimizer, built (the split one's state does not fit the plain weights;
    a built one is saved with the model and loads without Keras' warning).
    """
    copy = _copy(model, plain=True)  # compiled by `_copy`
    if getattr(copy, "optimizer", None) is not None:
        copy.optimizer.build(copy.trainable_variables)
    return copy


def _copy(model, plain):
    """Copy `model` the cheapest way that keeps everything Keras keeps.

    1. From its config, in memory, with the weights assigned layer by layer:
       fast, and the copy costs no more memory than the model.
    2. Through a `.keras` archive, when something in the model keeps assets
       (a tokenizer's vocabulary), which only Keras' saving carries.
    3. With `keras.models.clone_model`, when Keras cannot rebuild the model
       from its config faithfully (a layer shared between a nested model and
       the outer graph comes back as two layers).
    """
    copy = None if compat.has_assets(model) else _copy_by_config(model, plain)
    if copy is None:
        copy = _copy_by_archive(model, plain)
    if copy is None:
        copy = _copy_by_cloning(model, plain)
    recompile(copy, model)
    return copy


def rebuild(model, config):
    """A new model from `config`, a (changed) serialization of `model`; not compiled.

    The model is the caller's own object, not a file from elsewhere, so
    nothing untrusted is deserialized (`safe_mode=False` lets Lambda layers
    be copied).
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a `build\\(\\)` method")
            return keras.saving.deserialize_keras_object(config, custom_objects=_classes(model), safe_mode=False)
    except Exception as exc:  # noqa: BLE001
        raise _cannot_copy(model, "Keras cannot rebuild it from its config", exc) from exc


def _copy_by_config(model, plain):
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)  # compiled by `recompile`, with a fresh optimizer
    copy = rebuild(model, _plain_config(config) if plain else config)
    return copy if _fill(model, copy, plain) else None


def _copy_by_archive(model, plain):
    with _scratch() as folder:
        path, copy_path = folder / "model.keras", folder / "copy.keras"
        _save(model, path)
        # Split layers write the plain layers' weights plus a note; dropping
        # the notes gives the plain model's archive, with the split classes
        # still named in the config unless `plain`.
        compat.rewrite_archive(
            path, copy_path, config=_plain_config if plain else None, drop={kind.note for kind in kinds.KINDS}
        )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Skipping nested container")
                # A model that compiles itself (keras-hub tasks) has an optimizer
                # now, which cannot take the saved state; `recompile` replaces it.
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                # The model is the caller's own object, not a file from elsewhere:
                # nothing untrusted is deserialized, so Lambda layers may be copied.
                copy = keras.saving.load_model(copy_path, compile=False, safe_mode=False, custom_objects=_classes(model))
        except ValueError as exc:
            if "could not be loaded" in str(exc):
                return None  # Keras' known gap: see `_copy_by_cloning`
            raise _cannot_copy(model, "Keras cannot load it back", exc) from exc
        except Exception as exc:  # noqa: BLE001
            raise _cannot_copy(model, "Keras cannot load it back", exc) from exc
    if not _fill(model, copy, plain, assign=False):
        raise _cannot_copy(model, "it does not come back from Keras' format the same")
    return copy


def _copy_by_cloning(model, plain):
    """`keras.models.clone_model`, one clone per layer object, so shared layers stay shared.

    This keeps layer names but not a Functional subclass's class, nor assets;
    models that have those come back through the config or the archive.
    """
    clones = {}

    def clone_function(layer):
        if id(layer) not in clones:
            kind = kinds.split_kind_of(layer)
            if isinstance(layer, (Functional, keras.Sequential)):
                clones[id(layer)] = keras.models.clone_model(layer, clone_function=clone_function)
            elif kind is not None and plain:
                entry = kind.plain_entry(keras.saving.serialize_keras_object(layer))
                clones[id(layer)] = keras.saving.deserialize_keras_object(entry)
            else:
                clones[id(layer)] = layer.__class__.from_config(layer.get_config())
        return clones[id(layer)]

    try:
        copy = clone_function(model)
    except Exception as exc:  # noqa: BLE001
        raise _cannot_copy(model, "keras.models.clone_model fails", exc) from exc
    if not _fill(model, copy, plain):
        raise _cannot_copy(model, "its clone does not have the same layers")
    return copy


def _fill(model, copy, plain, assign=True):
    """Make `copy` the twin of `model`: names, split layers, weights. False if the structures differ.

    Layers are paired in walk order (the copy has the same structure, so the
    same order). A twin gets the original's name where Keras changed it: a
    custom layer whose `get_config` leaves out `name` comes back with a new
    one (`transformer_block` -> `transformer_block_1`), and `clone_model`
    names inputs anew.
    """
    originals, twins = list(tree.walk(model)), list(tree.walk(copy))
    if len(originals) != len(twins):
        return False
    if any(type(a).__name__ != type(b).__name__ for (_, a), (_, b) in zip(originals, twins)):
        return False
    for (key, a), (_, b) in zip(originals, twins):
        if a.name != b.name:
            b.name = a.name
        kind = kinds.split_kind_of(a)
        if kind is not None and not plain and not isinstance(b, kind.split):
            kind.install(b, a.plan, key)  # held by Python code: not in the config
    if not plain:
        kinds.after_split(copy)
    if not assign:
        return True
    for a, b in [(model, copy)] + [(a, b) for (_, a), (_, b) in zip(originals, twins)]:
        kind = kinds.split_kind_of(a)
        values = kind.merged_weights(a) if kind is not None and plain else [np.asarray(w) for w in tree.own_weights(a)]
        targets = tree.own_weights(b)
        if [tuple(v.shape) for v in values] != [tuple(t.shape) for t in targets]:
            return False
        for variable, value in zip(targets, values):
            variable.assign(value)
    return True


def _plain_config(node):
    """A model config with every serialized split layer replaced by its plain layer."""
    if isinstance(node, dict):
        for kind in kinds.KINDS:
            if node.get("registered_name") in {keras.saving.get_registered_name(cls) for cls in kind.split}:
                node = kind.plain_entry(node)
        return {k: _plain_config(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain_config(v) for v in node]
    return node


def config_entry(config, key):
    """The serialized (nested) model or layer at `key` ("" for the top)."""
    entry = config
    for part in [p for p in key.split("/") if p]:
        entry = config_child(entry, part)
        if entry is None:
            raise ModelError(f"{key!r} is not in the model's config")
    return entry


def config_child(entry, name):
    """The serialized layer `name` that `entry` lists in its config (`layers`, or an
    argument such as a keras-hub task's `backbone`), or None."""
    config = entry.get("config", {})
    candidates = list(config.get("layers", [])) + [v for v in config.values() if isinstance(v, dict)]
    for child in candidates:
        if isinstance(child.get("config"), dict) and child["config"].get("name") == name:
            return child
    return None
