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
  carried across epochs), whose data set is a windowed view: tf.data stacks up to
  `per_call` consecutive batches (`padded_batch`, with each batch's row count), and a
  window never reaches past the steps Keras would take (`steps_per_epoch`,
  `validation_steps`, the end of the data). The data set is never held whole.

Shuffling arrays: with `seed`, `np.random.default_rng(seed)`; without, a generator seeded
from Python's `random` (which `keras.utils.set_random_seed` seeds, as Keras seeds its own
generators), drawn once per fit; `rng.permutation(n)` per epoch
(`fastcustom.baselines.training_loop` documents the same order).
"""

import math
import random
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from fastcustom.training import keras_internals
from fastcustom.training.windows import Indexed, Stacked, first_tensor, map_arrays


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


def _rows(*element):
    """A batch's row count."""
    return tf.shape(first_tensor(element))[0]


def _with_rows(*element):
    """A batch and its row count."""
    return (element[0] if len(element) == 1 else element), _rows(*element)


def windowed(dataset, per_call, steps_per_epoch, read_ahead=False):
    """`dataset`'s batches stacked `per_call` at a time, each window (padded to its
    largest batch's rows) with its batches' row counts, reading no batch past what `fit`
    takes.

    Without `steps_per_epoch` a window holds `per_call` batches or the last ones of the
    data (a known cardinality is taken exactly: nothing is read past it): the row counts
    come from a map that runs `synchronous` (tf.data's map parallelization would read
    ahead of the window), then `padded_batch`; with `read_ahead` the next window is read
    while the current one trains (`prefetch(1)`: only for a user's own `tf.data`
    pipeline, where a read has no effect outside it). With `steps_per_epoch`, the
    iterator runs on across epochs (as Keras's does) and a window also ends at each
    epoch's `steps_per_epoch`-th batch, so it never reads the next epoch's batches:
    tf.data's `group_by_window` reads exactly a window's batches and emits the window
    when it is full. tf.data injects no prefetch of its own.
    """
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    if steps_per_epoch is None:
        cardinality = int(dataset.cardinality())
        if cardinality >= 0:
            dataset = dataset.take(cardinality)
        if read_ahead:
            windows = dataset.map(_with_rows, num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True).padded_batch(per_call).prefetch(1)
        else:
            windows = dataset.map(_with_rows, synchronous=True).padded_batch(per_call)
        return windows.with_options(options)
    per_epoch = math.ceil(steps_per_epoch / per_call)

    def window_of(index, *_):
        epoch, step = index // steps_per_epoch, index % steps_per_epoch
        return epoch * per_epoch + step // per_call

    def window_size(key):
        return tf.minimum(tf.cast(per_call, tf.int64),
                          steps_per_epoch - (key % per_epoch) * per_call)

    def stacked(_, window):
        batches = window.map(lambda index, element: element)
        return tf.data.Dataset.zip((batches.padded_batch(per_call),
                                    batches.map(_rows).batch(per_call)))

    return dataset.enumerate().group_by_window(
        key_func=window_of, reduce_func=stacked,
        window_size_func=window_size).with_options(options)


def _runs(window, rows):
    """(stacked, tail) from one padded window: runs of consecutive batches of one size,
    each stacked, a smaller batch ending a run as its tail."""
    first, count = 0, len(rows)
    while first < count:
        last = first
        while last < count and rows[last] == rows[first]:
            last += 1
        size = int(rows[first])
        full_rows = int(first_tensor(window).shape[1])
        stacked = window if (first, last, size) == (0, count, full_rows) else map_arrays(
            lambda t, f=first, la=last, s=size: t[f:la, :s], window)
        full_steps, tail = last - first, None
        if last == count - 1 and rows[last] < size:
            tail = map_arrays(lambda t, la=last, s=int(rows[last]): t[la, :s], window)
            last += 1
        yield stacked, full_steps, tail
        first = last


class StreamSource:
    """A data set, generator or PyDataset read `per_call` batches at a time, as Keras reads it.

    `why_not` says why the stream cannot be stacked (a tensor whose shape past the
    batch axis varies, a sparse or ragged one); the call then goes to Keras.
    """

    def __init__(self, x, y=None, sample_weight=None, batch_size=None, steps_per_epoch=None,
                 shuffle=False, class_weight=None, per_call=32):
        self.per_call = per_call
        self.read_ahead = isinstance(x, tf.data.Dataset)
        self.why_not = None
        self.ran_out = False
        self.epochs = keras_internals.WindowedEpochIterator(
            self._windows, x=x, y=y, sample_weight=sample_weight, batch_size=batch_size,
            steps_per_epoch=steps_per_epoch, shuffle=shuffle, class_weight=class_weight)

    def _windows(self, dataset, steps_per_epoch):
        spec = dataset.element_spec
        if not _has_static_rows(spec):
            self.why_not = f"its batches' shapes past the batch axis are not fixed ({spec})"
            return dataset
        return windowed(dataset, self.per_call, steps_per_epoch, self.read_ahead)

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
        done = 0
        while True:
            pulled = next(steps, None)
            if pulled is None:
                return
            step, iterator = pulled
            known = self.steps
            expected = self.per_call if known is None else min(self.per_call, known - done)
            window = next(iterator, None)
            if window is None:
                self.ran_out = True
                return
            window, rows = window
            rows = rows.numpy()
            read = len(rows)
            for _ in range(read - 1):
                next(steps, None)
            for stacked, full_steps, tail in _runs(window, rows):
                yield Call(Stacked(stacked), 0, full_steps, tail, step)
                step += full_steps + (tail is not None)
            done += read
            if read < expected:     # the data ended: Keras's next read fails
                self.ran_out = next(steps, None) is not None
                return
