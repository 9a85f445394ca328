"""What is frozen where: per-layer counts for `splitnet inspect` and the run report."""

from __future__ import annotations

import keras
import numpy as np

from splitnet import kinds, tree
from splitnet.split import frozen_masks


def slots_per_entry(optimizer):
    """How many floats `optimizer` keeps per trainable entry (Adam: 2, SGD+momentum: 1)."""
    fresh = optimizer.__class__.from_config(optimizer.get_config())
    shared = len(fresh.variables)  # iterations, learning rate: not per entry
    fresh.build([keras.Variable(np.zeros((1,), "float32"))])
    return sum(int(np.prod(v.shape)) for v in fresh.variables[shared:])


def describe(model, optimizer=None):
    """Per-layer frozen/trainable counts of every layer of a splittable kind.

    Args:
        model: A split or plain model.
        optimizer: Used to count optimizer floats saved; defaults to the
            model's compiled optimizer, if any.

    Returns:
        A dict: `layers` (a list of rows), and totals `frozen` (entries of
        those layers), `trainable` (every entry `fit` trains, in any layer,
        as `verify` counts), `params` (all of the model),
        `slots_per_entry`, `optimizer_floats_saved` and `optimizer_bytes_saved`.

    Example:
        >>> import keras, splitnet
        >>> from splitnet.summary import describe
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> describe(splitnet.split_model(model, {"d": {"units": [0]}}))["layers"][0]["frozen"]
        5
    """
    optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
    slots = slots_per_entry(optimizer) if optimizer is not None else None
    trainable_ids = tree.trainable_ids(model)
    rows = []
    for key, layer in kinds.walk(model):
        kind = kinds.any_kind_of(layer)
        if kind is None or not layer.built:
            continue
        masks = kind.masks(layer, trainable_ids)
        size = sum(int(np.prod(w.shape)) for w in layer.weights)  # the pieces partition the entries
        frozen = int(sum(m.sum() for m in masks.values())) if masks else 0
        rows.append({"layer": key, **kind.describe(layer, masks), "trainable": size - frozen, "frozen": frozen})
    frozen_total = sum(r["frozen"] for r in rows)
    return {
        "model": model.name,
        "layers": rows,
        "trainable": sum(int(np.prod(v.shape)) for v in model.trainable_variables),
        "frozen": frozen_total,
        "params": int(model.count_params()),
        "slots_per_entry": slots,
        "optimizer_floats_saved": None if slots is None else frozen_total * slots,
        "optimizer_bytes_saved": None if slots is None else frozen_total * slots * 4,
    }


def grown(model):
    """`{layer key: what grew}` ("units 10->15") for each split layer that `grow_model` made bigger."""
    out = {}
    for key, layer in kinds.walk(model):
        kind = kinds.any_kind_of(layer)
        what = None if kind is None else kind.describe_growth(layer)
        if what:
            out[key] = what
    return out


def forms(model):
    """`{layer key: "functional" or "in place"}` for each split layer."""
    out = {}
    for key, layer in kinds.walk(model):
        kind = kinds.any_kind_of(layer)
        plan = None if kind is None else kind.plan_of(layer)
        if plan is not None:
            out[key] = "in place" if kinds.split_kind_of(layer) else "functional"
    return out


def format_table(info):
    """The `describe` dict as an aligned text table with a totals line."""
    head = ["layer", "kind", "shape", "frozen units", "frozen rows", "bias", "trainable", "frozen"]
    body = [
        [
            r["layer"],
            r["kind"],
            "x".join(map(str, r["shape"])),
            r["frozen_units"],
            r["frozen_rows"],
            "frozen" if r["bias_frozen"] else "-",
            f"{r['trainable']:,}",
            f"{r['frozen']:,}",
        ]
        for r in info["layers"]
    ]
    if any(r.get("form") == "functional" for r in info["layers"]):  # say which layers are nested models of pieces
        head.append("form")
        for row, r in zip(body, info["layers"]):
            row.append(r.get("form") or "-")
    if any(r.get("grown") for r in info["layers"]):  # a grown model: what is new
        head.append("grown")
        for row, r in zip(body, info["layers"]):
            row.append(r.get("grown") or "-")
    widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head] + body]
    total = info["params"]
    share = info["frozen"] / total if total else 0.0
    other = total - info["frozen"] - info["trainable"]
    lines.append("")
    lines.append(
        f"weight entries: {total:,}, frozen {info['frozen']:,} ({share:.1%}), trainable {info['trainable']:,}"
        + (f", not trained otherwise {other:,}" if other else "")
    )
    if info["slots_per_entry"] is not None:
        lines.append(
            f"optimizer state saved: {info['optimizer_floats_saved']:,} floats "
            f"({info['optimizer_bytes_saved'] / 1024:,.1f} KiB; {info['slots_per_entry']} per frozen entry)"
        )
    return "\n".join(lines)


def plot_masks(model, path):
    """Draw each split layer's kernel as a frozen (dark) / trainable (light) map into a PNG.

    The map is rows x units (for a Conv: input channels x filters; for an
    Embedding: token ids x dimensions); a kernel's other axes are averaged,
    so a grey cell is partly frozen.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError("--plot needs matplotlib: python -m pip install matplotlib (or the [plot] extra)") from None
    masks = frozen_masks(model)
    if not masks:
        raise ValueError(f"model {model.name!r} has no frozen entries to plot")
    fig, axes = plt.subplots(1, len(masks), figsize=(4 * len(masks), 4), squeeze=False)
    layers = dict(kinds.walk(model))
    for ax, (key, mask) in zip(axes[0], masks.items()):
        layer = layers[key]
        picture = kinds.any_kind_of(layer).picture(layer, mask)
        ax.imshow(picture, cmap="Greys", vmin=0, vmax=1.6, aspect="auto", interpolation="nearest")
        kernel = next(iter(mask.values()))  # what the picture shows
        ax.set_title(f"{key}\n{int(kernel.sum()):,} of {kernel.size:,} kernel entries frozen", fontsize=9)
        ax.set_xlabel("unit")
        ax.set_ylabel("row")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("kernel: dark = frozen, light = trainable", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
