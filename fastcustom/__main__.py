"""`python -m fastcustom info | demo | profile`: the active path; the README's demo; a profile."""

import argparse
import json
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastcustom")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print which Huber path is active and why")
    demo = commands.add_parser("demo", help="train, save and reload the notes' model")
    demo.add_argument("--epochs", type=int, default=5)
    profile = commands.add_parser("profile", help="profile training steps, summarize the trace")
    profile.add_argument("--logdir", required=True, help="TensorBoard log folder for the trace")
    profile.add_argument("--steps", type=int, default=20)
    profile.add_argument("--batch-size", type=int, default=32)
    profile.add_argument("--no-jit", action="store_true", help="compile without XLA")
    profile.add_argument("--top", type=int, default=10, help="rows per summary table")
    args = parser.parse_args(argv)

    if args.command == "info":
        import keras
        import tensorflow as tf

        import fastcustom
        print(json.dumps({"fastcustom": fastcustom.__version__, "tensorflow": tf.__version__,
                          "keras": keras.__version__, **fastcustom.path_info()}, indent=2))
    elif args.command == "demo":
        from fastcustom.demo import main as demo_main
        demo_main(epochs=args.epochs)
    elif args.command == "profile":
        from fastcustom.profile import missing_packages, run
        if missing_packages():
            parser.exit(2, f"profiling needs: pip install {' '.join(missing_packages())} "
                           "(or pip install 'fastcustom[profile]')\n")
        run(args.logdir, steps=args.steps, batch_size=args.batch_size,
            jit_compile=not args.no_jit, top=args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
