"""The one error type that the CLI turns into a single line and a non-zero exit."""


class MamlrunError(Exception):
    """A problem the user can fix (bad config, missing data, diverged run).

    The CLI prints ``mamlrun: error: <message>`` and exits with status 2; no traceback.
    """
