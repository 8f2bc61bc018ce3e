"""The exceptions every dataset module raises for bad input."""


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message says which and how to fix it."""


class MissingFileError(DatasetError):
    """A file that should exist does not."""
