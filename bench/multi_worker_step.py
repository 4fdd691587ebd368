"""One worker of the multi-worker benchmark (bench/test_bench_multi_worker.py launches it).

The wide MLP (784 -> 256 relu -> 256 relu -> 10, fastcustom's MyDense, Adam,
sparse categorical cross-entropy) on random data, global batch 256, trained with
`fastcustom.fit`: under `MultiWorkerMirroredStrategy` when `TF_CONFIG` is set,
else on one device. Prints one JSON line: steps/s over the timed epochs (after a
warm-up epoch that traces and compiles) and, under several workers, the seconds
of one all-reduce of a gradient-sized float32 tensor (the parameters' count),
timed alone in a compiled loop of `ALL_REDUCES` of them.

    fastcustom launch --workers 2 -- python bench/multi_worker_step.py --threads 1
"""

import argparse
import json
import os
import time

import tensorflow as tf

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, required=True, help="intra-op threads")
parser.add_argument("--steps", type=int, default=60, help="steps per epoch")
parser.add_argument("--epochs", type=int, default=4, help="the first is the warm-up")
parser.add_argument("--no-jit", action="store_true", help="a plain graph, as under several workers")
args = parser.parse_args()
tf.config.threading.set_intra_op_parallelism_threads(args.threads)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fastcustom  # noqa: E402

BATCH = 256
ALL_REDUCES = 50


class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    times = []


def main():
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if cluster else tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * args.steps, 784)).astype("float32")
    y = rng.integers(0, 10, size=(BATCH * args.steps,))
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((784,)), fastcustom.MyDense(256, activation="relu"),
                                  fastcustom.MyDense(256, activation="relu"),
                                  fastcustom.MyDense(10)])
        model.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clock = EpochTimes()
    history = fastcustom.fit(model, x, y, batch_size=BATCH, epochs=args.epochs, seed=0,
                             verbose=0, callbacks=[clock],
                             jit_compile=False if args.no_jit else "auto")
    parameters = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    timed = clock.times[1:]
    report = {"task": cluster.get("task", {}).get("index", 0),
              "replicas": strategy.num_replicas_in_sync, "threads": args.threads,
              "parameters": parameters, "steps_per_second": args.steps / float(np.median(timed)),
              "steps_per_epoch": args.steps, "epoch_seconds": timed,
              "compiled_with": history.params["compiled_with"], "all_reduce_seconds": None}
    if strategy.num_replicas_in_sync > 1:
        gradient = tf.ones([parameters])

        @tf.function
        def all_reduces():
            def one(i, total):
                summed = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
                    "SUM", gradient + tf.cast(i, tf.float32)))
                return i + 1, total + strategy.experimental_local_results(summed)[0][0]
            return tf.while_loop(lambda i, _: i < ALL_REDUCES, one, (0, 0.0))[1]

        all_reduces()   # trace and warm up
        start = time.perf_counter()
        all_reduces().numpy()
        report["all_reduce_seconds"] = (time.perf_counter() - start) / ALL_REDUCES
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
