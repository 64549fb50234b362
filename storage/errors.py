"""Named exceptions of the storage layer. Messages name the bad value and the fix."""


class StoreError(Exception):
    """Base class of every storage error."""


class BadInput(StoreError, ValueError):
    """A value that cannot be stored (empty, too long, wrong type...)."""


class UnknownPair(BadInput):
    """A pair id that does not exist."""


class BadChoice(BadInput):
    """A vote choice other than a, b, tie or both_bad."""


class ImportFailed(BadInput):
    """An import file is malformed; nothing was imported. Names the file and line."""

    def __init__(self, path, line: int | None, problem: str) -> None:
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}. Nothing was imported; fix the file and retry.")
        self.path, self.line, self.problem = path, line, problem
