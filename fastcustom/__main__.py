"""`python -m fastcustom info | demo`: which kernel path is active; the README's demo."""

import argparse
import json
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastcustom")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print which Huber path is active and why")
    demo = commands.add_parser("demo", help="train, save and reload the notes' model")
    demo.add_argument("--epochs", type=int, default=5)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
