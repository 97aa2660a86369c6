"""clipsift: DataComp-compatible data filtering for CLIP pretraining."""

__version__ = "0.1.0"

from clipsift.errors import ClipsiftError  # noqa: E402

__all__ = ["ClipsiftError", "__version__"]
