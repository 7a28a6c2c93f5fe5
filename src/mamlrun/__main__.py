"""``python -m mamlrun [key=value ...]``: the ``mamlrun`` command."""

from mamlrun.cli import main

if __name__ == "__main__":
    main()
