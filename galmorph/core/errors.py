"""User-facing errors.

Every problem a user can fix (bad input, bad settings, a missing file) is raised as
`GalmorphError` with a one-line message that names what is wrong and what to do. The CLI
prints the message alone and exits non-zero; anything else is a bug and keeps its traceback.
"""


class GalmorphError(Exception):
    """A problem with the user's input or settings, described in one line."""

    def __init__(self, message: str):
        if "\n" in message:
            raise ValueError("GalmorphError messages must be one line")
        super().__init__(message)


def chain(exc: BaseException | None):
    """`exc` and every exception it was raised from or during (__cause__, else __context__),
    each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
