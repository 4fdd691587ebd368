"""A multi-worker `fit`'s callbacks: only the chief writes, backups are atomic and checked.

TensorFlow's rule for `MultiWorkerMirroredStrategy`: every worker runs the
same saving code (reading a variable may be a collective), but only the chief
writes where the user asked; the others write where nobody reads.
`for_this_worker` applies it to the callbacks of one `fit`:

- `keras.callbacks.BackupAndRestore` becomes `AtomicBackupAndRestore`: each
  backup is a new weights file, then a small `state.json` naming it, replaced
  in one rename (`tf.io.gfile`, so `gs://` folders work), so a worker killed
  while one is written leaves the previous backup whole. Every worker restores
  from the chief's `backup_dir` (one machine, or storage all hosts see: NFS,
  GCS), after checking it: a folder that cannot be used raises `BackupError`
  naming it, and tells `fastcustom launch` not to restart.
- `ModelCheckpoint`, `TensorBoard` and `CSVLogger` write to a scratch folder
  on the other workers, removed when training ends (and with the worker, under
  `fastcustom launch`).
- The progress bar prints on the chief only.

`with_launch_progress` adds, in any `fit` that `fastcustom launch` started,
the callback that tells the launcher the worker makes progress.

>>> callbacks, verbose = for_this_worker([keras.callbacks.BackupAndRestore("/tmp/b")], "auto",
...                                     strategy)      # in a multi-worker `fit`
"""

import atexit
import copy
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import warnings

import keras
import tensorflow as tf

from fastcustom.distributed import progress
from fastcustom.distributed.guard import SCRATCH_ENV

STATE_FILE = "state.json"
WEIGHTS_FILE = "epoch-{epoch}-batch-{batch}.weights.h5"
# What Keras's own BackupAndRestore writes; read when a folder holds no state.json.
KERAS_STATE_FILE = "training_metadata.json"
KERAS_WEIGHTS_FILE = "latest.weights.h5"
# The files of a backup folder that a commit replaces (and removes once they are stale).
_OURS = ("epoch-*-batch-*.weights.h5", ".writing-*.weights.h5", f".{STATE_FILE}.*.tmp",
         KERAS_WEIGHTS_FILE, KERAS_STATE_FILE, f"{KERAS_WEIGHTS_FILE}.bkp",
         f"{KERAS_STATE_FILE}.bkp")
# Errors of a storage system that a later try may not meet: those are raised as they are.
_TRANSIENT = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
              tf.errors.AbortedError, tf.errors.ResourceExhaustedError)


class BackupError(ValueError):
    """A BackupAndRestore folder that cannot be used; the message names it and says how to
    recover. Raised at train begin, before any step; a restart cannot fix it, so under
    `fastcustom launch` the job ends at once (exit code 65) instead of restarting."""


class _Unusable(Exception):
    """Why one backup (state.json, or its "previous") cannot be used."""


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_local(path):
    return "://" not in str(path)


def _sync(path):
    """Flush a local file to its disk (remote stores commit a file when it is closed)."""
    if _is_local(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomically(path, text):
    """`text` to `path` in one rename: a reader sees the old file or the new one, whole."""
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(text)
    _sync(temporary)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _read_json(path):
    """The JSON in `path`; _Unusable when it cannot be read or parsed (not when the storage
    may answer later)."""
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.loads(f.read())
    except _TRANSIENT:
        raise
    except (tf.errors.OpError, OSError, ValueError) as error:   # ValueError: JSON, UTF-8
        raise _Unusable(f"{os.path.basename(path)} cannot be read: {type(error).__name__}: "
                        f"{error}") from None


def _checked(record, folder, epochs, what):
    """(epoch, batch, weights path) of one backup `record`, or _Unusable saying what is wrong:
    an integer epoch in 0..epochs, an integer batch >= 0, a weights file in `folder`."""
    if not isinstance(record, dict):
        raise _Unusable(f"{what} holds {type(record).__name__}, not an object")
    epoch, batch, weights = record.get("epoch"), record.get("batch", 0), record.get("weights")
    if not _is_int(epoch) or epoch < 0:
        raise _Unusable(f'{what}: "epoch" must be an integer >= 0, got {epoch!r}')
    if epochs is not None and epoch > epochs:
        raise _Unusable(f'{what}: "epoch" is {epoch}, past this fit\'s last epoch '
                        f"(epochs={epochs}): the backup comes from another training run")
    if not _is_int(batch) or batch < 0:
        raise _Unusable(f'{what}: "batch" must be an integer >= 0, got {batch!r}')
    if (not isinstance(weights, str) or not weights.endswith(".weights.h5")
            or weights.startswith(".") or os.path.basename(weights) != weights):
        raise _Unusable(f'{what}: "weights" must name a .weights.h5 file in the folder, '
                        f"got {weights!r}")
    path = os.path.join(folder, weights)
    if not tf.io.gfile.exists(path):
        raise _Unusable(f"{what} names {weights}, which is not in the folder")
    return epoch, batch, path


def _fail(folder, why):
    """Tell the launcher a restart cannot help, then raise BackupError."""
    progress.send(progress.UNRECOVERABLE)
    where = repr(folder) if not _is_local(folder) or os.path.isabs(folder) \
        else f"{folder!r} ({os.path.abspath(folder)})"
    raise BackupError(
        f"fastcustom: the BackupAndRestore folder {where} cannot be used: {why}. Training "
        "did not start, and a restart would meet the same folder. To train from the "
        "beginning, remove the folder (or give BackupAndRestore another one); to resume, put "
        f"back a {STATE_FILE} that names the epoch to start at and a .weights.h5 file of "
        f'this model in the folder: {{"epoch": E, "batch": 0, "weights": "FILE"}}.') from None


def scratch_folder(kind, key, task):
    """A local folder for a non-chief worker's throw-away files (not made here).

    Under `fastcustom launch`, inside the worker's scratch folder, which the launcher
    removes with the worker however it ends. Elsewhere in the system's temporary folder,
    under a name fixed by `key` (what the chief writes to) and the task, so that what a
    killed worker left is reused and removed by the next run, not piled up.
    """
    root = os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()
    digest = hashlib.sha256(str(key).encode()).hexdigest()[:12]
    user = getattr(os, "getuid", lambda: "user")()
    return os.path.join(root, f"fastcustom-{kind}-{user}-{task}-{digest}")


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """`keras.callbacks.BackupAndRestore`, written so that no kill leaves a broken backup,
    and read so that a broken one stops training with a clear error.

    At every epoch end (or every `save_freq` batches) the chief saves the model's and
    optimizer's weights to `epoch-E-batch-B.weights.h5`, then commits it by replacing
    `state.json` ({"epoch", "batch", "weights"}) in one rename; older weight files go
    after. With `double_checkpoint`, state.json also names the backup before it
    ("previous", its weights file kept), used when the newest cannot be loaded. Every
    path goes through `tf.io.gfile` (or Keras's saving, which copies remote files with
    it): `backup_dir` may be `gs://...`.

    At train begin every worker reads `backup_dir`: `state.json` (or, in a folder that
    has none, Keras's own `training_metadata.json` and `latest.weights.h5`), checks it
    (an integer epoch in 0..epochs, an integer batch, a weights file there that loads)
    and restores the weights and the epoch to start at; `BackupError` when no backup in
    it can be used. A worker that is not the chief (`is_chief=False`) saves into a
    scratch folder it removes at once: the save runs on every worker, as TensorFlow
    requires, and only the chief's is kept.

    A resume is exact at epoch ends; with an integer `save_freq` the epoch in which the
    backup was taken starts again from the backed-up weights, as with Keras's callback.
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False,
                 delete_checkpoint=True, *, is_chief=True, task_id=0):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"`backup_dir` must name a folder, got {backup_dir!r}")
        if not (save_freq == "epoch" or save_freq is False
                or _is_int(save_freq) and save_freq >= 1):
            raise ValueError("`save_freq` must be 'epoch', an integer >= 1 or False (restore "
                             f"only), got {save_freq!r}")
        self.backup_dir, self.save_freq = str(backup_dir), save_freq
        self.double_checkpoint, self.delete_checkpoint = double_checkpoint, delete_checkpoint
        self.is_chief, self.task_id = is_chief, task_id
        self._epoch, self._batches = 0, 0
        self._committed = self._previous = None

    @classmethod
    def like(cls, callback, is_chief, task_id=0):
        """The AtomicBackupAndRestore doing what Keras's `callback` was asked to."""
        return cls(callback.backup_dir, callback.save_freq,
                   getattr(callback, "double_checkpoint", False), callback.delete_checkpoint,
                   is_chief=is_chief, task_id=task_id)

    def _backups(self):
        """The backups in `backup_dir` to try, newest first: [(what, record, ours)]."""
        state_path = os.path.join(self.backup_dir, STATE_FILE)
        if tf.io.gfile.exists(state_path):
            state = _read_json(state_path)
            backups = [(STATE_FILE, state, True)]
            if isinstance(state, dict) and state.get("previous") is not None:
                backups.append((f'{STATE_FILE}\'s "previous"', state["previous"], True))
            return backups
        keras_path = os.path.join(self.backup_dir, KERAS_STATE_FILE)
        if tf.io.gfile.exists(keras_path):
            metadata = _read_json(keras_path)
            if not isinstance(metadata, dict):
                raise _Unusable(f"{KERAS_STATE_FILE} holds {type(metadata).__name__}")
            return [(KERAS_STATE_FILE, {"epoch": metadata.get("epoch"),
                                        "batch": metadata.get("batch", 0),
                                        "weights": KERAS_WEIGHTS_FILE}, False)]
        return []

    def on_train_begin(self, logs=None):
        try:
            backups = self._backups()
        except _Unusable as why:
            _fail(self.backup_dir, why)
        if not backups:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        problems = []
        for what, record, ours in backups:
            try:
                epoch, batch, path = _checked(record, self.backup_dir,
                                              self.params.get("epochs"), what)
                self._load(path)
            except _Unusable as why:
                problems.append(str(why))
                continue
            if problems:
                warnings.warn(f"fastcustom: the newest backup in {self.backup_dir!r} cannot be "
                              f"used ({problems[0]}); resuming from the one before it, at "
                              f"epoch {epoch}.", UserWarning, stacklevel=2)
            if ours:
                self._committed = {"epoch": epoch, "batch": batch,
                                   "weights": os.path.basename(path)}
            from fastcustom.training import keras_internals   # fit imports this module
            keras_internals.set_initial_epoch(self.model, epoch)   # as Keras's callback does
            return
        _fail(self.backup_dir, "; ".join(problems))

    def _load(self, path):
        try:
            self.model.load_weights(path)
        except _TRANSIENT:
            raise
        except (tf.errors.OpError, OSError, ValueError, KeyError) as error:
            raise _Unusable(f"{os.path.basename(path)} does not load into this model: "
                            f"{type(error).__name__}: {error}") from None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch" or self.save_freq is False:
            return
        if batch + 1 - self._batches >= self.save_freq:
            self._batches = batch + 1
            self._save(epoch=self._epoch, batch=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._batches = 0
        if self.save_freq == "epoch":
            self._save(epoch=epoch + 1, batch=0)

    def _save(self, epoch, batch):
        if not self.is_chief:
            self._save_discarded()
            return
        folder = self.backup_dir
        tf.io.gfile.makedirs(folder)
        name = WEIGHTS_FILE.format(epoch=epoch, batch=batch)
        partial = os.path.join(folder, f".writing-{os.getpid()}.weights.h5")
        self.model.save_weights(partial, overwrite=True)
        _sync(partial)
        tf.io.gfile.rename(partial, os.path.join(folder, name), overwrite=True)
        state = record = {"epoch": epoch, "batch": batch, "weights": name}
        if self.double_checkpoint:
            before = self._committed if self._committed and self._committed["weights"] != name \
                else self._previous
            if before:
                state = dict(record, previous=before)
        _write_atomically(os.path.join(folder, STATE_FILE), json.dumps(state))   # the commit
        self._committed, self._previous = record, state.get("previous")
        self._remove_stale(keep={name, (self._previous or {}).get("weights")})

    def _remove_stale(self, keep):
        """Remove what older backups, killed writes and Keras's callback left in the folder."""
        for name in tf.io.gfile.listdir(self.backup_dir):
            name = name.rstrip("/")
            if name not in keep and any(fnmatch.fnmatchcase(name, p) for p in _OURS):
                try:
                    tf.io.gfile.remove(os.path.join(self.backup_dir, name))
                except tf.errors.NotFoundError:
                    pass

    def _save_discarded(self):
        """A non-chief worker's save: the same reads of every variable, into a scratch file
        removed at once."""
        folder = scratch_folder("backup", self.backup_dir, self.task_id)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        try:
            self.model.save_weights(os.path.join(folder, "discarded.weights.h5"), overwrite=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def on_train_end(self, logs=None):
        if self.is_chief and self.delete_checkpoint and tf.io.gfile.exists(self.backup_dir):
            tf.io.gfile.rmtree(self.backup_dir)


class RemoveFolderAtEnd(keras.callbacks.Callback):
    """Removes `folder` when training ends (a non-chief worker's scratch output)."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def on_train_end(self, logs=None):
        shutil.rmtree(self.folder, ignore_errors=True)


def _to_scratch(callback, attribute, task):
    """A copy of `callback` writing under a fresh scratch folder; the folder's remover.

    The folder goes when training ends, or when the process exits after a failed `fit`
    (and, under `fastcustom launch`, with the worker however it ends)."""
    target = str(getattr(callback, attribute))
    folder = scratch_folder("worker", target, task)
    shutil.rmtree(folder, ignore_errors=True)   # what a killed run left
    os.makedirs(folder)
    atexit.register(shutil.rmtree, folder, True)
    moved = copy.copy(callback)
    setattr(moved, attribute, os.path.join(folder, os.path.basename(target.rstrip("/")) or "out"))
    return moved, RemoveFolderAtEnd(folder)


def for_this_worker(callbacks, verbose, strategy):
    """(callbacks, verbose) for this worker of a multi-worker `fit`: the chief writes."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks, verbose
    is_chief = strategy.extended.should_checkpoint
    task = getattr(strategy.cluster_resolver, "task_id", 0) or 0
    adapted, removers = [], []
    for callback in callbacks or []:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            callback = AtomicBackupAndRestore.like(callback, is_chief, task)
        elif not is_chief and isinstance(callback, keras.callbacks.ModelCheckpoint):
            callback, remover = _to_scratch(callback, "filepath", task)
            removers.append(remover)
        elif not is_chief and isinstance(callback, keras.callbacks.TensorBoard):
            callback, remover = _to_scratch(callback, "log_dir", task)
            removers.append(remover)
        elif not is_chief and isinstance(callback, keras.callbacks.CSVLogger):
            callback, remover = _to_scratch(callback, "filename", task)
            removers.append(remover)
        adapted.append(callback)
    return adapted + removers, verbose if is_chief else 0


class LaunchProgress(keras.callbacks.Callback):
    """Tells `fastcustom launch`, when it started this process, that `fit` makes progress
    (`fastcustom.distributed.progress`): BEGIN and END around the fit, CALL before each
    compiled call, STEP after it and at each epoch's start and end. `fit` counts its batch
    hooks as epoch-level: it runs no shorter calls for them. Each event is one
    non-blocking write."""

    def on_train_begin(self, logs=None):
        progress.send(progress.BEGIN)

    def on_epoch_begin(self, epoch, logs=None):
        progress.send(progress.STEP)

    def on_train_batch_begin(self, batch, logs=None):
        progress.send(progress.CALL)

    def on_train_batch_end(self, batch, logs=None):
        progress.send(progress.STEP)

    def on_test_batch_begin(self, batch, logs=None):
        progress.send(progress.CALL)

    def on_test_batch_end(self, batch, logs=None):
        progress.send(progress.STEP)

    def on_epoch_end(self, epoch, logs=None):
        progress.send(progress.STEP)

    def on_train_end(self, logs=None):
        progress.send(progress.END)


def with_launch_progress(callbacks):
    """`callbacks` with a LaunchProgress first, when `fastcustom launch` started this
    process (a CallbackList is left as it is)."""
    if progress.ENV not in os.environ or isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    return [LaunchProgress(), *(callbacks or [])]
