"""functa: data points as functions.

Meta-learned modulated neural fields (functa), functasets, and the tools built on them.
"""

__version__ = "0.1.0"

from .fields import LatentModulatedSiren, SirenConfig  # noqa: E402

__all__ = ["LatentModulatedSiren", "SirenConfig", "__version__"]
