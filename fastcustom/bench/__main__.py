"""`python -m fastcustom.bench report RESULT.json [MORE.json ...] [--out DIR]`: the Markdown
report and its pictures. Several files make one report: the CPU suites' pytest-benchmark JSON
and bench/gpu/harness.py's (`$OUT/gpu_results.json` from bench/gpu/run.sh)."""

import argparse
import pathlib
import sys

from fastcustom.bench import results as results_module
from fastcustom.bench.table import markdown


def report(result_json, out_dir=None, *more_json):
    """Print the Markdown report of `result_json` and `more_json`; write report.md,
    summary.png and by_size.png into `out_dir` (default: the first JSON's folder).
    Returns the paths written."""
    results = results_module.load(result_json, *more_json)
    text = markdown(results)
    print(text, end="")
    out = pathlib.Path(out_dir) if out_dir else pathlib.Path(result_json).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text, encoding="utf-8")
    written = [out / "report.md"]
    from fastcustom.bench.plot import draw_by_size, draw_summary   # matplotlib: when drawing

    try:
        written.append(draw_summary(results, out / "summary.png"))
        by_size = draw_by_size(results, out / "by_size.png")
        written += [by_size] if by_size else []
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("matplotlib"):
            raise
        print("\nmatplotlib is not installed: no plot drawn (pip install 'fastcustom[bench]').",
              file=sys.stderr)
    print("\nWrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastcustom.bench")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("report", help="table and plot from a --benchmark-json file")
    cmd.add_argument("result_json", nargs="+",
                     help="the JSON written by pytest --benchmark-json, and any more to merge "
                          "(bench/gpu/harness.py --json)")
    cmd.add_argument("--out", help="folder for report.md, summary.png and by_size.png "
                                   "(default: the JSON's folder)")
    args = parser.parse_args(argv)
    if args.command == "report":
        report(args.result_json[0], args.out, *args.result_json[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
