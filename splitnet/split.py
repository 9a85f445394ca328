"""Split layers into trainable and frozen pieces: `split_model`, `build_model`, `frozen_masks`.

Each named layer is planned by its kind (`splitnet.kinds`), then split in one
of two forms (`form`):

* functional (`splitnet.functional`): the model is rebuilt from its config
  with the layer replaced by a nested model of plain Keras pieces; for layers
  that sit in a plain Functional or Sequential graph.
* in place: the model is copied as Keras would rebuild it (same class, names
  and configs; see `saving.copy_model`) and the layer object, wherever it is
  (in a graph or in a subclassed layer's Python code), becomes its kind's
  split class.

`auto`, the default, takes the functional form wherever it applies.
"""

from __future__ import annotations

import re

import keras

from splitnet import functional, kinds, saving, spec as spec_lib, tree
from splitnet.errors import ModelError
from splitnet.files import ModelFileError, load_keras


def frozen_masks(model):
    """Where each layer of a model is frozen, in the plain layer's coordinates.

    Args:
        model: Any model; split layers and plain layers that do not train
            (e.g. `trainable = False`) are reported.

    Returns:
        `{layer_key: {weight name: bool array}}` with True where the entry
        is frozen, for every layer of a splittable kind that has frozen
        entries: "kernel" and "bias" (shape (0,) without bias) for Dense,
        Conv and EinsumDense; "embeddings" (and an untied
        ReversibleEmbedding's "reverse_embeddings") for embeddings. Keys are
        paths: `outer/inner` inside nested models and layers.
        A piece counts as frozen when `fit` would not train it, whatever
        the reason (the plan, or `trainable = False` on it or a parent).

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> masks = splitnet.frozen_masks(splitnet.split_model(model, {"d": {"units": [0]}}))
        >>> bool(masks["d"]["kernel"][:, 0].all()), masks["d"]["bias"].tolist()
        (True, [True, False, False])
    """
    trainable = tree.trainable_ids(model)
    out = {}
    for key, layer in kinds.walk(model):
        kind = kinds.any_kind_of(layer)
        if kind is not None and layer.built:
            masks = kind.masks(layer, trainable)
            if masks is not None:
                out[key] = masks
    return out


def splittable_keys(model):
    """Keys of every layer a rule may name (for suggestions)."""
    return [key for key, layer in kinds.walk(model) if kinds.any_kind_of(layer)]


def plan_layers(model, rules, where):
    """Resolve freeze rules against a model: `{id(layer): (layer, key, plan, kind, rule)}`.

    Each plan is made and checked by the layer's kind.
    """
    trainable = tree.trainable_ids(model)
    targets = {}
    for rule in _expand_heads(model, rules, where):
        layer = layer_at(model, rule, where, splittable_keys)
        if kinds.is_split(layer):
            raise where.error(rule.path, f"layer {rule.layer!r} is already split; merge the model first", key=True)
        kind = kinds.kind_of(layer)
        if kind is None:
            raise where.error(
                rule.path,
                f"layer {rule.layer!r} is of type {type(layer).__name__}; splitnet splits "
                f"{kinds.supported_names()} layers",
                key=True,
            )
        if rule.axis is not None and not kind.takes_axis:
            raise where.error(
                rule.path + ("axis",), f"layer {rule.layer!r} is a {type(layer).__name__}; axis: applies to EinsumDense layers"
            )
        if id(layer) in targets:
            raise where.error(rule.path, f"layer {rule.layer!r} is named twice (also {_named(targets[id(layer)][4])})", key=True)
        if not layer.built:
            raise ModelError(f"layer {rule.layer!r} is not built; call the model on an input first")
        if not all(id(w) in trainable for w in layer.weights):
            raise where.error(
                rule.path,
                f"layer {rule.layer!r} is not trainable in this model, so it is frozen whole already",
                key=True,
            )
        targets[id(layer)] = (layer, rule.layer, kind.plan(layer, rule, where), kind, rule)
    return targets


def _named(rule):
    """How a rule names its layer, for "named twice": its key, or the `heads:` rule it came from."""
    if rule.path[-1] == "heads":
        return f"by the heads: rule of {rule.path[-2]!r}"
    return f"as {rule.layer!r}"


def _expand_heads(model, rules, where):
    """Rules with `heads:` (on an attention layer) -> a rule per projection (`kinds.heads_rules`)."""
    out = []
    for rule in rules:
        if rule.heads is None:
            out.append(rule)
            continue
        layer = layer_at(model, rule, where, lambda m: [key for key, _ in tree.walk(m)])
        out += kinds.heads_rules(layer, rule, where, lambda key: tree.find(model, key))
    return out


def layer_at(model, rule, where, candidates):
    """The layer a rule names; else a SpecError suggesting the closest of `candidates(model)`."""
    layer = tree.find(model, rule.layer)
    if layer is None:
        hint = spec_lib.suggest(rule.layer, candidates(model))
        raise where.error(rule.path, f"no layer {rule.layer!r} in model {model.name!r}{hint}", key=True)
    return layer


def split_model(model, freeze, form="auto"):
    """Return a copy of `model` whose named layers are split into frozen and trainable pieces.

    Args:
        model: A built Keras model of any kind: Functional (including
            subclasses such as keras-hub backbones and tasks), Sequential,
            or subclassed. It is not changed.
        freeze: A mapping like the spec's `freeze` section, e.g.
            `{"head": {"units": "0:10"}, "encoder/proj": {"rows": [0, 1]}}`.
            Layers are named by their path of layer names, at any depth.
        form: How split layers are made (see `splitnet.functional`):
            "functional" replaces each named layer, in its model's graph, by a
            nested model of plain Keras pieces of its own class (it loads and
            trains without splitnet); "in_place" keeps the layer object and
            holds its weights in pieces (it reaches layers inside subclassed
            layers); "auto" (the default) uses the functional form wherever
            it applies and the in-place form elsewhere.

    Returns:
        A copy of the model (same class, names and configs) that computes the
        same function on the same weights, in which the frozen entries are
        non-trainable variables. If `model` was compiled, the copy is
        compiled with the same settings and a fresh optimizer, ready to `fit`.

    Raises:
        SpecError: `freeze` is invalid for this model (message starts with
            the key path, e.g. `freeze.head.units[0]:`), or `form` is
            "functional" and a named layer cannot be reached in a graph.
        ModelError: the model cannot be copied (Keras cannot rebuild it from
            its config, e.g. a custom layer whose `get_config` does not match
            its `__init__`).

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4, name="head")(inputs))
        >>> split = splitnet.split_model(model, {"head": {"units": [0, 1]}})
        >>> [tuple(w.shape) for w in split.trainable_weights]
        [(8, 2), (2,)]
    """
    where = spec_lib.Where()
    rules = spec_lib.parse_freeze(freeze, where)
    form = spec_lib.check_form(form, where)
    targets = plan_layers(model, rules, where)  # refuse a bad spec before copying anything
    copy = split_targets(model, targets, form, where)
    saving.compile_like(copy, model)  # compiled as `model` is, with a fresh optimizer for the split variables
    return copy


def split_targets(model, targets, form, where, copy=True):
    """A split copy of `model` (not compiled): each target `(layer, key, plan, kind, rule)`
    in the functional form where `form` lets it and it applies, else in place. With
    `copy=False` (a model splitnet made itself), layers split in place are split in
    `model` itself when no layer takes the functional form."""
    functional_targets, in_place = {}, []
    paths = {id(layer): key for key, layer in tree.walk(model)}  # a rule may name a layer by a shorter path
    for layer_id, (layer, key, plan, kind, rule) in targets.items():
        path = paths[layer_id]
        why = None if form == "in_place" else functional.why_not(model, path, layer, plan, kind)
        if form == "functional" and why is not None:
            raise where.error(
                rule.path,
                f"layer {key!r} cannot be split in the functional form: {why}; use form: in_place (or auto)",
                key=True,
            )
        if form == "in_place" or why is not None:
            in_place.append((path, key, plan, kind))
        else:
            functional_targets[layer_id] = (layer, path, plan, kind, rule)
    if functional_targets:
        out = functional.split(model, functional_targets)
    else:
        out = saving.copy_model(model) if copy else model
    for path, key, plan, kind in in_place:
        kind.install(tree.find(out, path), plan, key)
    kinds.after_split(out)
    return out


def _auto_names(layer_specs):
    """Deterministic names for unnamed layers: `dense`, `dense_1`, ... per class."""
    counts, names = {}, []
    for layer in layer_specs:
        if "name" in layer.args:
            names.append(layer.args["name"])
            continue
        base = re.sub(r"(?<!^)(?=[A-Z])", "_", layer.type).lower()
        n = counts.get(base, 0)
        counts[base] = n + 1
        names.append(base if n == 0 else f"{base}_{n}")
    return names


def _build_stack(model_spec):
    inputs = keras.Input(shape=model_spec.input_shape, name="input", dtype=model_spec.input_dtype)
    x = inputs
    for layer, name in zip(model_spec.layers, _auto_names(model_spec.layers)):
        made = getattr(keras.layers, layer.type)(**{**layer.args, "name": name})
        # In a stack, an attention layer attends to its own input.
        x = made(x, x) if isinstance(made, keras.layers.MultiHeadAttention) else made(x)
    return keras.Model(inputs, x, name=model_spec.name)


def load_base(path, where):
    """Load a spec's `base` model safely (`safe_mode=True`); errors point at `base:`."""
    try:
        return load_keras(path, compile=False)
    except ModelFileError as exc:
        raise where.error(("base",), str(exc)) from None


def build_model(spec):
    """Build the split model a spec describes.

    Args:
        spec: A `Spec`, a path to a YAML spec, or a mapping.

    Returns:
        The split `keras.Model` (not compiled). With `base`, the saved model's
        weights are kept; with `model`, the stack is freshly initialized.
        With `grow`, the model is grown first (see `splitnet.grow_model`).

    Raises:
        SpecError: the spec is invalid or does not fit the model.

    Example:
        >>> import splitnet
        >>> model = splitnet.build_model({
        ...     "model": {"input_shape": [8], "layers": [
        ...         {"type": "Dense", "name": "head", "units": 4, "activation": "softmax"}]},
        ...     "freeze": {"head": {"units": "0:2"}}})
        >>> [layer.name for layer in model.get_layer("head").layers]  # the functional form
        ['head__input', 'head__trainable', 'head__frozen', 'head__join', 'head__activation']
    """
    spec = spec_lib.load_spec(spec)
    if spec.model is not None:
        try:
            model = _build_stack(spec.model)
        except Exception as exc:  # noqa: BLE001 - shape mismatches between layers
            raise spec.where.error(("model", "layers"), f"cannot build the model: {spec_lib.first_line(exc)}") from None
    else:
        model = load_base(spec.base, spec.where)
    if spec.grow:
        from splitnet.grow import grow_parsed

        return grow_parsed(model, spec.grow, spec.freeze, spec.where, spec.form)
    # The model is splitnet's own here (just built or loaded): no copy needed.
    return split_targets(model, plan_layers(model, spec.freeze, spec.where), spec.form, spec.where, copy=False)


__all__ = ["build_model", "split_model", "frozen_masks"]
