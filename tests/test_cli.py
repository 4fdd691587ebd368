"""The `fastcustom` command line: parsing without TensorFlow, one-line errors, quiet TF logs,
the missing-library reason, and the demo (its table, its plot, nothing left behind)."""

import json
import os
import re
import subprocess
import sys

import pytest

from fastcustom import cli

# The installed console script; `python -m fastcustom` is the same code where it is absent.
SCRIPT = os.path.join(os.path.dirname(sys.executable), "fastcustom")
COMMAND = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "fastcustom"]
# TensorFlow's C++ log lines: "I0000 00:00:... cpu_feature_guard.cc:...]", "W0000 ...".
TF_LOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def run_cli(*args, env=None, cwd=None):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([*COMMAND, *args], env={**environment, **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


# Whether TensorFlow or Keras was imported after a command line that exits.
IMPORTS_AFTER = """
import sys
from fastcustom import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as stop:
    print(stop.code, "tensorflow" in sys.modules, "keras" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["build-ops", "--help"],
                                  ["profile", "--logdir", "x", "--steps", "-3"]])
def test_help_and_argument_errors_do_not_import_tensorflow(argv, run_python):
    result = run_python("-c", IMPORTS_AFTER, *argv, timeout=60)
    code, tensorflow_imported, keras_imported = result.stderr.strip().splitlines()[-1].split()
    assert code == ("0" if "--help" in argv else "2")
    assert tensorflow_imported == "False" and keras_imported == "False"


def test_help_names_the_program_fastcustom_and_every_command():
    result = run_cli("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: fastcustom ")
    for command in ("info", "demo", "profile", "build-ops"):
        assert command in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["profile", "--logdir", "x", "--steps", "-3"], "argument --steps: '-3' is not a positive integer"),
    (["profile", "--logdir", "x", "--steps", "0"], "argument --steps: '0' is not a positive integer"),
    (["profile", "--logdir", "x", "--batch-size", "0"], "argument --batch-size: '0' is not a positive"),
    (["profile", "--logdir", "x", "--top", "-1"], "argument --top: '-1' is not a positive integer"),
    (["profile", "--logdir", "x", "--steps", "two"], "argument --steps: 'two' is not a positive"),
    (["profile", "--logdir", __file__], "argument --logdir: "),
    (["profile"], "one of --logdir or --summarize is required"),
    (["demo", "--epochs", "-1"], "argument --epochs: '-1' is not a positive integer"),
    (["demo", "--epochs", "0"], "argument --epochs: '0' is not a positive integer"),
    (["demo", "--batch-size", "0"], "argument --batch-size: '0' is not a positive integer"),
    (["demo", "--save", "model.h5"], "argument --save: 'model.h5' does not end in .keras"),
    (["demo", "--plot", "/no/such/folder/plot.png"], "the folder /no/such/folder does not exist"),
    (["build-ops", "--cache-dir", __file__], "argument --cache-dir: "),
    (["launch", "--workers", "2", "--timeout", "0", "--", "python"],
     "argument --timeout: '0' is not a positive integer"),
    (["train"], "invalid choice: 'train'"),
])
def test_bad_arguments_give_one_line_and_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    captured = capsys.readouterr()
    assert stopped.value.code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"fastcustom {argv[0]}: error: " if argv[0] != "train" else "fastcustom: error: ")
    assert message in line


def test_tensorflow_logs_are_quiet_unless_the_user_set_the_level(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cli.quiet_tensorflow_logs()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    cli.quiet_tensorflow_logs()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_info_prints_json_and_nothing_on_stderr(onednn):
    """With oneDNN's custom ops on, TensorFlow 2.21 writes start-up lines on AVX-512 CPUs
    whatever TF_CPP_MIN_LOG_LEVEL says; the command drops them (and on other CPUs there
    are none): stderr is empty either way."""
    result = run_cli("info", env={"TF_ENABLE_ONEDNN_OPTS": onednn})
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["path"] in ("fused-op", "xla") and info["reason"]
    assert result.stderr == ""


# TensorFlow's start-up lines, as its C++ code writes them to file descriptor 2 before its
# logging is set up (these two from an AVX-512 machine), around other output that must pass.
FILTER_STDERR = r"""
import os, sys
from fastcustom import cli
lines = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796625912.244077    2437 port.cc:153] oneDNN custom operations are on.\n",
    b"E0000 00:00:1796625912.250000    2437 cuda_dnn.cc:8] an error stays\n",
    b"W0000 00:00:1796625912.260000    2437 cpu_feature_guard.cc:227] a warning goes\n",
    b"WARNING: a line of the user's\n",
]
with cli.start_up_lines_dropped():
    for line in lines:
        os.write(2, line)
    print("a Python warning stays", file=sys.stderr)
    os.write(2, b"no newline at the end")
print("stdout is untouched")
os.write(2, b"\nafter the block: I0000 00:00:1.0 1 x.cc:1] kept\n")
"""


def test_start_up_lines_are_dropped_and_every_other_line_passes(run_python):
    result = run_python("-c", FILTER_STDERR, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stdout is untouched\n"
    assert result.stderr == (
        "E0000 00:00:1796625912.250000    2437 cuda_dnn.cc:8] an error stays\n"
        "WARNING: a line of the user's\n"
        "a Python warning stays\n"
        "no newline at the end\n"
        "after the block: I0000 00:00:1.0 1 x.cc:1] kept\n")


def test_a_level_the_user_set_keeps_tensorflow_lines(run_python):
    """TF_CPP_MIN_LOG_LEVEL set by the user: the command filters nothing; every line a plain
    `import tensorflow` writes at that level is there."""
    def log_lines(stderr):   # without the time and thread id, which differ per process
        return {re.sub(r"^(\w)\d{4} \S+ +\d+ ", r"\1 ", line)
                for line in stderr.splitlines() if TF_LOG_LINE.match(line)}

    plain = run_python("-c", "import tensorflow", env={"TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=120)
    command = run_cli("info", env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert command.returncode == 0, command.stderr
    assert log_lines(plain.stderr) <= log_lines(command.stderr), command.stderr


def test_info_says_which_library_file_is_missing(tmp_path):
    missing = tmp_path / "nowhere" / "_huber_ops.so"
    result = run_cli("info", env={"FASTCUSTOM_OPS_LIBRARY": str(missing)})
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["path"] == "xla" and info["library"] is None
    assert f"FASTCUSTOM_OPS_LIBRARY={missing} does not exist" in info["reason"]
    assert "reinstall" not in info["reason"]


def test_demo_prints_the_table_draws_the_plot_and_leaves_only_what_was_asked(tmp_path):
    pytest.importorskip("matplotlib")
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    result = run_cli("demo", "--epochs", "2", "--save", "model.keras", "--plot", "curves.png",
                     cwd=work, env={"TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    rows = {name: line for line in out.splitlines()
            for name in ("notes' classes + model.fit", "fastcustom + accelerated model.fit")
            if line.startswith(name)}
    assert len(rows) == 2, out
    for line in rows.values():  # first epoch (s), later epochs (steps/s), total (s), final loss
        first, later, total, loss = line.split()[-4:]
        assert 0 < float(first) <= float(total) and float(later.replace(",", "")) > 0
        assert 0 < float(loss) < 0.2
    assert re.search(r"speed-up: [\d.]+x in total .*, \d+x per step after the first epoch", out), out
    assert "same predictions: True" in out and "loss threshold 2.0" in out
    assert sorted(os.listdir(work)) == ["curves.png", "model.keras"]
    assert (work / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(scratch) == []
    assert not TF_LOG_LINE.search(result.stderr), result.stderr


def test_demo_without_save_leaves_no_file(tmp_path, monkeypatch, capsys):
    """The save/load check writes into a temporary folder that is removed (run in-process, 1 epoch)."""
    from fastcustom import demo

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.chdir(tmp_path)
    runs = demo.main(epochs=1, batch_size=256)
    assert [run.later_steps_per_second for run in runs] == [None, None]
    assert "same predictions: True" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []
