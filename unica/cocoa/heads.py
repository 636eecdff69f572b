"""The pre-training heads and the stage-2 decoder. They live in the toolkit only: a saved checkpoint is a plain
UniCA model, and the remote code never knows them.

* :class:`TokenPredictionHead`: BERT's masked-LM head (dense + GELU + LayerNorm, then the output layer tied to
  the text encoder's word embeddings, plus a bias).
* :class:`PatchPredictionHead`: hidden state -> the normalised pixels of one patch.
* :class:`BridgeDecoder`: stage 2's shallow bidirectional decoder, whose only view of the encoder is one vector
  (the bridge, the pooled embedding: the [CLS] output for ``pooling="cls"``).
* :class:`CoCoAHeads`: the three together, built for a model (:meth:`CoCoAHeads.for_model`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unica.cocoa.masking import patch_grid

__all__ = ["BridgeDecoder", "CoCoAHeads", "PatchPredictionHead", "TokenPredictionHead", "check_decoder_fits"]

# Kinds of decoder slots (type embeddings): the bridge, text tokens, image patches.
BRIDGE, TEXT, IMAGE = 0, 1, 2


def check_decoder_fits(hidden_size: int, decoder_hidden_size: int | None, decoder_heads: int | None,
                       where: str = "pretrain") -> None:
    """``ValueError`` naming the key and the fix if the decoder does not fit an encoder of ``hidden_size``.

    The decoder reads the encoder's word embeddings and predicts through the tied output layer, so its width is
    the encoder's; its heads must divide that width.
    """
    if decoder_hidden_size is not None and decoder_hidden_size != hidden_size:
        raise ValueError(
            f"{where}.decoder_hidden_size={decoder_hidden_size} does not fit the encoder, whose hidden size is "
            f"{hidden_size}: the decoder reads and predicts tokens through the encoder's word embeddings; set "
            f"decoder_hidden_size: {hidden_size} or leave it out")
    if decoder_heads is not None and (decoder_heads < 1 or hidden_size % decoder_heads):
        divisors = [n for n in range(1, min(hidden_size, 64) + 1) if hidden_size % n == 0]
        raise ValueError(f"{where}.decoder_heads={decoder_heads} must divide the decoder width {hidden_size} (the "
                         f"encoder's hidden size); use one of {divisors[-6:]} or leave it out (the encoder's heads)")


class TokenPredictionHead(nn.Module):
    """Masked-token prediction: BERT's LM head, its output layer tied to the text encoder's word embeddings."""

    def __init__(self, word_embeddings: nn.Embedding, layer_norm_eps: float = 1e-12):
        super().__init__()
        vocab_size, hidden_size = word_embeddings.weight.shape
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.word_embeddings = [word_embeddings]  # a list: not a submodule (the model owns and saves it)

    def forward(self, hidden: Tensor) -> Tensor:
        """``(..., hidden)`` -> ``(..., vocab)`` logits."""
        states = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(states, self.word_embeddings[0].weight, self.bias)


class PatchPredictionHead(nn.Module):
    """A hidden state -> the normalised pixels of its patch (``channels * patch * patch`` values)."""

    def __init__(self, hidden_size: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.output = nn.Linear(hidden_size, patch_dim)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.output(self.norm(hidden))


class BridgeDecoder(nn.Module):
    """Stage 2's decoder: a bridge vector plus an item's heavily masked tokens and patches -> their hidden states.

    The decoder's sequence is ``[bridge] + text slots + image slots``. A text slot holds the token's word
    embedding (the encoder's own table) or, if hidden, a learned mask embedding; an image slot holds the decoder's
    own embedding of the patch's pixels or, if hidden, the mask embedding; each slot adds a position and a type
    embedding. Its attention is bidirectional over that sequence alone: the encoder's token outputs never enter,
    so whatever the hidden slots need beyond their few visible neighbours must come through the bridge (the
    truncated attention).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_layers: int, max_text_positions: int,
                 num_image_tokens: int, patch_dim: int | None):
        super().__init__()
        self.bridge = nn.Linear(hidden_size, hidden_size)
        self.mask_embedding = nn.Parameter(torch.empty(hidden_size).normal_(std=0.02))
        self.patch_embedding = nn.Linear(patch_dim, hidden_size) if patch_dim else None
        self.positions = nn.Embedding(1 + max_text_positions + num_image_tokens, hidden_size)
        self.types = nn.Embedding(3, hidden_size)
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, 4 * hidden_size, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.max_text_positions = max_text_positions
        self.num_image_tokens = num_image_tokens

    def forward(self, bridge: Tensor, text_embeddings: Tensor, text_hidden: Tensor, text_padding: Tensor,
                patches: Tensor | None = None, patch_hidden: Tensor | None = None,
                image_rows: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Decoder states of the text slots ``(B, L, H)`` and image slots ``(B, N, H)`` (None without images).

        Args:
            bridge: ``(B, H)``, the encoder's summary of each item (the only encoder output read).
            text_embeddings: ``(B, L, H)`` word embeddings of the item's tokens.
            text_hidden / text_padding: ``(B, L)`` bool, the tokens to hide / the padding.
            patches / patch_hidden: ``(images, N, patch_dim)`` pixels and ``(images, N)`` bool, the patches to hide,
                for the rows ``image_rows`` (``(B,)`` bool) that have an image.
        """
        batch, length = text_padding.shape
        if length > self.max_text_positions:
            raise ValueError(f"the decoder was built for {self.max_text_positions} text tokens, got {length}")
        device = bridge.device
        text = torch.where(text_hidden[..., None], self.mask_embedding.to(text_embeddings.dtype), text_embeddings)
        text = text + self.positions(torch.arange(1, 1 + length, device=device)) + self.types.weight[TEXT]
        bridge = bridge.to(self.bridge.weight.dtype)  # the model pools in float32 whatever its weights' dtype
        first = self.bridge(bridge)[:, None] + self.positions.weight[0] + self.types.weight[BRIDGE]
        parts, padding = [first, text], [torch.zeros(batch, 1, dtype=torch.bool, device=device), text_padding]
        if patches is not None:
            if self.patch_embedding is None:
                raise ValueError("this decoder was built without patch reconstruction (decoder_image_mask_ratio: 0); "
                                 "it cannot take image patches")
            count = patches.shape[1]
            embedded = self.patch_embedding(patches)
            embedded = torch.where(patch_hidden[..., None], self.mask_embedding.to(embedded.dtype), embedded)
            slots = embedded.new_zeros(batch, count, embedded.shape[-1]).index_copy(
                0, image_rows.nonzero(as_tuple=True)[0], embedded)
            offset = 1 + self.max_text_positions
            positions = self.positions(torch.arange(offset, offset + count, device=device))
            slots = slots + positions + self.types.weight[IMAGE]
            parts.append(slots)
            padding.append((~image_rows)[:, None].expand(batch, count))
        states = self.norm(self.layers(torch.cat(parts, dim=1), src_key_padding_mask=torch.cat(padding, dim=1)))
        text_states = states[:, 1 : 1 + length]
        image_states = states[:, 1 + length :] if patches is not None else None
        return text_states, image_states


class CoCoAHeads(nn.Module):
    """Everything pre-training adds to a UniCA model: the token head (both stages), the patch head (both stages,
    when patches are reconstructed) and the stage-2 decoder (when stage 2 runs)."""

    def __init__(self, token_head: TokenPredictionHead, patch_head: PatchPredictionHead | None,
                 decoder: BridgeDecoder | None, patch_size: int | None):
        super().__init__()
        self.token_head = token_head
        self.patch_head = patch_head
        self.decoder = decoder
        self.patch_size = patch_size

    @classmethod
    def for_model(cls, model, patches: bool = True, decoder: bool = True, decoder_patches: bool = True,
                  decoder_layers: int = 1, decoder_heads: int | None = None,
                  decoder_hidden_size: int | None = None) -> CoCoAHeads:
        """Heads for a :class:`~modeling_unica.UniCAModel`: ``patches``, ``decoder``, ``decoder_patches`` say
        whether to build the patch head, the stage-2 decoder and the decoder's image slots. ``ValueError`` if
        the decoder does not fit (:func:`check_decoder_fits`) or the tower's patches do not match pixels
        (:func:`unica.cocoa.masking.patch_grid`)."""
        text = model.config.text_config
        check_decoder_fits(text.hidden_size, decoder_hidden_size, decoder_heads)
        embeddings = model.text_model.get_input_embeddings()
        token_head = TokenPredictionHead(embeddings, getattr(text, "layer_norm_eps", 1e-12))
        patch_size = patch_dim = None
        if patches:
            patch_size, _ = patch_grid(model.config)
            patch_dim = getattr(model.config.vision_config, "num_channels", 3) * patch_size * patch_size
        patch_head = PatchPredictionHead(text.hidden_size, patch_dim) if patches else None
        bridge = None
        if decoder:
            bridge = BridgeDecoder(text.hidden_size, decoder_heads or text.num_attention_heads, decoder_layers,
                                   model.config.max_text_length, model.config.num_image_tokens,
                                   patch_dim if decoder_patches else None)
        return cls(token_head, patch_head, bridge, patch_size)
