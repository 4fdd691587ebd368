"""The compiled loops: many of the model's own `train_step` / `test_step` / `predict_step`
per call.

A call gets `full`, the data of `k` steps as `[k, batch, ...]` tensors (the
packed `(x, y, sample_weight)` tuple Keras's steps take), the steps
`start .. stop - 1` of it to run, and `tail`, a smaller last batch or None. It
runs them in a `tf.while_loop` where step `i` reads the slice `full[i]`, then
the tail, and returns what Keras's loop returns after the same steps: the
model's metric results (`model.get_metrics_result()`), or, for a model that
overrides `train_step`, `test_step` or `compute_metrics`, the outputs of its
last step. `train_epoch` also forms the epoch's batches inside the call: one
`tf.gather` by the epoch's permutation and a reshape.

The step is the model's, so everything `model.compile` set up takes part: the
compiled loss (per output, `loss_weights`), compiled metrics and
`weighted_metrics`, `model.losses`, the loss-scale optimizer under mixed
precision, and any override of the steps.

For small steps (trainable parameters x batch size <= `SMALL_STEP`) in a fit
of at least `UNROLL_AFTER_STEPS` steps an iteration runs two steps: XLA:CPU
starts each iteration's kernels anew, a fixed cost of 2-5 us a step of the
notes' model, while the second copy of the step (and the odd one's) costs
about 1.1 s more to compile, repaid after some 300,000 steps
(bench/RESULTS.md). The odd step runs after the loop (inline when the count is
known when tracing, as for a whole epoch; else in a second loop). The first fit
that runs a step decides, and the decision is kept: a later, longer fit reuses the
loop already compiled.

With `FASTCUSTOM_XLA_CACHE=1` compiled loops are kept on disk across processes
by TensorFlow's persistent XLA cache (`fastcustom/xla_cache.py`).

Compilation: with `jit_compile="auto"` the loops are compiled with XLA when
every layer supports it; if XLA cannot compile them (a custom op without an
XLA kernel: "Detected unsupported operations") they fall back, once and with a
warning, to a plain TF graph. Under a strategy with several replicas the loop
stays in cross-replica context and runs each step with `strategy.run` on
per-replica slices of the batch (the way Keras runs `steps_per_execution`), as
a plain graph, since XLA does not compile cross-device collectives here.
"""

import math
import warnings

import tensorflow as tf

from fastcustom.training import keras_internals
from fastcustom.training.data import epoch_batches, map_arrays

# The errors XLA raises when it cannot compile a function (raised at its first call).
_XLA_COMPILE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                       tf.errors.InternalError)

# Two steps per loop iteration when trainable parameters x batch size is at most this,
# in a fit of at least this many steps.
SMALL_STEP = 1 << 20
UNROLL_AFTER_STEPS = 300_000


def _leading_shape(full):
    """(steps, batch) of the stacked batches `full`, per replica under a strategy; (0, 0) for None."""
    leaves = [t for t in tf.nest.flatten(full, expand_composites=True) if t is not None]
    return tuple(leaves[0].shape[:2]) if leaves else (0, 0)


def _signature(value):
    """What decides the trace of a loop for the arguments `value`, hashable.

    As `tf.function` reads them: the containers (type, dict keys, length),
    each tensor's shape and dtype, any other leaf (None, a Python int) as is.
    """
    if isinstance(value, tf.Tensor):
        return tuple(value.shape), value.dtype
    if isinstance(value, (list, tuple)):
        return type(value), tuple(_signature(item) for item in value)
    if isinstance(value, dict):
        return type(value), tuple((key, _signature(value[key]))
                                  for key in sorted(value, key=str))
    return value


def as_keras_batch(batch):
    """`batch` with its batch axis of unknown static size, as Keras's data sets give it.

    Keras's step reads static shapes in places (the per-output loss trackers
    weight a batch by `y_pred.shape[0]`, and by nothing when it is None), so the
    step must see what it sees in `model.fit`; XLA still compiles the real sizes.
    """
    return map_arrays(lambda t: tf.raw_ops.PlaceholderWithDefault(
        input=t, shape=[None, *t.shape[1:]]), batch)


def _take(batches, index):
    """Batch `index` of every `[steps, batch, ...]` tensor in the nest `batches`."""
    return as_keras_batch(map_arrays(lambda t: t[index], batches))


class CompiledLoops:
    """The compiled train, test and predict loops of one compiled model.

    `train_epoch`, `train` and `test` return logs as scalar tensors; `predict`
    returns the outputs of its batches, concatenated. `compiled_with` says
    "xla" or "graph".
    """

    def __init__(self, model, jit_compile="auto"):
        if jit_compile not in ("auto", True, False):
            raise ValueError(f"`jit_compile` must be 'auto', True or False, got {jit_compile!r}.")
        self.model = model
        self.strategy = model.distribute_strategy
        self.replicas = self.strategy.num_replicas_in_sync
        if jit_compile is True and self.replicas > 1:
            raise ValueError("jit_compile=True is not supported under a strategy with "
                             f"{self.replicas} replicas: XLA cannot compile the loop across "
                             "devices. Use jit_compile='auto' (a plain graph there).")
        supports_xla = all(layer.supports_jit for layer in model._flatten_layers())
        self._xla = jit_compile is True or (jit_compile == "auto" and self.replicas == 1
                                            and supports_xla)
        self._may_fall_back = jit_compile == "auto"
        self._steps_log_metrics = {
            "train": not keras_internals.overrides(model, "train_step", "compute_metrics"),
            "test": not keras_internals.overrides(model, "test_step", "compute_metrics")}
        self._unroll = None   # two steps per iteration: the first `plan` decides
        self._compiled = {}   # (loop name, XLA or not) -> its tf.function
        self._concrete = {}   # ((loop name, XLA or not), _signature of the arguments) -> trace
        # The steps as functions of their own, traced once however often the loops call
        # them (unrolled, the odd step, the tail); XLA inlines the calls. Not under several
        # replicas: `strategy.run` of a nested tf.function can't all-reduce (merge_call).
        nest = (lambda step: tf.function(step, autograph=False)) if self.replicas == 1 \
            else (lambda step: step)
        self._train_step = nest(model.train_step)
        self._test_step = nest(model.test_step)

    @property
    def compiled_with(self):
        return "xla" if self._xla else "graph"

    def plan(self, steps):
        """A fit's step count (None when unknown), before it runs: the first that is not
        0 decides whether small steps run two per iteration (at least
        `UNROLL_AFTER_STEPS`)."""
        if self._unroll is None and steps != 0:
            self._unroll = steps is not None and steps >= UNROLL_AFTER_STEPS

    def steps_per_iteration(self, batch_size):
        """2 for a small step under XLA on one replica in a long fit (`plan`), else 1."""
        if not (self._xla and self.replicas == 1 and self._unroll):
            return 1
        parameters = sum(math.prod(v.shape) for v in self.model.trainable_variables)
        return 2 if parameters * batch_size <= SMALL_STEP else 1

    # -- the loop, in cross-replica context ------------------------------------------
    def _run(self, step, data, reduction="auto"):
        """One step on `data`; its outputs reduced across replicas as Keras does.

        `reduction=None`: not reduced (outputs nobody reads: no collective for them).
        Several workers, "auto": the mean across replicas of each output (Keras's
        `reduce_per_replica` there means scalars over an axis 0 they lack, keras#20585).
        """
        if self.replicas == 1:
            return step(data)
        outputs = self.strategy.run(step, args=(data,))
        if reduction is None:
            return outputs
        if reduction == "auto" and keras_internals.multi_worker(self.strategy):
            return tf.nest.map_structure(
                lambda v: self.strategy.reduce("MEAN", v, axis=None), outputs)
        return keras_internals.reduce_per_replica(outputs, self.strategy, reduction)

    def _steps(self, step, full, start, stop, tail, keep_last):
        """Steps start..stop-1 of `full`, then `tail`; the last step's outputs if `keep_last`."""
        steps, batch_size = _leading_shape(full)
        last_outputs = None
        if steps:  # XLA can't slice []
            if keep_last and tail is None:
                stop = stop - 1   # the last full step runs after the loop, for its outputs
            per_iteration = self.steps_per_iteration(batch_size)

            def loop(first, per_iteration):
                def body(index):
                    for offset in range(per_iteration):
                        self._run(lambda data, i=index + offset: step(_take(data, i)), full,
                                  reduction=None)
                    return (index + per_iteration,)

                return tf.while_loop(lambda index: index + per_iteration <= stop, body, (first,),
                                     parallel_iterations=1)[0]

            index = loop(start, per_iteration)
            first, last = tf.get_static_value(start), tf.get_static_value(stop)
            if first is not None and last is not None:   # a whole epoch: the count is known
                if (last - first) % per_iteration:          # the odd step, inline
                    self._run(lambda data: step(_take(data, last - 1)), full, reduction=None)
            elif per_iteration > 1:
                loop(index, 1)
            if keep_last and tail is None:
                last_outputs = self._run(lambda data: step(_take(data, stop)), full)
        if tail is not None:
            last_outputs = self._run(lambda data: step(as_keras_batch(data)), tail)
        return last_outputs

    def _logs(self, kind, last_outputs):
        if self._steps_log_metrics[kind]:
            return self.model.get_metrics_result()
        return last_outputs

    def _train_fn(self, full, start, stop, tail):
        keep = not self._steps_log_metrics["train"]
        return self._logs("train", self._steps(self._train_step, full, start, stop, tail,
                                               keep))

    def _train_epoch_fn(self, data, order, batch_size):
        full, tail = epoch_batches(data, order, batch_size)
        steps = _leading_shape(full)[0]
        return self._train_fn(full, tf.constant(0), tf.constant(steps), tail)

    def _test_fn(self, full, start, stop, tail):
        keep = not self._steps_log_metrics["test"]
        return self._logs("test", self._steps(self._test_step, full, start, stop, tail,
                                              keep))

    def _predict_fn(self, full, tail):
        """Every batch of `full`, then `tail`, through `predict_step`; outputs concatenated."""
        def predict_on(data, index=None):
            take = (lambda d: _take(d, index)) if index is not None else as_keras_batch
            return self._run(lambda d: self.model.predict_step(take(d)), data, "concat")

        def flatten_steps(stacked):
            return tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], 0))

        outputs = []
        steps = _leading_shape(full)[0]
        if steps:
            first = predict_on(full, 0)
            arrays = tf.nest.map_structure(
                lambda t: tf.TensorArray(t.dtype, size=steps, element_shape=t.shape).write(0, t),
                first)

            def body(index, arrays):
                return index + 1, tf.nest.map_structure(lambda a, t: a.write(index, t),
                                                        arrays, predict_on(full, index))

            _, arrays = tf.while_loop(lambda index, _: index < steps, body,
                                      (tf.constant(1), arrays), parallel_iterations=1)
            outputs.append(tf.nest.map_structure(lambda a: flatten_steps(a.stack()), arrays))
        if tail is not None:
            outputs.append(predict_on(tail))
        if len(outputs) == 1:
            return outputs[0]
        return tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *outputs)

    # -- compilation -----------------------------------------------------------------
    def _traced(self, fn, args):
        """`fn`'s traced (concrete) function for `args`, traced on first use.

        A `tf.function` call matches its arguments against its traces every
        time (TensorFlow's `trace_type` walk of the whole nest and binding to
        the signature): a fixed cost per call that shows when calls are short
        (32 steps of a small model, with batch callbacks or a streamed window)
        and repeats for the same shapes. So the traces are looked up here by
        `_signature` and called directly. Under several replicas (per-replica
        values, a plain graph) the `tf.function` picks as usual.
        """
        key = (fn.__name__, self._xla)
        if key not in self._compiled:
            self._compiled[key] = tf.function(fn, jit_compile=self._xla, autograph=False)
        if self.replicas > 1:
            return self._compiled[key]
        signature = (key, _signature(args))
        if signature not in self._concrete:
            self._concrete[signature] = self._compiled[key].get_concrete_function(*args)
        return self._concrete[signature]

    def _call(self, fn, *args):
        """`fn(*args)` as a tf.function: XLA-compiled, or a graph after XLA failed once."""
        try:
            with self.strategy.scope():
                return self._traced(fn, args)(*args)
        except _XLA_COMPILE_ERRORS as err:
            if not (self._xla and self._may_fall_back):
                raise
            self._xla = self._may_fall_back = False
            reason = str(err).strip().splitlines()[0][:300]
            warnings.warn(f"fastcustom: XLA could not compile the model's loop ({reason}); "
                          "running it as a plain TF graph instead.", RuntimeWarning, stacklevel=3)
            return self._call(fn, *args)

    def train_epoch(self, data, order, batch_size):
        """A whole epoch in one call: `data` batched in `order` (int32 or None), every step."""
        return self._call(self._train_epoch_fn, data, order, batch_size)

    def train(self, full, start, stop, tail=None):
        """Training steps `start..stop-1` of `full`, then `tail`; the logs."""
        return self._call(self._train_fn, full, tf.constant(start, tf.int32),
                          tf.constant(stop, tf.int32), tail)

    def test(self, full, start, stop, tail=None):
        """Test steps `start..stop-1` of `full`, then `tail`; the logs."""
        return self._call(self._test_fn, full, tf.constant(start, tf.int32),
                          tf.constant(stop, tf.int32), tail)

    def predict(self, full, tail=None):
        """`predict_step` on every batch of `full` and on `tail`, concatenated."""
        return self._call(self._predict_fn, full, tail)


def compiled_loops(model, jit_compile="auto"):
    """The model's `CompiledLoops`, made again after a new `compile` (like `train_function`).

    Kept on the model past Keras's attribute tracking, so it is not saved.
    """
    key = (id(model.optimizer), id(keras_internals.compile_loss(model)),
           id(keras_internals.compile_metrics(model)), id(model.distribute_strategy), jit_compile,
           tuple(id(v) for v in model.trainable_variables))
    cached = getattr(model, "_fastcustom_loops", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    loops = CompiledLoops(model, jit_compile)
    object.__setattr__(model, "_fastcustom_loops", (key, loops))
    return loops
