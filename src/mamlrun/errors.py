"""The one error type that the CLI turns into a single line and a non-zero exit."""


class MamlrunError(Exception):
    """A problem the user can fix (bad config, missing data, diverged run).

    The CLI prints ``mamlrun: error: <message>`` and exits with status 2; no traceback.
    """


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type when the message is empty)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
