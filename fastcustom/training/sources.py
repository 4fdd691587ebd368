"""The data of a `fit`, `evaluate` or `predict` call, one epoch at a time, as compiled calls.

Two sources, one interface: `steps` (per epoch, None while unknown), `reset()`,
`catch_stop_iteration()`, and `calls(...)`, one epoch's `Call`s, each a window
(`fastcustom.training.windows`) and the steps of it to run.

- `ArraySource`: arrays and tensors, as Keras's `ArrayDataAdapter` checks and converts
  them (cardinality, `class_weight` into sample weights, one `sample_weight` replicated
  over outputs, float64 and float16 to `floatx`), moved to the device once. An epoch is
  an order of the samples (`epoch_order`); each step gathers its rows inside the
  compiled call, so no permuted copy of the data is made. Under several replicas each
  replica gathers its own rows of every batch per epoch (`replica_batches`).
- `StreamSource`: a `tf.data.Dataset`, a generator or a `keras.utils.PyDataset`, read
  exactly as Keras's `fit` reads it: through Keras's own `EpochIterator` (the same
  `iter()` calls, `on_epoch_begin` / `on_epoch_end` at the same points, `steps_per_epoch`
  carried across epochs), a window of consecutive batches at a time, each read by one
  graph call (`read_window`: a `get_next` per batch, their rows concatenated), never
  past the steps Keras would take (`steps_per_epoch`, `validation_steps`, the end of the
  data). A window is `per_call` batches where a batch hook sets it, else batches up to
  `WINDOW_BYTES`. The data set is never held whole.

Shuffling arrays: with `seed`, `np.random.default_rng(seed)`; without, a generator seeded
from Python's `random` (which `keras.utils.set_random_seed` seeds, as Keras seeds its own
generators), drawn once per fit; `rng.permutation(n)` per epoch
(`fastcustom.baselines.training_loop` documents the same order).
"""

import concurrent.futures
import math
import random
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from fastcustom.training import keras_internals
from fastcustom.training.windows import (Indexed, Stacked, batch_spec, first_tensor,
                                         map_arrays)


class Call(NamedTuple):
    """One compiled call: steps `start .. stop - 1` of `window`, then `tail` (a smaller
    last batch, or None); `step` is the epoch's index of its first step."""

    window: Any
    start: int
    stop: int
    tail: Any
    step: int

    @property
    def steps(self):
        return self.stop - self.start + (self.tail is not None)

    def first_batch(self):
        """The call's first batch (eager), to build a model from."""
        if self.stop > self.start:
            return self.window.batch(tf.constant(self.start))
        return self.window.tail_batch(self.tail)

    def first_spec(self):
        """The `tf.TensorSpec`s of the call's first batch (an `Indexed` window's): its
        shapes and dtypes, all Keras's symbolic build reads of a batch, with no op run."""
        rows = self.window.batch_size if self.stop > self.start else self.window.tail_rows
        return batch_spec(self.window.data, rows)


def shuffle_rng(seed):
    """The generator of a fit's epoch orders: `seed`'s, or one drawn from Python's
    `random` (seeded by `keras.utils.set_random_seed`)."""
    if seed is None:
        seed = random.randint(0, 2**63 - 1)
    return np.random.default_rng(seed)


def epoch_order(rng, num_samples, shuffle):
    """This epoch's order: `rng.permutation(n)` as an int32 tensor when shuffling, else None."""
    return tf.constant(rng.permutation(num_samples), tf.int32) if shuffle else None


def replica_rows(batch_size, replicas):
    """(first, stop) rows of each replica's part of a batch of `batch_size` rows.

    Contiguous blocks, the first replicas a row more when the batch does not
    divide evenly, as `tf.distribute` splits a batch.

    >>> replica_rows(5, 2)
    [(0, 3), (3, 5)]
    """
    sizes = [batch_size // replicas + (1 if r < batch_size % replicas else 0)
             for r in range(replicas)]
    stops = [sum(sizes[:r + 1]) for r in range(replicas)]
    return [(stop - size, stop) for size, stop in zip(sizes, stops)]


def replica_batches(strategy, data, order, batch_size):
    """(full, tail) as per-replica values: each replica gathers its own rows of every batch.

    The global batches are those one device would run (`batch_size` rows in
    `order`); replica `r` of `num_replicas_in_sync` takes its `replica_rows` block
    of each, by sample index, on its own device. Under `MultiWorkerMirroredStrategy`
    every worker holds the same arrays and the same `order`, and forms only its own
    replicas' parts (the strategy calls the value function for the local replicas,
    with their global ids), so the workers together run exactly the global batches.
    """
    num_samples = int(first_tensor(data).shape[0])
    steps, leftover = divmod(num_samples, batch_size)
    indices = tf.range(num_samples) if order is None else order
    full_indices = tf.reshape(indices[:steps * batch_size], [steps, batch_size])
    tail_indices = indices[steps * batch_size:]
    replicas = strategy.num_replicas_in_sync
    devices = strategy.extended.worker_devices   # this worker's devices only

    def per_replica(indices_of, size):
        if not size:
            return None

        def value_for(context):
            replica = context.replica_id_in_sync_group          # global id
            first, stop = replica_rows(size, replicas)[replica]
            with tf.device(devices[replica % len(devices)]):     # its local device
                rows = indices_of(first, stop)
                return map_arrays(lambda t: tf.gather(t, rows), data)

        return strategy.experimental_distribute_values_from_function(value_for)

    full = per_replica(lambda first, stop: full_indices[:, first:stop], batch_size * (steps > 0))
    tail = per_replica(lambda first, stop: tail_indices[first:stop], leftover)
    return full, tail


def _on_device(inputs):
    """Keras's TensorFlow-ready arrays as tensors on the default device, once."""
    return map_arrays(lambda leaf: tf.identity(tf.convert_to_tensor(leaf)), inputs)


class ArraySource:
    """Arrays or tensors on the device; `steps` per epoch: `full_steps` of `batch_size`
    and, when `has_tail`, a smaller last one."""

    def __init__(self, x, y=None, sample_weight=None, batch_size=None, class_weight=None,
                 what="training data", strategy=None):
        inputs, self.num_samples, self.batch_size = keras_internals.array_inputs(
            x, y, sample_weight=sample_weight, batch_size=batch_size, class_weight=class_weight)
        if self.num_samples == 0:
            raise ValueError(f"The {what} is empty: it has 0 samples.")
        for leaf in tf.nest.flatten(inputs):
            if leaf is not None and np.ndim(leaf) == 0:
                raise ValueError(f"The {what} must have a leading samples axis, got a scalar.")
        self.data = _on_device(inputs)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.full_steps, leftover = divmod(self.num_samples, self.batch_size)
        self.has_tail = leftover > 0
        self.steps = self.full_steps + int(self.has_tail)
        self._unshuffled = None

    def first_batch(self):
        """The first batch, to build the model from."""
        return map_arrays(lambda t: t[:self.batch_size], self.data)

    def first_spec(self):
        """The `tf.TensorSpec`s of the first batch (`Call.first_spec`)."""
        return batch_spec(self.data, min(self.batch_size, self.num_samples))

    def reset(self):
        """Nothing to do: arrays have no epoch hooks."""

    def catch_stop_iteration(self):
        return _NO_STOP

    def _window(self, order):
        """(window, tail) of one epoch in `order`."""
        if self.strategy.num_replicas_in_sync == 1:
            return Indexed(self.data, order, self.batch_size), (True if self.has_tail else None)
        if order is None and self._unshuffled is not None:
            return self._unshuffled
        full, tail = replica_batches(self.strategy, self.data, order, self.batch_size)
        window = (Stacked(full), tail)
        if order is None:
            self._unshuffled = window
        return window

    def calls(self, order, per_call):
        """One epoch in `order` (None: the stored order) as calls of `per_call` steps
        (None: the whole epoch in one call)."""
        window, tail = self._window(order)
        per_call = per_call or self.steps
        for first in range(0, self.steps, per_call):
            last = min(first + per_call, self.steps)
            with_tail = self.has_tail and last == self.steps
            yield Call(window, first, min(last, self.full_steps), tail if with_tail else None,
                       first)


class _NoStop:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_STOP = _NoStop()


def _has_static_rows(spec):
    """Whether every tensor of an element spec has a known shape past its batch axis."""
    return all(isinstance(s, tf.TensorSpec) and s.shape.rank is not None
               and s.shape[1:].is_fully_defined() for s in tf.nest.flatten(spec))


@tf.function(autograph=False)
def read_window(iterator, count, most_rows, there=False):
    """The next batches of `iterator` in one graph call: up to `count`, ending at the
    batch that brings the window to `most_rows` rows, or where the data end.

    Returns (each tensor of the element nest, the batches' rows concatenated; each
    batch's row count; whether the data ended). One `get_next` per batch, so the reads
    are the iterator's own, only the batches asked for, at the pipeline's own rate (a
    tf.data function per batch, as `padded_batch` with a row count, costs about as
    much as the pipeline). `there`: the `count` batches are known to be there (a data
    set of known cardinality, not past its end), read without checking for the end,
    about a tenth faster. Traced once per element spec and `there`.

    >>> data = tf.data.Dataset.range(5).batch(2)
    >>> flat, rows, ended = read_window(iter(data), tf.constant(9), tf.constant(9))
    >>> flat[0].numpy().tolist(), rows.numpy().tolist(), bool(ended)
    ([0, 1, 2, 3, 4], [2, 2, 1], True)
    """
    flat_spec = tf.nest.flatten(iterator.element_spec)
    parts = [tf.TensorArray(s.dtype, size=0, dynamic_size=True, infer_shape=False,
                            element_shape=s.shape) for s in flat_spec]
    rows = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[])

    def more(read, total, ended, *_):
        return (read < count) & (total < most_rows) & tf.logical_not(ended)

    def append(read, total, parts, rows, batch):
        flat = tf.nest.flatten(batch)
        size = tf.shape(flat[0])[0]
        return (read + 1, total + size, tf.constant(False),
                [part.write(read, t) for part, t in zip(parts, flat)], rows.write(read, size))

    def one(read, total, ended, parts, rows):
        if there:
            return append(read, total, parts, rows, iterator.get_next())
        batch = iterator.get_next_as_optional()
        return tf.cond(batch.has_value(),
                       lambda: append(read, total, parts, rows, batch.get_value()),
                       lambda: (read, total, tf.constant(True), parts, rows))

    read, _, ended, parts, rows = tf.while_loop(
        more, one, (tf.constant(0), tf.constant(0), tf.constant(False), parts, rows))
    return [part.concat() for part in parts], rows.stack(), ended


def _runs(flat, rows):
    """(tensors, batch size) of each run of consecutive batches of one size in a window
    `read_window` read (`flat`: its tensors; `rows`: each batch's row count), a smaller
    batch ending the window joining the run before it as its tail. A window's batches
    are one size but for a smaller last one, almost always: one run, the window itself."""
    first, count, offset, total = 0, len(rows), 0, int(rows.sum())
    while first < count:
        size = int(rows[first])
        last = first
        while last < count and rows[last] == size:
            last += 1
        if last == count - 1 and rows[last] < size:
            last += 1
        end = offset + int(rows[first:last].sum())
        yield (flat if (offset, end) == (0, total) else [t[offset:end] for t in flat]), size
        first, offset = last, end


# A window's bytes at most (but one batch) when no batch hook sets its batches: the notes'
# model's whole epoch of 20,640 rows is 0.7 MB; one batch of 32 RGB images of 224 x 224
# in float32 is 19 MB, a window of its own.
WINDOW_BYTES = 8 << 20
# A window's batches when their bytes are not known from the element spec (strings).
DEFAULT_BATCHES = 32
_UNBOUNDED = 2**31 - 1

# Reads a user's tf.data window ahead, while the one before it trains.
_READER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastcustom-read")


class StreamSource:
    """A data set, generator or PyDataset read as Keras reads it, a window at a time:
    `per_call` batches, or (None) batches up to `WINDOW_BYTES` (`DEFAULT_BATCHES` of
    strings, whose bytes the element spec does not give).

    `why_not` says why the stream cannot be read in windows (a tensor whose shape past
    the batch axis varies, a sparse or ragged one); the call then goes to Keras.
    """

    def __init__(self, x, y=None, sample_weight=None, batch_size=None, steps_per_epoch=None,
                 shuffle=False, class_weight=None, per_call=None):
        self.per_call = per_call
        self.ran_out = False
        self.epochs = keras_internals.StreamEpochIterator(
            x=x, y=y, sample_weight=sample_weight, batch_size=batch_size,
            steps_per_epoch=steps_per_epoch, shuffle=shuffle, class_weight=class_weight)
        dataset = self.epochs.dataset
        self.spec = dataset.element_spec
        self.why_not = None if _has_static_rows(self.spec) else \
            f"its batches' shapes past the batch axis are not fixed ({self.spec})"
        # The next window is read while one trains only from a user's own tf.data
        # pipeline, where a read has no effect outside it (a generator's might).
        self.read_ahead = isinstance(x, tf.data.Dataset)
        # A fresh iterator each epoch over a known number of batches: every read is there.
        self.there = steps_per_epoch is None and int(dataset.cardinality()) >= 0
        self.most_rows = _UNBOUNDED
        if per_call is None and self.why_not is None:
            specs = tf.nest.flatten(self.spec)
            if all(s.dtype.size for s in specs):
                row_bytes = sum(math.prod(s.shape[1:]) * s.dtype.size for s in specs)
                self.most_rows = max(1, WINDOW_BYTES // max(row_bytes, 1))
            else:   # strings: their bytes are not in the spec
                self.per_call = DEFAULT_BATCHES

    @property
    def steps(self):
        """Steps per epoch: `steps_per_epoch`, the data's, or None while unknown."""
        return self.epochs.num_batches

    def reset(self):
        """Keras's reset of its epoch iterator (the adapter's `on_epoch_end`), where `fit`
        and `evaluate` make it before their first epoch."""
        self.epochs.reset()

    def catch_stop_iteration(self):
        """Keras's handling of the data running out (`StopIteration` inside the block)."""
        return self.epochs.catch_stop_iteration()

    def calls(self):
        """One epoch's calls, read as Keras reads: a step is pulled from Keras's epoch
        enumeration before its batch is read, so every `iter()` and epoch hook happens
        where `fit` makes it. When the data end inside a window, the step whose read
        failed is pulled too and `ran_out` set: the caller raises StopIteration inside
        `catch_stop_iteration()`, as Keras's failed read does."""
        self.ran_out = False
        steps = self.epochs.epoch_steps()
        done, ahead = 0, None
        try:
            while True:
                pulled = next(steps, None)
                if pulled is None:
                    return
                step, iterator = pulled
                flat, rows, ended = ahead.result() if ahead else self._read(iterator, done)
                ahead = None
                rows, ended = rows.numpy(), bool(ended)
                if not len(rows):
                    self.ran_out = True
                    return
                for _ in range(len(rows) - 1):
                    next(steps, None)
                done += len(rows)
                if self.read_ahead and not ended and self._count(done):
                    ahead = _READER.submit(self._read, iterator, done)
                for parts, size in _runs(flat, rows):
                    window = Indexed(tf.nest.pack_sequence_as(self.spec, parts), None, size)
                    tail = window.tail_rows > 0
                    yield Call(window, 0, window.steps, True if tail else None, step)
                    step += window.steps + tail
                if ended:     # the data ended: Keras's next read fails
                    self.ran_out = next(steps, None) is not None
                    return
        finally:
            if ahead is not None:    # the fit stopped: let the window read ahead finish
                ahead.cancel() or ahead.exception()

    def _count(self, done):
        """The most batches the next window may read, `done` batches into the epoch."""
        left = _UNBOUNDED if self.steps is None else self.steps - done
        return min(left, self.per_call or _UNBOUNDED)

    def _read(self, iterator, done):
        """The next window, `done` batches into the epoch (`read_window`)."""
        return read_window(iterator, tf.constant(self._count(done)),
                           tf.constant(self.most_rows), self.there)
