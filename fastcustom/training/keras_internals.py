"""The parts of Keras's own trainer that fastcustom's loops call, in one place.

Keras keeps these private (underscored) but they are what `model.fit` itself
runs; calling them, rather than copying them, keeps our loops on Keras's
semantics. `tests/test_accelerate.py` checks each one still exists, so a Keras
upgrade that moves one fails there, not in a user's training run.
"""

import keras
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer, reduce_per_replica
from keras.src.trainers.data_adapters import array_slicing, data_adapter_utils, get_data_adapter
from keras.src.trainers.data_adapters.array_data_adapter import (ArrayDataAdapter,
                                                                 can_convert_arrays)
from keras.src.utils.python_utils import pythonify_logs

__all__ = [
    "ArrayDataAdapter", "array_slicing", "can_convert_arrays", "compile_loss", "compile_metrics",
    "data_adapter_utils", "get_data_adapter", "overrides", "pythonify_logs",
    "reduce_per_replica",
]


def overrides(model, *methods):
    """Whether the model's class replaces any of Keras's TF trainer `methods`."""
    return any(getattr(type(model), name) is not getattr(TensorFlowTrainer, name)
               for name in methods)


def compile_loss(model):
    """The `CompileLoss` `model.compile` built (None when compiled without a loss)."""
    return model._compile_loss


def compile_metrics(model):
    """The `CompileMetrics` `model.compile` built (None without metrics)."""
    return model._compile_metrics


def assert_compiled(model, method):
    """Keras's error for `fit` / `evaluate` before `compile`."""
    model._assert_compile_called(method)


def symbolic_build(model, data_batch):
    """Build the model, compiled loss, metrics and optimizer from one batch, as `fit` does."""
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=data_batch)


def should_eval(model, epoch, validation_freq):
    """Whether `fit` validates after `epoch` (Keras's reading of `validation_freq`)."""
    return model._should_eval(epoch, validation_freq)


def initial_epoch(model, initial_epoch):
    """The epoch to start at: the one `BackupAndRestore` restored, else `initial_epoch`."""
    return model._initial_epoch or initial_epoch


def metrics_in_order(model, logs):
    """`evaluate(return_dict=False)`'s list: the logs in the order of `model.metrics_names`."""
    return model._flatten_metrics_in_order(logs)


def is_default(method):
    """Whether a callback's hook is `keras.callbacks.Callback`'s own (does nothing)."""
    return keras.src.utils.is_default(method)


def profiles_batches(tensorboard):
    """Whether a `keras.callbacks.TensorBoard` was given a `profile_batch` to trace."""
    return tensorboard._start_batch > 0


def multi_worker(strategy):
    """Whether `strategy` spans several workers (processes), as MultiWorkerMirroredStrategy."""
    return strategy.extended._in_multi_worker_mode()
