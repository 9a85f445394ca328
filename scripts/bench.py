#!/usr/bin/env python
"""Benchmark splitnet against the alternatives a user would pick instead.

For a stack of Dense layers it times one training step (AdamW with weight
decay, mean squared error, the same data) of

    (a) unsplit: every entry trainable,
    (b) mask:    the gradient-mask recipe (gradients multiplied by a 0/1
                 mask; frozen entries still decay under weight decay),
    (c) split:   splitnet's split model (`form: auto`: the functional form
                 wherever the layer sits in a graph),
    (d) in place: the same split in the in-place form,

interleaved a-b-c-d over repeated rounds after a warm-up, and reports
medians, the ratios to (a), the optimizer state of each and whether (b) kept
its frozen entries exact. A grown model (an MLP whose hidden layers grew,
old units frozen) is timed against the grown model trained whole. It also times `merge_model` and `export_saved_model` on
a model of about `--merge-params` parameters, with their peak extra memory,
and the predict time of the merged model against the unsplit one.

Usage:
    python scripts/bench.py                      # the README's table
    python scripts/bench.py --json bench.json    # also write the figures
    python scripts/bench.py --quick              # tiny sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import splitnet  # noqa: E402
from splitnet import summary, tree  # noqa: E402

# (name, width, depth, batch, frozen fraction, how the frozen set is chosen)
SCENARIOS = [
    ("2048 wide, 50% random units", 2048, 2, 256, 0.5, "random"),
    ("2048 wide, 90% random units", 2048, 2, 256, 0.9, "random"),
    ("2048 wide, 50% contiguous units", 2048, 2, 256, 0.5, "contiguous"),
    ("2048 wide, 50% random rows", 2048, 2, 256, 0.5, "rows"),
    ("256 wide, batch 32, 50% random units", 256, 2, 32, 0.5, "random"),
]
QUICK = [("32 wide, 50% random units", 32, 2, 8, 0.5, "random"), ("32 wide, 50% rows", 32, 2, 8, 0.5, "rows")]


def make_stack(width, depth, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,), name="x")
    h = inputs
    for i in range(depth):
        h = keras.layers.Dense(width, activation="relu", name=f"dense_{i}")(h)
    return keras.Model(inputs, h, name=f"stack{width}x{depth}")


def freeze_spec(width, depth, fraction, how, seed=0):
    """The same frozen sets for every variant: a `freeze` mapping for splitnet."""
    rng = np.random.default_rng(seed)
    count = int(round(fraction * width))
    freeze = {}
    for i in range(depth):
        if how == "contiguous":
            freeze[f"dense_{i}"] = {"units": f"0:{count}"}
        else:
            chosen = sorted(int(j) for j in rng.choice(width, size=count, replace=False))
            freeze[f"dense_{i}"] = {"units" if how == "random" else "rows": chosen}
    return freeze


def optimizer():
    return keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.01)


def optimizer_bytes(opt):
    # Per-entry slots only: the iteration count and the learning rate are scalars.
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in opt.variables if len(v.shape))


def mse(prediction, y):
    return tf.reduce_mean(tf.square(prediction - y))


def train_step(model, opt, masks=None, loss_fn=mse):
    """One compiled step; with `masks`, gradients are multiplied by (1 - frozen)."""
    variables = model.trainable_variables
    opt.build(variables)
    keep = None
    if masks is not None:
        keep = [tf.constant(1.0 - m.astype("float32")) for m in masks]

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(model(x, training=True), y)
        grads = tape.gradient(loss, variables)
        if keep is not None:
            grads = [g * k for g, k in zip(grads, keep)]
        opt.apply_gradients(zip(grads, variables))
        return loss

    return step


def mask_list(model, masks):
    """Frozen masks (from the split model) aligned with the plain `model.trainable_variables`."""
    by_id = {}
    for key, layer in tree.walk(model):
        for weight in layer.weights if key in masks else ():
            if weight.name in masks[key]:
                by_id[id(weight)] = masks[key][weight.name]
    return [by_id.get(id(v), np.zeros(v.shape, bool)) for v in model.trainable_variables]


def drift(model, before, masks):
    """How many frozen entries (by `masks`) differ from `before` in `model`."""
    after = splitnet.merged_weights(model)
    return sum(
        int((new != old)[mask].sum())
        for key, layer_masks in masks.items()
        for mask, old, new in zip(layer_masks.values(), before[key], after[key])
    )


def time_steps(scenario, rounds, steps):
    name, width, depth, batch, fraction, how = scenario
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(batch, width)).astype("float32"))
    y = tf.constant(rng.normal(size=(batch, width)).astype("float32"))
    base = make_stack(width, depth)
    freeze = freeze_spec(width, depth, fraction, how)
    split = splitnet.split_model(base, freeze)
    in_place = splitnet.split_model(base, freeze, form="in_place")
    masks = splitnet.frozen_masks(split)

    unsplit = keras.models.clone_model(base)
    unsplit.set_weights(base.get_weights())
    masked = keras.models.clone_model(base)
    masked.set_weights(base.get_weights())
    opts = {"unsplit": optimizer(), "mask": optimizer(), "split": optimizer(), "in_place": optimizer()}
    variants = {
        "unsplit": train_step(unsplit, opts["unsplit"]),
        "mask": train_step(masked, opts["mask"], mask_list(masked, masks)),
        "split": train_step(split, opts["split"]),
        "in_place": train_step(in_place, opts["in_place"]),
    }
    for step in variants.values():  # warm-up: tracing and first allocations
        for _ in range(3):
            step(x, y).numpy()
    times = {key: [] for key in variants}
    for _ in range(rounds):
        for key, step in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                loss = step(x, y)
            loss.numpy()
            times[key].append((time.perf_counter() - start) / steps)
    medians = {key: statistics.median(values) for key, values in times.items()}

    # Did the mask recipe keep its frozen entries? (Not under weight decay.)
    before = splitnet.merged_weights(base)
    mask_drift, split_drift = drift(masked, before, masks), drift(split, before, masks)
    frozen = sum(int(m.sum()) for layer_masks in masks.values() for m in layer_masks.values())
    return {
        "scenario": name,
        "width": width,
        "depth": depth,
        "batch": batch,
        "frozen_fraction": fraction,
        "frozen_set": how,
        "frozen_entries": frozen,
        "step_ms": {key: 1e3 * value for key, value in medians.items()},
        "mask_over_unsplit": medians["mask"] / medians["unsplit"],
        "split_over_unsplit": medians["split"] / medians["unsplit"],
        "in_place_over_unsplit": medians["in_place"] / medians["unsplit"],
        "optimizer_bytes": {key: optimizer_bytes(opt) for key, opt in opts.items()},
        "mask_frozen_changed": mask_drift,
        "split_frozen_changed": split_drift + drift(in_place, before, masks),
    }


# -- the layer kinds -------------------------------------------------------------------
#
# Each case builds the unsplit model, the freeze rules, data and the loss; it
# is timed as the Dense stacks are (unsplit, gradient mask, split), plus, for
# the embedding, PEFT's trainable-tokens recipe, and the merged model's
# forward pass against the unsplit one's.


class CopyRowsEmbedding(keras.layers.Layer):
    """PEFT's trainable-tokens recipe: a frozen full table, the trainable rows apart,
    copied into the table on every step before the lookup."""

    def __init__(self, table, rows, **kwargs):
        super().__init__(**kwargs)
        self.rows = tf.constant(np.asarray(rows, dtype="int32")[:, None])
        self.table = self.add_weight(shape=table.shape, initializer="zeros", trainable=False, name="table")
        self.table.assign(table)
        self.delta = self.add_weight(shape=(len(rows), table.shape[1]), initializer="zeros", name="delta")
        self.delta.assign(table[np.asarray(rows)])

    def call(self, ids):
        return tf.gather(tf.tensor_scatter_nd_update(self.table, self.rows, self.delta), ids)


def embedding_case(vocab, dim, batch, seq, trainable):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((seq,), dtype="int32")
    base = keras.Model(inputs, keras.layers.Embedding(vocab, dim, name="tokens")(inputs))
    new = vocab - max(1, int(round(trainable * vocab)))  # the new tokens are the last ones
    rng = np.random.default_rng(1)
    x = tf.constant(rng.integers(0, vocab, size=(batch, seq)).astype("int32"))
    y = tf.constant(rng.normal(size=(batch, seq, dim)).astype("float32"))
    peft = keras.Sequential([keras.Input((seq,), dtype="int32"), CopyRowsEmbedding(base.get_layer("tokens").get_weights()[0], range(new, vocab))])
    return base, {"tokens": {"rows": f":{new}"}}, x, y, mse, {"peft": peft}


def tied_head_case(vocab, dim, batch, seq, trainable):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((seq,), dtype="int32")
    embed = keras.layers.ReversibleEmbedding(vocab, dim, name="tokens")
    hidden = keras.layers.Dense(dim, activation="gelu", name="mix")(embed(inputs))
    base = keras.Model(inputs, embed(hidden, reverse=True))
    new = vocab - max(1, int(round(trainable * vocab)))
    rng = np.random.default_rng(1)
    x = tf.constant(rng.integers(0, vocab, size=(batch, seq)).astype("int32"))
    y = tf.constant(rng.integers(0, vocab, size=(batch, seq)).astype("int32"))

    def loss(logits, labels):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    return base, {"tokens": {"rows": f":{new}"}}, x, y, loss, {}


def conv_case(channels, size, batch, frozen):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, channels))
    h = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name="conv_0")(inputs)
    h = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name="conv_1")(h)
    base = keras.Model(inputs, h)
    rng = np.random.default_rng(0)
    count = int(round(frozen * channels))
    freeze = {f"conv_{i}": {"units": sorted(int(j) for j in rng.choice(channels, count, replace=False))} for i in range(2)}
    x = tf.constant(rng.normal(size=(batch, size, size, channels)).astype("float32"))
    y = tf.constant(rng.normal(size=(batch, size, size, channels)).astype("float32"))
    return base, freeze, x, y, mse, {}


def attention_case(heads, dim, seq, batch, frozen):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((seq, dim))
    base = keras.Model(inputs, keras.layers.MultiHeadAttention(heads, dim // heads, name="attn")(inputs, inputs))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, seq, dim)).astype("float32"))
    y = tf.constant(rng.normal(size=(batch, seq, dim)).astype("float32"))
    return base, {"attn": {"heads": f":{int(round(frozen * heads))}"}}, x, y, mse, {}


# (name, case, steps per round: fewer for the slow ones)
KIND_SCENARIOS = [
    ("Embedding 32,000 x 256, batch 64 x 128, 1% rows trainable", lambda: embedding_case(32000, 256, 64, 128, 0.01), 5),
    ("Tied ReversibleEmbedding head, vocab 32,000, hidden 256, batch 8 x 128, 1% rows trainable",
     lambda: tied_head_case(32000, 256, 8, 128, 0.01), 2),
    ("Conv2D x2, 3x3, 128 -> 128, 32x32, batch 32, 50% random filters frozen", lambda: conv_case(128, 32, 32, 0.5), 1),
    ("Conv2D x2, 3x3, 128 -> 128, 32x32, batch 32, 90% random filters frozen", lambda: conv_case(128, 32, 32, 0.9), 1),
    ("MultiHeadAttention 8 heads, d 512, seq 128, batch 16, 50% heads frozen", lambda: attention_case(8, 512, 128, 16, 0.5), 2),
]
QUICK_KINDS = [
    ("Embedding 500 x 8, 1% rows", lambda: embedding_case(500, 8, 4, 6, 0.01), 1),
    ("Tied ReversibleEmbedding 500 x 8, 1% rows", lambda: tied_head_case(500, 8, 2, 6, 0.01), 1),
    ("Conv2D x2 8 -> 8, 50% filters", lambda: conv_case(8, 6, 2, 0.5), 1),
    ("MultiHeadAttention 4 heads, 50% heads", lambda: attention_case(4, 16, 5, 2, 0.5), 1),
]


def timed(functions, rounds, steps, *args):
    """Median seconds per call of each function, interleaved over rounds after a warm-up."""
    for fn in functions.values():
        for _ in range(2):
            np.asarray(fn(*args))
    times = {key: [] for key in functions}
    for _ in range(rounds):
        for key, fn in functions.items():
            start = time.perf_counter()
            for _ in range(steps):
                out = fn(*args)
            np.asarray(out)
            times[key].append((time.perf_counter() - start) / steps)
    return {key: statistics.median(values) for key, values in times.items()}


def time_kind(scenario, rounds):
    name, case, steps = scenario
    base, freeze, x, y, loss_fn, extra = case()
    split = splitnet.split_model(base, freeze)
    in_place = splitnet.split_model(base, freeze, form="in_place")
    masks = splitnet.frozen_masks(split)
    before = splitnet.merged_weights(base)
    unsplit = keras.models.clone_model(base)
    unsplit.set_weights(base.get_weights())
    masked = keras.models.clone_model(base)
    masked.set_weights(base.get_weights())
    models = {"unsplit": unsplit, "mask": masked, "split": split, "in_place": in_place, **extra}
    opts = {key: optimizer() for key in models}
    steps_fns = {
        key: train_step(model, opts[key], mask_list(masked, masks) if key == "mask" else None, loss_fn)
        for key, model in models.items()
    }
    medians = timed(steps_fns, rounds, steps, x, y)
    merged = splitnet.merge_model(split)
    forward = {key: tf.function(lambda t, m=m: m(t, training=False)) for key, m in (("unsplit", unsplit), ("merged", merged))}
    predict = timed(forward, rounds, steps, x)
    frozen = sum(int(m.sum()) for layer_masks in masks.values() for m in layer_masks.values())
    return {
        "scenario": name,
        "frozen_entries": frozen,
        "params": int(base.count_params()),
        "step_ms": {key: 1e3 * value for key, value in medians.items()},
        "over_unsplit": {key: medians[key] / medians["unsplit"] for key in medians},
        "optimizer_bytes": {key: optimizer_bytes(opt) for key, opt in opts.items()},
        "mask_frozen_changed": drift(masked, before, masks),
        "split_frozen_changed": drift(split, before, masks) + drift(in_place, before, masks),
        "form": "functional" if any(form == "functional" for form in summary.forms(split).values()) else "in place",
        "predict_ms": {key: 1e3 * value for key, value in predict.items()},
        "merged_over_unsplit_predict": predict["merged"] / predict["unsplit"],
    }


def time_grown(width, depth, grow, batch, rounds, steps):
    """An MLP of `depth` hidden layers `width` wide, each grown by `grow` units, old
    entries frozen (grow_model's default), against the grown model trained whole."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((width,), name="x")
    h = inputs
    for i in range(depth):
        h = keras.layers.Dense(width, activation="relu", name=f"hidden_{i}")(h)
    base = keras.Model(inputs, keras.layers.Dense(10, name="out")(h))
    rules = {f"hidden_{i}": {"units": grow} for i in range(depth)}
    grown = splitnet.grow_model(base, rules)
    in_place = splitnet.grow_model(base, rules, form="in_place")
    whole = splitnet.merge_model(grown)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(batch, width)).astype("float32"))
    y = tf.constant(rng.normal(size=(batch, 10)).astype("float32"))
    models = {"unsplit": whole, "split": grown, "in_place": in_place}
    opts = {key: optimizer() for key in models}
    medians = timed({key: train_step(m, opts[key]) for key, m in models.items()}, rounds, steps, x, y)
    return {
        "scenario": f"MLP {depth} x {width} grown by {grow} units each, old frozen, batch {batch}",
        "step_ms": {key: 1e3 * value for key, value in medians.items()},
        "over_whole": {key: medians[key] / medians["unsplit"] for key in medians},
        "optimizer_bytes": {key: optimizer_bytes(opt) for key, opt in opts.items()},
    }


def grown_markdown(r):
    ratio, ms = r["over_whole"], r["step_ms"]
    return "\n".join([
        "| scenario | grown model trained whole ms | split/whole | in place/whole | optimizer MB whole / split |",
        "|---|---|---|---|---|",
        f"| {r['scenario']} | {ms['unsplit']:.1f} | {ratio['split']:.2f} | {ratio['in_place']:.2f} | "
        f"{r['optimizer_bytes']['unsplit'] / 2**20:.1f} / {r['optimizer_bytes']['split'] / 2**20:.1f} |",
    ])


def kinds_markdown(results):
    lines = [
        "| scenario | unsplit ms | split/unsplit | mask/unsplit | other recipe | split form | in place/unsplit | optimizer MB unsplit / split | mask frozen changed | split frozen changed | merged/unsplit predict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio, ob = r["over_unsplit"], r["optimizer_bytes"]
        other = f"PEFT copy: {ratio['peft']:.2f} (split/PEFT {ratio['split'] / ratio['peft']:.2f})" if "peft" in ratio else "-"
        lines.append(
            f"| {r['scenario']} | {r['step_ms']['unsplit']:.1f} | {ratio['split']:.2f} | {ratio['mask']:.2f} | {other} | "
            f"{r['form']} | {ratio['in_place']:.2f} | "
            f"{ob['unsplit'] / 2**20:.1f} / {ob['split'] / 2**20:.2f} | "
            f"{r['mask_frozen_changed']:,} of {r['frozen_entries']:,} | {r['split_frozen_changed']} | "
            f"{r['merged_over_unsplit_predict']:.2f} |"
        )
    return "\n".join(lines)


class PeakRSS:
    """Samples this process's resident memory in a thread; `extra` is the peak above the start."""

    def __init__(self, interval=0.002):
        self.interval = interval

    @staticmethod
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.extra = self.peak - self.start


def time_merge_export(params, repeats):
    depth = 4
    width = int(round((params / depth) ** 0.5))
    base = make_stack(width, depth)
    split = splitnet.split_model(base, freeze_spec(width, depth, 0.5, "random"))
    param_bytes = 4 * base.count_params()
    with PeakRSS() as memory:
        start = time.perf_counter()
        merged = splitnet.merge_model(split)
        merge_s = time.perf_counter() - start
    merge_extra = memory.extra
    with tempfile.TemporaryDirectory() as folder, PeakRSS() as memory:
        start = time.perf_counter()
        splitnet.export_saved_model(split, os.path.join(folder, "export"))
        export_s = time.perf_counter() - start
    export_extra = memory.extra

    x = tf.constant(np.random.default_rng(0).normal(size=(256, width)).astype("float32"))
    predict = {key: tf.function(lambda t, m=m: m(t, training=False)) for key, m in (("unsplit", base), ("merged", merged))}
    for fn in predict.values():
        fn(x).numpy()
    times = {key: [] for key in predict}
    for _ in range(repeats):
        for key, fn in predict.items():
            start = time.perf_counter()
            fn(x).numpy()
            times[key].append(time.perf_counter() - start)
    medians = {key: statistics.median(v) for key, v in times.items()}
    return {
        "params": int(base.count_params()),
        "param_bytes": param_bytes,
        "merge_s": merge_s,
        "merge_peak_extra_bytes": merge_extra,
        "merge_peak_extra_over_params": merge_extra / param_bytes,
        "export_s": export_s,
        "export_peak_extra_bytes": export_extra,
        "predict_ms": {key: 1e3 * v for key, v in medians.items()},
        "merged_over_unsplit_predict": medians["merged"] / medians["unsplit"],
    }


def markdown(results, merge):
    lines = [
        "| scenario | unsplit ms | mask ms | split ms | in place ms | mask/unsplit | split/unsplit | in place/unsplit | optimizer MB unsplit / mask / split | mask frozen changed | split frozen changed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ms, ob = r["step_ms"], r["optimizer_bytes"]
        lines.append(
            f"| {r['scenario']} | {ms['unsplit']:.2f} | {ms['mask']:.2f} | {ms['split']:.2f} | {ms['in_place']:.2f} | "
            f"{r['mask_over_unsplit']:.2f} | {r['split_over_unsplit']:.2f} | {r['in_place_over_unsplit']:.2f} | "
            f"{ob['unsplit'] / 2**20:.1f} / {ob['mask'] / 2**20:.1f} / {ob['split'] / 2**20:.1f} | "
            f"{r['mask_frozen_changed']:,} of {r['frozen_entries']:,} | {r['split_frozen_changed']} |"
        )
    if merge:
        lines += [
            "",
            f"| {merge['params'] / 1e6:.0f}M-parameter model | seconds | peak extra memory |",
            "|---|---|---|",
            f"| merge_model | {merge['merge_s']:.2f} | {merge['merge_peak_extra_bytes'] / 2**20:,.0f} MiB "
            f"({merge['merge_peak_extra_over_params']:.2f}x the parameter bytes) |",
            f"| export_saved_model (merge, export, reload, compare) | {merge['export_s']:.2f} | "
            f"{merge['export_peak_extra_bytes'] / 2**20:,.0f} MiB |",
            "",
            f"Predict, batch 256: merged {merge['predict_ms']['merged']:.2f} ms, unsplit "
            f"{merge['predict_ms']['unsplit']:.2f} ms, ratio {merge['merged_over_unsplit_predict']:.2f}.",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved a-b-c rounds (default 15)")
    parser.add_argument("--steps", type=int, default=5, help="steps timed per variant per round (default 5)")
    parser.add_argument("--merge-params", type=float, default=100e6, help="parameters of the merge/export model; 0 skips")
    parser.add_argument("--only", help="run only scenarios whose name contains this text")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    scenarios = QUICK if args.quick else SCENARIOS
    kind_scenarios = QUICK_KINDS if args.quick else KIND_SCENARIOS
    if args.only:
        scenarios = [s for s in scenarios if args.only in s[0]]
        kind_scenarios = [s for s in kind_scenarios if args.only in s[0]]
    merge_params = 20_000 if args.quick else args.merge_params
    if args.only:
        merge_params = 0
    results = [time_steps(s, args.rounds, args.steps) for s in scenarios]
    grown = None
    if not args.only or "grown" in args.only:
        grown = time_grown(*((16, 2, 4, 8) if args.quick else (1024, 4, 256, 256)), args.rounds, args.steps)
    kind_results = [time_kind(s, args.rounds) for s in kind_scenarios]
    merge = time_merge_export(merge_params, repeats=args.rounds) if merge_params else None
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; medians of {args.rounds} rounds")
    if results or merge:
        print(markdown(results, merge))
    if grown:
        print()
        print(grown_markdown(grown))
    if kind_results:
        print()
        print(kinds_markdown(kind_results))
    if args.json:
        with open(args.json, "w") as f:
            report = {"steps": results, "kinds": kind_results, "merge": merge, "grown": grown}
            json.dump({**report, "tensorflow": tf.__version__, "keras": keras.__version__}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
