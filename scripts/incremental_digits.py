#!/usr/bin/env python
"""Class-incremental learning on real data: a 5-class digit classifier grows to 10 classes.

Uses scikit-learn's bundled digits (8x8 images, 1,797 samples; nothing is
downloaded; `pip install -e ".[examples]"`). A small MLP learns digits 0-4;
`splitnet.grow_model` then adds 5 class units and the model learns digits
5-9, in six ways:

    naive fine-tuning    grown, nothing frozen (`old: trainable`)
    old classes frozen   grown, the old class units frozen (the default)
    + trunk frozen       ... and the hidden layers frozen whole (`freeze:`)

each without and with a small replay set (a few stored examples of each
old class mixed into the new data). It prints the accuracy on the held-out
test digits: old classes (0-4), new classes (5-9), all; and checks with
`splitnet.verify` that every frozen entry is bit-identical to the trained
5-class model's.

Usage:
    python scripts/incremental_digits.py              # the README's table
    python scripts/incremental_digits.py --quick      # fewer epochs, for the tests
    python scripts/incremental_digits.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import splitnet  # noqa: E402

OLD, NEW = range(0, 5), range(5, 10)
VARIANTS = (  # name, grow rule, freeze rules
    ("naive fine-tuning", {"classes": {"units": 5, "old": "trainable"}}, None),
    ("old classes frozen", {"classes": {"units": 5}}, None),
    ("old classes + trunk frozen", {"classes": {"units": 5}}, {"hidden1": {"units": "all"}, "hidden2": {"units": "all"}}),
)


def load(seed=0):
    """Digits as float pixels in [0, 1]; a stratified 70/30 train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return train_test_split(x, digits.target, test_size=0.3, stratify=digits.target, random_state=seed)


def base_model():
    """An MLP on the 64 pixels; `classes` gives logits (the loss applies the softmax)."""
    pixels = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(64, activation="relu", name="hidden1")(pixels)
    h = keras.layers.Dense(64, activation="relu", name="hidden2")(h)
    return keras.Model(pixels, keras.layers.Dense(5, name="classes")(h), name="digits")


def compile_(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def accuracy(model, x, y, classes):
    keep = np.isin(y, list(classes))
    predicted = np.argmax(model.predict(x[keep], verbose=0), axis=-1)
    return float(np.mean(predicted == y[keep]))


def replay_set(x, y, per_class, seed):
    """`per_class` stored training examples of each old class."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in OLD]
    return np.concatenate(picks)


def run(epochs_base=40, epochs_new=20, per_class=10, seed=0):
    """Train the base, grow it six ways; return the rows of the table."""
    x_train, x_test, y_train, y_test = load(seed)
    keras.utils.set_random_seed(seed)
    base = compile_(base_model(), 3e-3)
    old = np.isin(y_train, list(OLD))
    base.fit(x_train[old], y_train[old], epochs=epochs_base, batch_size=32, verbose=0)
    rows = [{
        "setting": "base model (5 classes)", "replay": "-", "old": accuracy(base, x_test, y_test, OLD),
        "new": None, "all": None, "frozen": 0, "changed": 0, "logits_kept": None,
    }]
    new = np.isin(y_train, list(NEW))
    replay = replay_set(x_train, y_train, per_class, seed)
    for name, grow, freeze in VARIANTS:
        for with_replay in (False, True):
            keras.utils.set_random_seed(seed)
            model = compile_(splitnet.grow_model(base, grow, freeze), 1e-3)
            index = np.concatenate([np.flatnonzero(new), replay]) if with_replay else np.flatnonzero(new)
            model.fit(x_train[index], y_train[index], epochs=epochs_new, batch_size=32, shuffle=True, verbose=0)
            check = splitnet.verify(base, model) if splitnet.frozen_masks(model) else None
            old_logits = np.asarray(model(x_test))[:, :5]
            rows.append({
                "setting": name,
                "replay": f"{per_class}/class" if with_replay else "none",
                "old": accuracy(model, x_test, y_test, OLD),
                "new": accuracy(model, x_test, y_test, NEW),
                "all": accuracy(model, x_test, y_test, range(10)),
                "frozen": 0 if check is None else check.frozen,
                "changed": 0 if check is None else check.changed,
                # old logits bit for bit as the base model's: what freezing everything they read gives
                "logits_kept": bool(np.array_equal(old_logits, np.asarray(base(x_test)))),
            })
    return rows


def markdown(rows):
    def pct(value):
        return "-" if value is None else f"{value:.2f}"

    lines = [
        "| setting | replay | old classes (0-4) | new classes (5-9) | all | frozen entries (all bit-identical) | old logits unchanged |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        frozen = "-" if not r["frozen"] else f"{r['frozen']:,}" + ("" if r["changed"] == 0 else f" ({r['changed']} CHANGED)")
        kept = "-" if r["logits_kept"] is None else ("yes" if r["logits_kept"] else "no")
        lines.append(f"| {r['setting']} | {r['replay']} | {pct(r['old'])} | {pct(r['new'])} | {pct(r['all'])} | {frozen} | {kept} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs: checks that it runs, not what it finds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    epochs = dict(epochs_base=3, epochs_new=2) if args.quick else {}
    rows = run(seed=args.seed, **epochs)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
