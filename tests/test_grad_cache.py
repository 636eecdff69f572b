"""Tests for unica.grad_cache: the cached loss gives the plain loss and gradients, with a real tiny
BERT (dropout on) plus an image branch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unica.grad_cache import cached_loss, cached_retrieval_loss, split_inputs
from unica.losses import RetrievalLoss, retrieval_loss

HIDDEN, PIXELS = 32, 3 * 4 * 4


class TinyImageTextEncoder(nn.Module):
    """A randomly initialised 2-layer BERT; items with an image add a projection of their pixels."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=64,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
        )
        self.text = BertModel(config, add_pooling_layer=False)
        self.image = nn.Sequential(nn.Linear(PIXELS, HIDDEN), nn.Dropout(0.1))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeddings = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        if pixel_values is not None:
            image_rows = image_mask.nonzero().squeeze(1)
            embeddings = embeddings.index_add(0, image_rows, self.image(pixel_values.flatten(1)))
        return embeddings


def _batch(size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Processor-like inputs: padded ids, and pixel values only for the items that have an image."""
    lengths = torch.randint(3, 9, (size,), generator=generator)
    attention_mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
    input_ids = torch.randint(1, 64, (size, 8), generator=generator) * attention_mask
    image_mask = torch.rand(size, generator=generator) < 0.5
    image_mask[0] = True
    pixel_values = torch.randn(int(image_mask.sum()), 3, 4, 4, generator=generator)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "image_mask": image_mask,
        "pixel_values": pixel_values,
    }


@pytest.fixture(scope="module")
def encoder_and_batches() -> tuple[TinyImageTextEncoder, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    encoder = TinyImageTextEncoder()
    generator = torch.Generator().manual_seed(1)
    batch_size, hard_negatives = 6, 2
    groups = [
        _batch(batch_size, generator),
        _batch(batch_size, generator),
        _batch(batch_size * hard_negatives, generator),
    ]
    return encoder, groups


def _grads(*modules: nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for index, module in enumerate(modules):
        for name, param in module.named_parameters():
            grads[f"{index}.{name}"] = param.grad.clone()
            param.grad = None
    return grads


def _plain_loss(encoder, groups, loss_fn, chunk_size: int | None):
    """The reference: every chunk encoded with its graph (chunk_size=None: the whole group at once)."""
    embeddings = []
    for group in groups:
        chunks = [group] if chunk_size is None else split_inputs(group, chunk_size)
        embeddings.append(torch.cat([encoder(**chunk) for chunk in chunks]))
    query, positives, negatives = embeddings
    return loss_fn(query, positives, negatives.view(query.shape[0], -1, HIDDEN))


def test_cached_loss_with_dropout_equals_plain_loss(encoder_and_batches) -> None:
    encoder, groups = encoder_and_batches
    encoder.train()
    # dropout is really on: the same inputs embed differently twice, so the RNG replay is what makes
    # the cached gradients match
    assert not torch.allclose(encoder(**groups[0]), encoder(**groups[0]))

    loss_fn = RetrievalLoss(temperature=0.05, learnable_temperature=True, psl_weight=0.1)
    torch.manual_seed(7)
    reference = _plain_loss(encoder, groups, loss_fn, chunk_size=4)
    reference.loss.backward()
    reference_grads = _grads(encoder, loss_fn)
    reference_next_random = torch.rand(3)

    torch.manual_seed(7)
    cached = cached_retrieval_loss(lambda batch: encoder(**batch), *groups, chunk_size=4, loss_fn=loss_fn)
    assert not any(p.grad is not None for p in encoder.parameters())  # nothing happens before backward
    cached.loss.backward()
    cached_grads = _grads(encoder, loss_fn)

    assert cached.loss.item() == pytest.approx(reference.loss.item(), abs=1e-5)
    assert cached.as_dict() == pytest.approx(reference.as_dict(), abs=1e-5)
    assert cached_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert reference_grads["1.info_nce.log_scale"].abs() > 0
    # replaying restores the RNG it found: training's random stream goes on as without the cache
    torch.testing.assert_close(torch.rand(3), reference_next_random)


def test_cached_loss_equals_full_batch_and_follows_the_backward_scale(encoder_and_batches) -> None:
    encoder, groups = encoder_and_batches
    encoder.eval()  # no dropout: the plain reference can encode each group in one forward
    loss_fn = lambda q, p, n: retrieval_loss(q, p, n, temperature=0.02, psl_weight=0.5, symmetric=True)  # noqa: E731
    reference = _plain_loss(encoder, groups, loss_fn, chunk_size=None)
    reference.loss.backward()
    reference_grads = _grads(encoder)

    cached = cached_retrieval_loss(lambda batch: encoder(**batch), *groups, chunk_size=5, loss_fn=loss_fn)
    assert cached.loss.item() == pytest.approx(reference.loss.item(), abs=1e-5)
    # the Trainer divides by gradient_accumulation_steps before backward: every chunk gets the scale
    (cached.loss / 4).backward()
    for name, grad in _grads(encoder).items():
        torch.testing.assert_close(grad, reference_grads[name] / 4, atol=1e-5, rtol=1e-4, msg=name)

    with torch.no_grad():  # evaluation: no graph, no replay
        evaluated = cached_retrieval_loss(lambda batch: encoder(**batch), *groups, chunk_size=5, loss_fn=loss_fn)
    assert not evaluated.loss.requires_grad
    assert evaluated.loss.item() == pytest.approx(reference.loss.item(), abs=1e-5)


def test_split_inputs_slices_pixel_values_by_image_count() -> None:
    batch = {
        "input_ids": torch.arange(10).view(5, 2),
        "image_mask": torch.tensor([True, False, False, True, True]),
        "pixel_values": torch.arange(3).view(3, 1).float(),  # one row per image: items 0, 3, 4
        "return_loss": True,
    }
    chunks = split_inputs(batch, 2)
    assert [c["input_ids"][:, 0].tolist() for c in chunks] == [[0, 2], [4, 6], [8]]
    assert [c["image_mask"].tolist() for c in chunks] == [[True, False], [False, True], [True]]
    assert [c["pixel_values"][:, 0].tolist() for c in chunks] == [[0.0], [1.0], [2.0]]
    assert all(c["return_loss"] is True for c in chunks)
    # a chunk without images gets no pixel_values
    assert "pixel_values" not in split_inputs(batch, 1)[1]

    with pytest.raises(ValueError, match="pixel_values"):
        split_inputs({**batch, "pixel_values": torch.zeros(5, 1)}, 2)
    with pytest.raises(ValueError, match="token_type_ids"):
        split_inputs({**batch, "token_type_ids": torch.zeros(4, 2)}, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        split_inputs(batch, 0)


def test_cached_loss_rejects_an_encoder_that_does_not_return_embeddings() -> None:
    encoder = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="encode_fn"):
        cached_loss(lambda b: {"embeddings": encoder(b["x"])}, [{"x": torch.randn(2, 4)}], lambda e: e[0].sum(), 1)
    with pytest.raises(ValueError, match="negative_inputs"):
        encode = lambda b: encoder(b["x"])  # noqa: E731
        cached_retrieval_loss(
            encode, {"x": torch.randn(4, 4)}, {"x": torch.randn(4, 4)}, {"x": torch.randn(6, 4)}, chunk_size=2
        )


# The cached loss under DistributedDataParallel with gathered negatives is tested together with the plain
# loss in tests/test_losses.py (one pair of spawned processes for both).
