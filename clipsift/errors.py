"""Error types: each carries one line that names the file at fault and the fix."""


class ClipsiftError(Exception):
    """Base class for user-facing errors; the CLI prints the message alone and exits 1."""


class PoolError(ClipsiftError):
    """A pool directory or one of its shards is malformed."""


class SubsetError(ClipsiftError):
    """A subset (uid) file is malformed."""


class ParamError(ClipsiftError):
    """A filter, parameter or recipe is unknown or has a bad value."""


class MissingDependencyError(ClipsiftError):
    """An optional package or asset that a step needs is absent."""
