"""`python -m data_tools build|verify ...`: the same as the `ssl-vit-shards` console script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
