"""TensorFlow distribution strategies for `splitnet train --strategy`.

splitnet adds nothing to `tf.distribute`: a split model is an ordinary Keras
model, so build (or load) and compile it inside `strategy.scope()` and call
`fit`. Frozen pieces are non-trainable variables, which no strategy updates.

Example:
    >>> import tensorflow as tf, splitnet
    >>> strategy = tf.distribute.MirroredStrategy()   # doctest: +SKIP
    >>> with strategy.scope():                         # doctest: +SKIP
    ...     model = splitnet.build_model("configs/quickstart.yaml")
    ...     model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    >>> model.fit(x, y, batch_size=256)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os

from splitnet.errors import InputError, TrainingDiverged

STRATEGIES = ("none", "mirrored", "multiworker")


def make_strategy(name):
    """The strategy named `name`; create it before any other TensorFlow work.

    Args:
        name: "none" (the default strategy), "mirrored" (`MirroredStrategy`
            over the local devices) or "multiworker"
            (`MultiWorkerMirroredStrategy`, configured by `TF_CONFIG`).
    """
    import tensorflow as tf

    if name in (None, "none"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise InputError("--strategy multiworker needs TF_CONFIG (the cluster and this worker's task)")
        try:
            json.loads(config)["cluster"]
        except (ValueError, KeyError, TypeError):
            raise InputError("TF_CONFIG is not valid JSON with a `cluster` entry") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise InputError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def fit(model, strategy, data, epochs, batch_size, echo=print, callbacks=(), initial_epoch=0):
    """Train `model` on `data` under `strategy`: `model.fit`, except for multi-worker.

    Keras 3's `fit` fails under `MultiWorkerMirroredStrategy` (it reduces
    scalar metrics along axis 0; keras-team/keras#20585, open as of Keras
    3.15), so there a plain synchronous loop does the same work: per-replica
    loss averaged over the global batch plus regularization losses, the
    compiled optimizer's `apply_gradients` (which all-reduces), one pass
    over the data per epoch. It supports single-output models and no
    validation data; each worker prints its epoch losses.

    Args:
        model: A model built and compiled inside `strategy.scope()`.
        strategy: A `tf.distribute.Strategy`.
        data: `train.Data`.
        epochs, batch_size, initial_epoch: As for `fit`; `batch_size` is the global batch.
        echo: Prints the multi-worker loop's progress lines.
        callbacks: Keras callbacks for `fit`; the multi-worker loop stops on
            a non-finite loss itself and calls `on_epoch_end` of each.
    """
    import keras
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model.fit(
            data.x,
            data.y,
            validation_data=data.validation,
            epochs=epochs,
            batch_size=batch_size,
            callbacks=list(callbacks),
            initial_epoch=initial_epoch,
        )
    if len(model.outputs) != 1 or isinstance(data.x, list):
        raise InputError("--strategy multiworker supports models with one input and one output")
    loss_fn = keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss.call
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((data.x, data.y)).batch(batch_size).with_options(options)
    batches = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                per_example = loss_fn(y, model(x, training=True))
                # Per sample: the mean over any remaining axes, as Keras' default reduction does.
                per_example = tf.reduce_mean(tf.reshape(per_example, [tf.shape(per_example)[0], -1]), axis=1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch_size)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return strategy.reduce("SUM", strategy.run(replica_step, args=(x, y)), axis=None)

    for callback in callbacks:
        callback.set_model(model)
    for epoch in range(initial_epoch, epochs):
        losses = [float(step(x, y)) for x, y in batches]
        loss = sum(losses) / len(losses)
        echo(f"epoch {epoch + 1}/{epochs} - {len(losses)} steps - loss: {loss:.4f}")
        if not math.isfinite(loss):
            raise TrainingDiverged.at(loss, epoch + 1)
        for callback in callbacks:
            callback.on_epoch_end(epoch, {"loss": loss})
    return None
