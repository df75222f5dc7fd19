"""`python -m tfopt`: the same command line as the `tfopt` script."""
import sys

from tfopt.commands import main

sys.exit(main())
