"""The `fastcustom` command: info | demo | profile | build-ops | launch.

`fastcustom --help` and argument errors never import TensorFlow (seconds, and C++
start-up lines on stderr): `import fastcustom` is lazy, and each command imports what
it runs when it runs, with TensorFlow's C++ INFO/WARNING lines off unless
TF_CPP_MIN_LOG_LEVEL is set (`import_tensorflow`). `python -m fastcustom` runs the same
command line.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import re
import sys
import threading

PROG = "fastcustom"


def positive_int(text):
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text, low, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def folder_path(text):
    """argparse type: a folder, existing or to be created (not an existing file)."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return text


def _file_to_write(text, suffix):
    if not text.endswith(suffix):
        raise argparse.ArgumentTypeError(f"{text!r} does not end in {suffix}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {folder} does not exist")
    return text


def keras_file(text):
    """argparse type: a `.keras` file to write, in an existing folder."""
    return _file_to_write(text, ".keras")


def png_file(text):
    """argparse type: a `.png` file to write, in an existing folder."""
    return _file_to_write(text, ".png")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (and exit code 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser():
    parser = OneLineErrorParser(
        prog=PROG, description="Fast, serializable Keras 3 components on TensorFlow: "
        "which Huber path runs, a demo, a profile, and the fused op's build.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="print versions and which Huber path is active, and why")

    demo = commands.add_parser(
        "demo", help="the notes' model with model.fit, then with fastcustom: time, steps/s, loss",
        description="Trains the notes' regressor with the notes' classes and model.fit, then "
        "with fastcustom's classes and compiled loop, on the same data and epochs; prints a "
        "table and the speed-up, then checks that the model saves and loads.")
    demo.add_argument("--epochs", type=positive_int, default=3, help="epochs per run (default 3)")
    demo.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    demo.add_argument("--save", type=keras_file, metavar="PATH.keras",
                      help="keep the saved model there (default: a temporary folder, removed)")
    demo.add_argument("--plot", type=png_file, metavar="PATH.png",
                      help="draw both loss curves against wall-clock time (needs matplotlib)")

    profile = commands.add_parser(
        "profile", help="profile training in TensorBoard, or summarize a trace",
        description="Profiles training steps of the notes' model (fastcustom's classes, an "
        "accelerated model.fit) with TensorBoard's profiler into --logdir and summarizes the "
        "trace; with --summarize, summarizes the newest trace under a folder instead.")
    profile.add_argument("--logdir", type=folder_path,
                         help="TensorBoard log folder for the trace (created if missing)")
    profile.add_argument("--summarize", metavar="PATH",
                         help="summarize the newest trace under PATH (or the .xplane.pb file)")
    profile.add_argument("--steps", type=positive_int, default=10, help="profiled steps (default 10)")
    profile.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    profile.add_argument("--no-jit", action="store_true", help="compile without XLA")
    profile.add_argument("--plain", action="store_true",
                         help="Keras's own model.fit, not accelerated (with StepMarkers)")
    profile.add_argument("--top", type=positive_int, default=10, help="rows per summary table")

    build = commands.add_parser(
        "build-ops", help="compile the fused op for the TensorFlow installed now",
        description="Compiles the fused Huber op library against the TensorFlow this Python "
        "imports (g++; nvcc for the CUDA kernels, see FASTCUSTOM_CUDA) into the per-user cache, "
        "one folder per TensorFlow release and C++ ABI, and checks that it loads. Run it after "
        "upgrading or downgrading TensorFlow.")
    build.add_argument("--cache-dir", type=folder_path,
                       help="the cache folder (default: FASTCUSTOM_CACHE_DIR, else "
                       "$XDG_CACHE_HOME/fastcustom or ~/.cache/fastcustom)")

    launch = commands.add_parser(
        "launch", help="run a training script as N workers on this machine (TF_CONFIG)",
        description="Starts COMMAND as N worker processes, each with a TF_CONFIG naming all "
        "of them on free loopback ports (what tf.distribute.MultiWorkerMirroredStrategy "
        "reads), prefixes and streams their output, stops all when one fails and restarts the "
        "whole job up to --max-restarts times. No process of a worker outlives the launcher. "
        "Exits with the code of the worker that failed first (128 + N for a signal N), 124 "
        "after --timeout, 1 when a worker exited with 0 in the middle of training, 65 (never "
        "restarted) when a worker's BackupAndRestore folder cannot be used. "
        "Example: fastcustom launch --workers 2 --max-restarts 1 -- python train.py")
    launch.add_argument("--workers", type=positive_int, required=True, help="processes to start")
    launch.add_argument("--max-restarts", type=non_negative_int, default=0,
                        help="restarts of the whole job after a failure (default 0)")
    launch.add_argument("--timeout", type=positive_int, metavar="SECONDS",
                        help="a worker that shows no progress for this long (no output line, "
                        "no fastcustom.fit step) has failed (default: wait for ever)")
    launch.add_argument("worker_command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the training command, after --")
    return parser


def quiet_tensorflow_logs():
    """TensorFlow's C++ INFO and WARNING lines off (before it is imported), unless the user
    chose a level with TF_CPP_MIN_LOG_LEVEL. Returns whether the user chose one."""
    user_level = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return user_level


# What TensorFlow's C++ code writes to stderr while it is imported, before its logging
# reads TF_CPP_MIN_LOG_LEVEL: absl's note that logging is not initialized yet, and
# INFO / WARNING records ("I0000 00:00:1796625912.244077  123 port.cc:153] ...": absl's
# prefix before it is initialized, the seconds since 1970 in place of the time), e.g. oneDNN's
# "custom operations are on" on CPUs with AVX-512, whatever the level says.
_START_UP_LINE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] ")


@contextlib.contextmanager
def start_up_lines_dropped():
    """This process's stderr (file descriptor 2, where C++ writes) through a filter that
    drops TensorFlow's INFO / WARNING start-up lines and passes every other line on, as
    it comes: errors, Python warnings, anything else.

    Only the command line uses it, around `import tensorflow` (`import_tensorflow`): a
    library must not swallow its user's stderr.
    """
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    stderr = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not _START_UP_LINE.match(line):
                    view = memoryview(line)
                    while view:
                        view = view[os.write(stderr, view):]

    forwarder = threading.Thread(target=forward, name="fastcustom-stderr", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(stderr, 2)   # the pipe's last write end closed: the forwarder reads to its end
        forwarder.join()
        os.close(stderr)


def import_tensorflow(user_level):
    """`import tensorflow` for a command that needs it: its C++ start-up lines dropped
    unless the user set TF_CPP_MIN_LOG_LEVEL (`user_level`), where they are the user's."""
    if user_level or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    with start_up_lines_dropped():
        import tensorflow  # noqa: F401


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    user_level = quiet_tensorflow_logs()
    if args.command == "info":
        import_tensorflow(user_level)
        return info()
    if args.command == "demo":
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            parser.exit(2, f"{PROG} demo: --plot needs matplotlib: pip install matplotlib "
                           "(or pip install 'fastcustom[plot]')\n")
        import_tensorflow(user_level)
        from fastcustom.demo import main as demo_main
        demo_main(epochs=args.epochs, batch_size=args.batch_size, save=args.save, plot=args.plot)
        return 0
    if args.command == "profile":
        from fastcustom.profile import missing_packages, run, summarize_command
        if missing_packages():
            parser.exit(2, f"{PROG} profile: profiling needs: pip install "
                           f"{' '.join(missing_packages())} (or pip install 'fastcustom[profile]')\n")
        if args.summarize:
            if not os.path.exists(args.summarize):
                parser.exit(2, f"{PROG} profile: error: argument --summarize: "
                               f"{args.summarize!r} does not exist\n")
            import_tensorflow(user_level)
            summarize_command(args.summarize, top=args.top)
            return 0
        if not args.logdir:
            parser.exit(2, f"{PROG} profile: error: one of --logdir or --summarize is "
                           f"required (see: {PROG} profile --help)\n")
        import_tensorflow(user_level)
        run(args.logdir, steps=args.steps, batch_size=args.batch_size,
            jit_compile=not args.no_jit, accelerated=not args.plain, top=args.top)
        return 0
    if args.command == "build-ops":
        return build_ops_command(args.cache_dir)
    if args.command == "launch":
        command = args.worker_command[1:] if args.worker_command[:1] == ["--"] \
            else args.worker_command
        if not command:
            parser.error("launch needs a command after --, e.g. -- python train.py")
        from fastcustom.distributed import launch   # standard library only: no TensorFlow
        return launch.run(command, args.workers, args.max_restarts, timeout=args.timeout)
    parser.error(f"unknown command {args.command}")


def info():
    """Versions, the active Huber path and why, the variant of the CPU kernels that runs, and
    the TensorFlow and CPU ("x86-64-v3": portable; "native") the library was built for."""
    import keras
    import tensorflow as tf

    import fastcustom
    from fastcustom import build_ops

    status = fastcustom.path_info()
    record = build_ops.read_record(status["library"]) if status["library"] else None
    print(json.dumps({"fastcustom": fastcustom.__version__, "tensorflow": tf.__version__,
                      "keras": keras.__version__, **status,
                      "library_built_for": record and record.get("tensorflow"),
                      "library_cpu_target": record and record.get("cpu_target")}, indent=2))
    return 0


# Run in a fresh process (this one may hold another build already): the status of the
# library named by FASTCUSTOM_OPS_LIBRARY, then which library fastcustom picks by default.
_CHECK_LOAD = """
import json, os
from fastcustom.ops import library
status = library.status()
os.environ.pop("FASTCUSTOM_OPS_LIBRARY")
print(json.dumps(dict(status, default_library=library.library_path())))
"""


def build_ops_command(cache_dir=None):
    """`fastcustom build-ops`: compile for the running TensorFlow into the cache, check it loads."""
    import subprocess
    import tempfile

    from fastcustom import build_ops

    if cache_dir:
        os.environ["FASTCUSTOM_CACHE_DIR"] = os.path.abspath(cache_dir)
    try:
        tf_config = build_ops.tensorflow_config()
        output = build_ops.cached_library(build_ops.abi_tag(tf_config["version"], tf_config["cxx11_abi"]))
        print(f"{PROG}: compiling the fused Huber op for TensorFlow {tf_config['version']} "
              "(a minute or two)...", flush=True)
        with tempfile.TemporaryDirectory() as build_temp:
            record = build_ops.build_op_library(output, build_temp, tf_config=tf_config)
    except build_ops.BuildError as error:
        print(f"{PROG} build-ops: the op library was not built: {error}", file=sys.stderr)
        return 1
    print(f"{PROG}: built {output} for TensorFlow {record['tensorflow']}"
          f"{' with CUDA kernels' if record['cuda'] else ''}")
    check = subprocess.run([sys.executable, "-c", _CHECK_LOAD], capture_output=True, text=True,
                           env=dict(os.environ, FASTCUSTOM_OPS_LIBRARY=output))
    status = json.loads(check.stdout.strip().splitlines()[-1]) if check.returncode == 0 else None
    if not status or status["path"] != "fused-op":
        reason = status["reason"] if status else (check.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{PROG} build-ops: built, but it does not load: {reason}", file=sys.stderr)
        return 1
    print(f"{PROG}: it loads ({', '.join(status['dtypes'])}; CPU kernels: {status['cpu_kernels']}; "
          f"GPU kernels: {status['gpu']}); "
          f"fastcustom now uses {status['default_library']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
