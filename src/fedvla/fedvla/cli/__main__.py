"""``python -m fedvla.cli``."""
import sys

from fedvla.cli import main

if __name__ == "__main__":
    sys.exit(main())
