"""The YAML spec: load it safely, check every key, and remember where it was.

`load_spec` turns a YAML file (or a mapping) into a frozen `Spec`. Everything
that can be checked without building the model is checked here; the rest
(layer names, index ranges) is checked when the model is built, and reported
with the same `FILE:LINE: key.path:` prefix through the `Where` each spec
carries.

YAML is read with PyYAML's `SafeLoader` only: a tag such as
`!!python/object/apply` is refused, never executed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml

from splitnet.errors import SpecError

_TOP_KEYS = ("model", "base", "form", "grow", "freeze", "train")
# How split layers are made: see `splitnet.functional` and `split_model`.
FORMS = ("auto", "functional", "in_place")
_MODEL_KEYS = ("name", "input_shape", "input_dtype", "layers")
_FREEZE_KEYS = ("units", "rows", "bias", "axis", "heads")
_GROW_KEYS = ("units", "rows", "init", "old")
GROW_INITS = ("layer", "zeros", "mean")
_TRAIN_KEYS = ("data", "loss", "optimizer", "metrics", "epochs", "batch_size", "seed")
# Layers a spec may not name: Lambda runs arbitrary code, the others are not
# layers of a stack.
_REFUSED_LAYERS = {
    "Lambda": "it runs arbitrary Python code; write a registered layer instead",
    "TFSMLayer": "it loads a SavedModel; use `base:` for existing models",
    "InputLayer": "the input comes from model.input_shape",
    "Input": "the input comes from model.input_shape",
}
_RANGE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")


def format_path(path):
    """`("freeze", "hidden", "units", 2)` -> `"freeze.hidden.units[2]"`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class Where:
    """Maps key paths of a spec to the file and line they came from.

    Args:
        source: The spec file's path as the user gave it, or None.
        lines: `{path tuple: line}` of each value.
        key_lines: `{path tuple: line}` of each mapping key.
    """

    def __init__(self, source=None, lines=None, key_lines=None):
        self.source = source
        self._lines = {} if lines is None else lines
        self._key_lines = {} if key_lines is None else key_lines

    def line(self, path, key=False):
        """The line of `path` (of its key when `key`), else of its parent."""
        path = tuple(path)
        table = self._key_lines if key else self._lines
        if path in table:
            return table[path]
        while path:
            path = path[:-1]
            if path in self._lines:
                return self._lines[path]
        return self._lines.get((), None)

    def error(self, path, problem, key=False):
        """A `SpecError` located at `path` (a tuple of keys and indices)."""
        line = self.line(path, key) if self.source is not None else None
        return SpecError(problem, source=self.source, line=line, path=format_path(path))


# --------------------------------------------------------------------------
# The spec's data model. Paths are kept so later checks can point back here.


@dataclasses.dataclass(frozen=True)
class IndexItem:
    """One entry of an index set: an int, or a half-open range `(start, stop)`."""

    value: object  # int, or (start|None, stop|None)
    text: str  # as the user wrote it, for messages
    path: tuple


@dataclasses.dataclass(frozen=True)
class IndexSet:
    """Units or rows as written in the spec; resolved against a layer by `plan`."""

    items: tuple | None  # None means `all`
    path: tuple

    @property
    def is_all(self):
        return self.items is None


@dataclasses.dataclass(frozen=True)
class FreezeRule:
    """What is frozen in one layer: `units`, `rows`, `bias`; `axis` (EinsumDense);
    or `heads` of an attention layer (expanded into rules on its projections)."""

    layer: str
    units: IndexSet | None
    rows: IndexSet | None
    bias: bool
    path: tuple
    axis: str | None = None
    heads: IndexSet | None = None


@dataclasses.dataclass(frozen=True)
class GrowRule:
    """How much one layer grows: `units` (outputs) and `rows` (inputs; an
    embedding's tokens) to add, how new outputs start (`init`), and whether
    the old entries stay frozen (`old: frozen`, the default) or train."""

    layer: str
    units: int
    rows: int
    init: str
    freeze_old: bool
    path: tuple


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer of a `model.layers` stack: a Keras class name and its arguments."""

    type: str
    args: dict
    path: tuple


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple
    layers: tuple
    input_dtype: str = "float32"  # "int32" for token ids


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Training settings. `loss=None` means: chosen from the model's output."""

    data: Path | None = None
    loss: str | None = None
    optimizer: tuple = ("adamw", ())  # (name, ((key, value), ...))
    metrics: tuple = ()
    epochs: int = 5
    batch_size: int = 64
    seed: int = 0

    @property
    def optimizer_config(self):
        """The optimizer as a Keras config, for `keras.optimizers.get`."""
        name, kwargs = self.optimizer
        return {"class_name": name, "config": dict(kwargs)}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A checked spec. Build it with `load_spec`.

    Attributes:
        model: The layer stack to build, or None when `base` is given.
        base: Path of a saved `.keras` model to split, or None.
        grow: One `GrowRule` per layer named in `grow`, in spec order.
        freeze: One `FreezeRule` per layer named in `freeze`, in spec order.
        train: Training settings.
        form: How split layers are made: "auto", "functional" or "in_place".
        where: Locates key paths in the spec file for error messages.
    """

    model: ModelSpec | None
    base: Path | None
    freeze: tuple
    train: TrainSpec
    where: Where = dataclasses.field(repr=False, compare=False, default_factory=Where)
    grow: tuple = ()
    form: str = "auto"

    @property
    def source(self):
        return self.where.source


# --------------------------------------------------------------------------
# Loading YAML with line numbers.


def _read_yaml(text, source):
    """Parse `text` safely; return (data, Where)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            problem += " (specs are read with yaml.safe_load; Python tags are not allowed)"
        raise SpecError(f"YAML error: {problem}", source=source, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", source=source, line=None) from None
    finally:
        loader.dispose()
    lines, key_lines = {}, {}
    where = Where(source, lines, key_lines)
    if node is not None:
        _index_lines(node, (), lines, key_lines, where)
    return data, where


def _index_lines(node, path, lines, key_lines, where):
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            sub = path + (key,)
            key_lines[sub] = key_node.start_mark.line + 1
            if key in seen:
                raise where.error(sub, f"duplicate key {key!r}", key=True)
            seen.add(key)
            _index_lines(value_node, sub, lines, key_lines, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), lines, key_lines, where)


# --------------------------------------------------------------------------
# Checks.


def _type_name(value):
    return "null" if value is None else type(value).__name__


def suggest(word, choices):
    """`; did you mean 'x'?` for the closest of `choices`, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_mapping(value, path, where, allowed, what):
    if not isinstance(value, Mapping):
        raise where.error(path, f"expected a mapping of {what}, got {_type_name(value)}")
    for key in value:
        if key not in allowed:
            raise where.error(
                path + (key,),
                f"unknown key {key!r}{suggest(key, allowed)} (allowed: {', '.join(allowed)})",
                key=True,
            )
    return value


def _positive_int(value, path, where, what="a positive integer"):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise where.error(path, f"expected {what}, got {value!r}")
    return value


def parse_index_set(value, path, where):
    """Check the syntax of an index set: int, "a:b", a list of those, or `all`.

    From Python (a mapping given to `load_spec` or `split_model`) the set may
    also be what indices naturally come as there: a numpy integer array or
    scalar (`np.where(...)[0]`), a tuple, a `range` or a `slice` (step 1).
    """
    allowed = 'an int, a range "a:b", a list of those, or all'
    if isinstance(value, str) and value == "all":
        return IndexSet(None, path)
    value = _from_python(value, path, where)
    if isinstance(value, list):
        if not value:
            raise where.error(path, f"empty list; give {allowed}")
        items = tuple(_parse_index_item(v, path + (i,), where) for i, v in enumerate(value))
        return IndexSet(items, path)
    return IndexSet((_parse_index_item(value, path, where),), path)


def _from_python(value, path, where):
    """Python index containers as the YAML grammar's ints, "a:b" strings and lists."""
    if isinstance(value, slice):
        if value.step not in (None, 1):
            raise where.error(path, f"{value!r}: only slices with step 1 are index sets; give a list or np.arange")
        for bound in (value.start, value.stop):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, np.integer))):
                raise where.error(path, f"{value!r}: slice bounds must be integers")
        start, stop = ("" if b is None else int(b) for b in (value.start, value.stop))
        return f"{start}:{stop}"
    if isinstance(value, range):
        return list(value)
    if isinstance(value, np.ndarray):
        if value.dtype == bool:
            raise where.error(path, "a boolean array is a mask, not indices; pass np.flatnonzero(mask)")
        if not np.issubdtype(value.dtype, np.integer):
            raise where.error(path, f"indices must be integers, got an array of {value.dtype}")
        if value.ndim > 1:
            raise where.error(path, f"indices must be a 1-D array, got shape {value.shape}")
        return value.tolist()  # Python ints (a 0-d array gives one int)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_from_python(v, path + (i,), where) if isinstance(v, (np.integer, slice)) else v for i, v in enumerate(value)]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _parse_index_item(value, path, where):
    if isinstance(value, int) and not isinstance(value, bool):
        return IndexItem(value, str(value), path)
    if isinstance(value, str):
        match = _RANGE.match(value)
        if match:
            start, stop = (None if g is None else int(g) for g in match.groups())
            return IndexItem((start, stop), value.strip(), path)
        if value == "all":
            raise where.error(path, "all cannot be part of a list; write `all` alone")
    raise where.error(
        path,
        f"{value!r} is not an index; expected an int or a range \"a:b\" "
        "(half-open, negative counts from the end)",
    )


def _layer_entries(value, where, path, keys, nothing):
    """`(name, path, entry)` of each layer of a `freeze`/`grow` mapping, its keys checked.

    `nothing`: the message for an empty entry.
    """
    what = "/".join(keys)
    if not isinstance(value, Mapping):
        raise where.error(path, f"expected a mapping of layer name -> {what}, got {_type_name(value)}")
    for name, entry in value.items():
        sub = path + (name,)
        if not isinstance(name, str) or not name:
            raise where.error(sub, f"a layer name must be a non-empty string, got {name!r}", key=True)
        if entry is None or (isinstance(entry, Mapping) and not entry):
            raise where.error(sub, nothing)
        _check_mapping(entry, sub, where, keys, what)
        yield name, sub, entry


def check_form(value, where, path=("form",)):
    """Check a `form` value (`auto`, `functional` or `in_place`); return it."""
    if value not in FORMS:
        raise where.error(path, f"expected one of {', '.join(FORMS)}, got {value!r}{suggest(str(value), FORMS)}")
    return value


def parse_freeze(value, where, path=("freeze",)):
    """Check a `freeze` mapping; return a tuple of `FreezeRule`."""
    if value is None:
        return ()
    rules = []
    nothing = "nothing to freeze; give units, rows and/or bias: true (or heads)"
    for name, sub, entry in _layer_entries(value, where, path, _FREEZE_KEYS, nothing):
        bias = entry.get("bias", False)
        bias = bool(bias) if isinstance(bias, np.bool_) else bias
        if not isinstance(bias, bool):
            raise where.error(sub + ("bias",), f"expected true or false, got {bias!r}")
        units = entry.get("units")
        rows = entry.get("rows")
        heads = entry.get("heads")
        axis = entry.get("axis")
        if heads is not None:
            others = [key for key in ("units", "rows", "axis") if key in entry] + (["bias"] if bias else [])
            if others:
                raise where.error(
                    sub + (others[0],),
                    "heads: freezes the same heads in query, key, value (units) and attention_output (rows); "
                    f"give it alone, or write rules for the projections ({name}/query, ...)",
                    key=True,
                )
        elif units is None and rows is None and not bias:
            raise where.error(sub, nothing)
        if axis is not None and not (isinstance(axis, str) and len(axis) == 1 and axis.isalpha()):
            raise where.error(sub + ("axis",), f"expected one letter of the layer's einsum equation, got {axis!r}")
        rules.append(
            FreezeRule(
                layer=name,
                units=None if units is None else parse_index_set(units, sub + ("units",), where),
                rows=None if rows is None else parse_index_set(rows, sub + ("rows",), where),
                bias=bias,
                path=sub,
                axis=axis,
                heads=None if heads is None else parse_index_set(heads, sub + ("heads",), where),
            )
        )
    return tuple(rules)


def parse_grow(value, where, path=("grow",)):
    """Check a `grow` mapping (layer name -> units/rows/init/old); return a tuple of `GrowRule`."""
    if value is None or (isinstance(value, Mapping) and not value):
        raise where.error(path, "nothing to grow; give layer name -> units and/or rows to add")
    rules = []
    nothing = "nothing to grow; give units and/or rows (how many to add)"
    for name, sub, entry in _layer_entries(value, where, path, _GROW_KEYS, nothing):
        counts = {}
        for key in ("units", "rows"):
            count = entry.get(key, 0)
            count = int(count) if isinstance(count, np.integer) else count
            if key in entry and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
                raise where.error(sub + (key,), f"expected how many {key} to add (a positive integer), got {count!r}")
            counts[key] = count
        if not counts["units"] and not counts["rows"]:
            raise where.error(sub, nothing)
        init = entry.get("init", "layer")
        if init not in GROW_INITS:
            raise where.error(sub + ("init",), f"expected one of {', '.join(GROW_INITS)}, got {init!r}{suggest(init, GROW_INITS)}")
        old = entry.get("old", "frozen")
        if old not in ("frozen", "trainable"):
            raise where.error(sub + ("old",), f"expected frozen or trainable, got {old!r}")
        rules.append(GrowRule(name, counts["units"], counts["rows"], init, old == "frozen", sub))
    return tuple(rules)


def _layer_classes():
    import keras

    return {
        name: obj
        for name, obj in vars(keras.layers).items()
        if inspect.isclass(obj) and issubclass(obj, keras.layers.Layer)
    }


def _accepted_args(cls):
    accepted = {"name", "dtype", "trainable"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        accepted |= {
            p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        }
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return accepted


def _parse_model(value, where):
    path = ("model",)
    _check_mapping(value, path, where, _MODEL_KEYS, "name/input_shape/input_dtype/layers")
    name = value.get("name", "model")
    if not isinstance(name, str) or not name:
        raise where.error(path + ("name",), f"expected a non-empty string, got {name!r}")
    if "input_shape" not in value:
        raise where.error(path, "missing key 'input_shape' (the input's shape without the batch axis)")
    shape = value["input_shape"]
    if not isinstance(shape, list) or not shape:
        raise where.error(path + ("input_shape",), f"expected a non-empty list like [32], got {shape!r}")
    for i, dim in enumerate(shape):
        if dim is None and i < len(shape) - 1:
            continue  # variable length, e.g. time steps
        _positive_int(dim, path + ("input_shape", i), where, "a positive integer (null allowed except last)")
    dtype = value.get("input_dtype", "float32")
    if dtype not in ("float32", "int32"):
        raise where.error(path + ("input_dtype",), f"expected float32 or int32 (token ids), got {dtype!r}")
    layers = value.get("layers")
    if not isinstance(layers, list) or not layers:
        raise where.error(path + ("layers",), f"expected a non-empty list of layers, got {_type_name(layers)}")
    classes = _layer_classes()
    parsed, names = [], {}
    for i, entry in enumerate(layers):
        sub = path + ("layers", i)
        if not isinstance(entry, Mapping) or "type" not in entry:
            raise where.error(sub, "expected a mapping with a `type` key, e.g. {type: Dense, units: 64}")
        kind = entry["type"]
        if kind in _REFUSED_LAYERS:
            raise where.error(sub + ("type",), f"{kind} is not allowed here: {_REFUSED_LAYERS[kind]}")
        if not isinstance(kind, str) or kind not in classes:
            raise where.error(sub + ("type",), f"{kind!r} is not a Keras layer{suggest(kind, classes)}")
        args = {k: v for k, v in entry.items() if k != "type"}
        accepted = _accepted_args(classes[kind])
        for key in args:
            if key not in accepted:
                raise where.error(
                    sub + (key,),
                    f"{kind} has no argument {key!r}{suggest(key, accepted)}",
                    key=True,
                )
        try:  # let Keras check the values; the layer itself is built later
            classes[kind](**args)
        except Exception as exc:  # noqa: BLE001 - any constructor failure is the user's value
            raise where.error(sub, f"invalid {kind} arguments: {first_line(exc)}") from None
        if "name" in args:
            if args["name"] in names:
                raise where.error(sub + ("name",), f"duplicate layer name {args['name']!r} (also layers[{names[args['name']]}])")
            names[args["name"]] = i
        parsed.append(LayerSpec(kind, args, sub))
    return ModelSpec(name, tuple(shape), tuple(parsed), dtype)


def first_line(exc):
    """The first line of an exception's message (Keras errors run long)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _parse_train(value, where, folder):
    import keras

    path = ("train",)
    if value is None:
        return TrainSpec()
    _check_mapping(value, path, where, _TRAIN_KEYS, "training settings")
    out = {}
    data = value.get("data")
    if data is not None:
        if not isinstance(data, str) or not data:
            raise where.error(path + ("data",), f"expected a path to an .npz file or null, got {data!r}")
        out["data"] = _resolve(data, folder)
    loss = value.get("loss")
    if loss is not None:
        if not isinstance(loss, str):
            raise where.error(path + ("loss",), f"expected the name of a Keras loss, got {loss!r}")
        try:
            keras.losses.get(loss)
        except Exception:  # noqa: BLE001
            names = [n for n, f in vars(keras.losses).items() if inspect.isfunction(f) and n.islower()]
            raise where.error(path + ("loss",), f"{loss!r} is not a Keras loss{suggest(loss, names)}") from None
        out["loss"] = loss
    if "optimizer" in value:
        out["optimizer"] = _parse_optimizer(value["optimizer"], path + ("optimizer",), where)
    metrics = value.get("metrics", [])
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise where.error(path + ("metrics",), f"expected a list of metric names, got {metrics!r}")
    for i, metric in enumerate(metrics):
        try:
            keras.metrics.get(metric)
        except Exception:  # noqa: BLE001
            raise where.error(path + ("metrics", i), f"{metric!r} is not a Keras metric") from None
    out["metrics"] = tuple(metrics)
    for key in ("epochs", "batch_size"):
        if key in value:
            out[key] = _positive_int(value[key], path + (key,), where)
    if "seed" in value:
        seed = value["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise where.error(path + ("seed",), f"expected a non-negative integer, got {seed!r}")
        out["seed"] = seed
    return TrainSpec(**out)


def _parse_optimizer(value, path, where):
    import keras

    if isinstance(value, str):
        name, kwargs = value, {}
    elif isinstance(value, Mapping) and isinstance(value.get("name"), str):
        name = value["name"]
        # YAML 1.1 reads `1e-3` (no dot) as a string; numbers are what was meant.
        kwargs = {k: _number(v) for k, v in value.items() if k != "name"}
    else:
        raise where.error(path, f"expected an optimizer name or a mapping with `name`, got {value!r}")
    names = [n.lower() for n, c in vars(keras.optimizers).items() if inspect.isclass(c) and issubclass(c, keras.optimizers.Optimizer)]
    if name.lower() not in names:
        raise where.error(path, f"{name!r} is not a Keras optimizer{suggest(name.lower(), names)}")
    try:
        keras.optimizers.get({"class_name": name, "config": kwargs})
    except Exception as exc:  # noqa: BLE001
        raise where.error(path, f"invalid optimizer {name!r}: {first_line(exc)}") from None
    return (name, tuple(kwargs.items()))


def _number(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _resolve(path, folder):
    path = Path(os.path.expanduser(path))
    return path if path.is_absolute() or folder is None else folder / path


# --------------------------------------------------------------------------


def load_spec(spec):
    """Load and check a spec.

    Args:
        spec: Path of a YAML file, or a mapping with the same structure. A
            `Spec` is returned unchanged.

    Returns:
        A `Spec`. Relative paths in it (`base`, `train.data`) are resolved
        against the spec file's folder (the working directory for a mapping).

    Raises:
        SpecError: the spec is not valid; the message starts with
            `FILE:LINE: key.path:` (just `key.path:` for a mapping).

    Example:
        >>> spec = load_spec({"model": {"input_shape": [4],
        ...                             "layers": [{"type": "Dense", "units": 3}]},
        ...                   "freeze": {"dense": {"units": [0]}}})
        >>> spec.freeze[0].layer
        'dense'
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Mapping):
        data, where, folder = spec, Where(), None
    elif isinstance(spec, (str, os.PathLike)):
        source = os.fspath(spec)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read spec: {exc.strerror or exc}", source=source) from None
        data, where = _read_yaml(text, source)
        folder = Path(source).parent
    else:
        raise TypeError(f"load_spec expects a path or a mapping, got {type(spec).__name__}")

    if data is None:
        raise where.error((), "the spec is empty; it needs `model` or `base`, and `freeze` or `grow`")
    _check_mapping(data, (), where, _TOP_KEYS, "model/base/form/grow/freeze/train")
    has_model, has_base = "model" in data, "base" in data
    if has_model == has_base:
        raise where.error(
            ("base",) if has_base else (),
            "give exactly one of `model` (a layer stack) and `base` (a saved .keras model)",
        )
    model = base = None
    if has_model:
        model = _parse_model(data["model"], where)
    else:
        if not isinstance(data["base"], str) or not data["base"]:
            raise where.error(("base",), f"expected the path of a .keras file, got {data['base']!r}")
        base = _resolve(data["base"], folder)
    grow = parse_grow(data["grow"], where) if "grow" in data else ()
    freeze = parse_freeze(data.get("freeze"), where)
    train = _parse_train(data.get("train"), where, folder)
    form = check_form(data.get("form", "auto"), where)
    return Spec(model=model, base=base, freeze=freeze, train=train, where=where, grow=grow, form=form)
