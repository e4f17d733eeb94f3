"""``python -m lotts``: the same command line as the ``lotts`` entry point."""
from lotts.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
