"""A training script as a user writes it for several workers; the tests launch it.

The notes' regressor (fastcustom's MyDense, HuberLoss, HuberMetric, Nadam) on the
demo's data, trained with `fastcustom.fit` under `MultiWorkerMirroredStrategy`
when `TF_CONFIG` names a cluster, else on one device. Each process writes its
final weights and history to `--out/<task>.json`. `--backup-dir` adds
`keras.callbacks.BackupAndRestore`. Faults, each once, in worker 1 in the middle of
epoch 2, when FILE does not exist yet (it creates it first, so that a restarted job
runs to the end): `--kill-once FILE` SIGKILLs it, `--hang-once FILE` makes it sleep for
ever in a callback (a hung worker: TensorFlow's heartbeats go on, the other worker waits
in its collective), `--exit-zero-once FILE` makes it exit with code 0. `--fail-on-worker I`
makes worker I exit with code 3 at start; `--hold FILE` starts the strategy (the
workers' TensorFlow servers), prints "ready" and exits with 0 once FILE exists,
without training.

    fastcustom launch --workers 2 -- python tests/multi_worker_train.py --out /tmp/run
"""

import argparse
import json
import os
import signal
import time

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)   # one core per worker, before TF starts

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fastcustom  # noqa: E402
from fastcustom.demo import THRESHOLD, make_data  # noqa: E402


class FaultOnce(keras.callbacks.Callback):
    """`fault()` in this process after the first call of epoch 2, the first time only."""

    def __init__(self, marker, fault):
        super().__init__()
        self.marker, self.fault, self.epoch = marker, fault, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            self.fault()


FAULTS = {"kill_once": lambda: os.kill(os.getpid(), signal.SIGKILL),
          "hang_once": lambda: time.sleep(3600),
          "exit_zero_once": lambda: os._exit(0)}


def hold(marker):
    """Stay up (the strategy's servers listening) until `marker` exists, at most a minute."""
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--samples", type=int, default=1008)
    parser.add_argument("--steps-per-call", type=int)
    parser.add_argument("--backup-dir")
    parser.add_argument("--kill-once")
    parser.add_argument("--hang-once")
    parser.add_argument("--exit-zero-once")
    parser.add_argument("--hold")
    parser.add_argument("--fail-on-worker", type=int, help="this worker exits with 3 at start")
    args = parser.parse_args()

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    if args.fail_on_worker is not None and args.fail_on_worker == cluster["task"]["index"]:
        print("cannot read the training data: /no/such/file", flush=True)
        raise SystemExit(3)
    strategy = (tf.distribute.MultiWorkerMirroredStrategy() if cluster
                else tf.distribute.get_strategy())
    task = cluster.get("task", {}).get("index", 0)
    if args.hold:
        return hold(args.hold)
    x, y = make_data(n=args.samples)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)),
                                  fastcustom.MyDense(30, activation="selu"),
                                  fastcustom.MyDense(30, activation="selu"),
                                  fastcustom.MyDense(1)])
        model.compile(optimizer="nadam", loss=fastcustom.HuberLoss(threshold=THRESHOLD),
                      metrics=[fastcustom.HuberMetric(threshold=THRESHOLD)])
    callbacks = []
    if args.backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(args.backup_dir))
    for name, fault in FAULTS.items():
        if getattr(args, name) and task == 1:
            callbacks.append(FaultOnce(getattr(args, name), fault))
    history = fastcustom.fit(model, x, y, batch_size=args.batch_size, epochs=args.epochs,
                             seed=0, verbose=0, callbacks=callbacks,
                             steps_per_call=args.steps_per_call)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{task}.json"), "w") as f:
        json.dump({"history": history.history, "epochs": history.epoch,
                   "replicas": strategy.num_replicas_in_sync,
                   "weights": [w.tolist() for w in model.get_weights()]}, f)


if __name__ == "__main__":
    main()
