"""`python -m tfopt`: the same command line as the `tfopt` script."""
import sys

from tfopt.cli import main

sys.exit(main())
