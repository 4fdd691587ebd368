"""The compiled part of `fastcustom.fit`: many optimizer steps per call, and evaluation.

By default one call runs a whole epoch (`train_epoch`): it zeroes the metrics,
gathers the epoch's permutation of (x, y), reshapes it into `[steps, batch, ...]`
and runs a `tf.while_loop` in which step `i` reads the contiguous slice
`batches[i]`, then the smaller leftover batch. With `steps_per_call`, `train`
runs steps `start .. stop-1` of batches formed before the epoch. Each step is
the one Keras's TF trainer takes: forward with `training=True`, the loss plus
`model.losses`, gradients, `optimizer.apply_gradients`, the loss tracker and
the metrics. `evaluate` does the same with `training=False` and no update.

Each iteration of an XLA:CPU while loop costs about 4 us beyond its steps (the
runtime starts the body's kernel graph anew and fans it out over the intra-op
threads), a fifth of a step of the notes' small model (20 us). So for a
small step (trainable parameters x batch size <= `SMALL_STEP`) an iteration
runs two steps, and a second loop runs the odd last one: 10-18% more steps per
second there (bench/RESULTS.md), for twice the compile time, which is why
larger models, where that cost is noise, keep one step per iteration.

Compilation: with `jit_compile="auto"` the loop is compiled with XLA; if XLA
cannot compile it (a custom op without an XLA kernel: "Detected unsupported
operations") the loop falls back, once and with a warning, to a plain TF graph.
Under a strategy with several replicas the loop stays in cross-replica context
and runs each step with `strategy.run` on per-replica slices of the batch (the
way Keras runs `steps_per_execution`); that loop is a plain graph, since XLA
does not compile cross-device collectives here.
"""

import math
import warnings

import keras
import tensorflow as tf

from fastcustom.training.data import epoch_batches

# The errors XLA raises when it cannot compile a function (raised at its first call).
_XLA_COMPILE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                       tf.errors.InternalError)

# Unroll the compiled loop (two steps per iteration) when trainable parameters x batch size
# is at most this: a step of about a million multiply-adds or fewer.
SMALL_STEP = 1 << 20


def _take(batches, index):
    """Batch `index` of every `[steps, batch, ...]` tensor in the nest `batches`."""
    return tf.nest.map_structure(lambda t: t[index], batches)


class TrainingLoop:
    """The compiled train and evaluation functions for one model, loss, optimizer and metrics.

    `train_epoch`, `train` and `evaluate` return the logs (loss and metric
    results) as scalar tensors; `compiled_with` says "xla" or "graph".
    """

    def __init__(self, model, loss, optimizer, metrics, strategy, jit_compile="auto"):
        if jit_compile not in ("auto", True, False):
            raise ValueError(f"`jit_compile` must be 'auto', True or False, got {jit_compile!r}.")
        self.model, self.loss, self.optimizer, self.metrics = model, loss, optimizer, metrics
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        if jit_compile is True and self.replicas > 1:
            raise ValueError("jit_compile=True is not supported under a strategy with "
                             f"{self.replicas} replicas: XLA cannot compile the loop across "
                             "devices. Use jit_compile='auto' (a plain graph there).")
        with strategy.scope():
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.val_loss_tracker = keras.metrics.Mean(name="loss")
        self._xla = jit_compile is True or (jit_compile == "auto" and self.replicas == 1)
        self._may_fall_back = jit_compile == "auto"
        self._compiled = {}

    @property
    def compiled_with(self):
        return "xla" if self._xla else "graph"

    # -- one step, in replica context ------------------------------------------------
    def _total_loss(self, y, y_pred):
        """This replica's share of the batch loss: the loss plus `model.losses`.

        A `keras.losses.Loss` already divides by the number of replicas (so
        the summed gradients are the global batch's); `model.losses` are
        divided here, as Keras's TF trainer does.
        """
        value = self.loss(y, y_pred)
        if value.shape.rank:  # Keras returns an empty batch's loss unreduced, shape [0]
            value = tf.reduce_sum(value)
        extra = [tf.reduce_sum(tf.cast(term, value.dtype)) for term in self.model.losses]
        if extra:
            value = value + tf.add_n(extra) / self.replicas
        return value

    def _update_metrics(self, x, y, y_pred, loss, tracker):
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        tracker.update_state(loss * self.replicas, sample_weight=batch_size)
        for metric in self.metrics:
            metric.update_state(y, y_pred)

    def _train_step(self, x, y):
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            loss = self._total_loss(y, y_pred)
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.model.trainable_variables
        if variables:
            gradients = tape.gradient(scaled_loss, variables)
            self.optimizer.apply_gradients(zip(gradients, variables))
        self._update_metrics(x, y, y_pred, loss, self.loss_tracker)

    def _eval_step(self, x, y):
        y_pred = self.model(x, training=False)
        self._update_metrics(x, y, y_pred, self._total_loss(y, y_pred), self.val_loss_tracker)

    # -- the loop, in cross-replica context ------------------------------------------
    def _run(self, step, *args):
        if self.replicas > 1:
            return self.strategy.run(step, args=args)
        return step(*args)

    def steps_per_iteration(self, batch_size):
        """Steps per iteration of the compiled loop: 2 for a small step under XLA on one
        replica (trainable parameters x `batch_size` <= `SMALL_STEP`), else 1."""
        if not self._xla or self.replicas > 1:
            return 1
        parameters = sum(math.prod(v.shape) for v in self.model.trainable_variables)
        return 2 if parameters * batch_size <= SMALL_STEP else 1

    def _steps(self, step, batches, start, stop, tail):
        def one_batch(x_batches, y_batches, index):
            step(_take(x_batches, index), _take(y_batches, index))

        def loop(first, per_iteration):
            """Runs steps first.. in iterations of `per_iteration` while they fit before stop."""
            def body(index):
                for offset in range(per_iteration):
                    self._run(one_batch, *batches, index + offset)
                return (index + per_iteration,)

            return tf.while_loop(lambda index: index + per_iteration <= stop, body, (first,),
                                 parallel_iterations=1)[0]

        steps, batch_size = tf.nest.flatten(batches, expand_composites=True)[0].shape[:2]
        if steps:  # XLA can't slice []
            per_iteration = self.steps_per_iteration(batch_size)
            index = loop(start, per_iteration)
            first, last = tf.get_static_value(start), tf.get_static_value(stop)
            if per_iteration > 1 and (first is None or last is None
                                      or (last - first) % per_iteration):
                loop(index, 1)
        if tail is not None:
            self._run(step, *tail)

    def _logs(self, tracker):
        return {"loss": tracker.result(), **{m.name: m.result() for m in self.metrics}}

    def _reset_fn(self, tracker=None):
        for metric in (tracker or self.loss_tracker, *self.metrics):
            metric.reset_state()

    def _train_fn(self, batches, start, stop, tail):
        self._steps(self._train_step, batches, start, stop, tail)
        return self._logs(self.loss_tracker)

    def _train_epoch_fn(self, data, order, batch_size):
        self._reset_fn()
        full, tail = epoch_batches(data, order, batch_size)
        steps = tf.nest.flatten(full)[0].shape[0]
        return self._train_fn(full, tf.constant(0), tf.constant(steps), tail)

    def _eval_fn(self, batches, stop, tail):
        self._reset_fn(self.val_loss_tracker)
        self._steps(self._eval_step, batches, tf.constant(0), stop, tail)
        return self._logs(self.val_loss_tracker)

    # -- compilation -----------------------------------------------------------------
    def _call(self, fn, *args):
        """`fn(*args)` as a tf.function: XLA-compiled, or a graph after XLA failed once."""
        key = (fn.__name__, self._xla)
        if key not in self._compiled:
            self._compiled[key] = tf.function(fn, jit_compile=self._xla, autograph=False)
        try:
            with self.strategy.scope():
                return self._compiled[key](*args)
        except _XLA_COMPILE_ERRORS as err:
            if not (self._xla and self._may_fall_back):
                raise
            self._xla = self._may_fall_back = False
            reason = str(err).strip().splitlines()[0][:300]
            warnings.warn(f"fastcustom.fit: XLA could not compile the training loop ({reason}); "
                          "running it as a plain TF graph instead.", RuntimeWarning, stacklevel=2)
            return self._call(fn, *args)

    def train_epoch(self, data, order, batch_size):
        """A whole epoch in one call: zero the metrics, batch (x, y) in `order`, run every step.

        `order` is an int32 permutation of the samples, or None for the stored order.
        """
        return self._call(self._train_epoch_fn, data, order, batch_size)

    def reset(self):
        """Zero the training loss tracker and the metrics (before `train`)."""
        self._call(self._reset_fn)

    def train(self, batches, start, stop, tail=None):
        """Steps `start..stop-1` of `batches` = (x, y) `[steps, batch, ...]`, then `tail`."""
        return self._call(self._train_fn, batches, tf.constant(start, tf.int32),
                          tf.constant(stop, tf.int32), tail)

    def evaluate(self, batches, steps, tail=None):
        """Zero the metrics, then the loss and metrics over `steps` batches and `tail`."""
        return self._call(self._eval_fn, batches, tf.constant(steps, tf.int32), tail)
