"""Accelerator checks: run only where a CUDA device exists (the product never needs one)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_bf16_matches_cpu_fp32(tiny_pair):
    model, processor = tiny_pair
    batch = processor(text=["a red circle", None, "text only"], images=[make_image(60), make_image(61), None])
    with torch.no_grad():
        reference = model(**batch).embeddings
        cuda_model = model.to("cuda")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                got = cuda_model(**batch.to("cuda")).embeddings.float().cpu()
        finally:
            model.to("cpu")
    assert F.cosine_similarity(reference, got).min().item() >= 0.99
