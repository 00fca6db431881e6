"""locallearn: train deep networks as gradient-isolated modules, each with its own local loss."""
__version__ = "0.1.0"

from .api import train  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .engine import Trainer  # noqa: E402
from .evaluation import evaluate  # noqa: E402

__all__ = ["TrainConfig", "Trainer", "evaluate", "train", "__version__"]
