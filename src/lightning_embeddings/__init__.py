"""lightning-embeddings: see a model's embeddings while it trains.

``EmbeddingCollector`` records chosen layers every validation epoch; ``EmbeddingRun`` reads a run back.
"""

from lightning_embeddings.callback import EmbeddingCollector
from lightning_embeddings.run import EmbeddingRun

__all__ = ["EmbeddingCollector", "EmbeddingRun"]
__version__ = "0.1.0"
