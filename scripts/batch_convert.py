"""Convert many models: the same as `tfopt batch`.

    python scripts/batch_convert.py models/ -o out/ [--workers 2] [--timeout 600]
"""
import sys

from tfopt.commands import main

if __name__ == "__main__":
    sys.exit(main(["batch"] + sys.argv[1:]))
