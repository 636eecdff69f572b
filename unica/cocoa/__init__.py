"""CoCoA content-reconstruction pre-training (arXiv 2603.01471) for UniCA, before contrastive training.

CoCoA makes a multimodal model compress its input into one summary token before contrastive learning:
(1) a bidirectional warm-up by joint reconstruction (masked token prediction for text, masked auto-encoding
for images); (2) reconstruction bridged through the summary token with truncated attention, which forces the
input's content into that token; (3) contrastive learning on that token. UniCA's fused encoder is
bidirectional and pools [CLS], so [CLS] (the pooled embedding) is the bridge; stage 3 is ``unica train``.

* :mod:`unica.cocoa.masking`: which tokens and patches an item hides (per item, reproducible on any number of
  processes), pixel patches.
* :mod:`unica.cocoa.heads`: the token head (tied to the word embeddings), the patch head and the stage-2
  decoder. They live here, never in the remote code: the saved checkpoint is a plain UniCA checkpoint.
* :mod:`unica.cocoa.objectives`: the stages' losses (what image patches reconstruct, and why, is told there)
  and :class:`CoCoAPretrainingModel`, the one module the Trainer trains (data-parallel with the heads).
* :mod:`unica.cocoa.trainer`: :class:`CoCoATrainer` (both stages in one run, resumable) and
  :class:`ItemCollator`.

``unica pretrain --config examples/pretrain_scenes.yaml`` runs it from a config (``unica/apps/pretrain_cli.py``).

Example:

```python
>>> from transformers import TrainingArguments
>>> from unica.cocoa import CoCoASettings, CoCoATrainer
>>> settings = CoCoASettings(stage1_steps=20, stage2_steps=20, text_mask_ratio=0.3, image_mask_ratio=0.5)
>>> trainer = CoCoATrainer(model=model, args=TrainingArguments("./pretrained", per_device_train_batch_size=16),
...                        settings=settings, train_dataset=rows, processing_class=processor)
>>> trainer.train(); trainer.save_model()    # ./pretrained: a plain UniCA checkpoint, heads dropped
```
"""

from unica.cocoa.heads import BridgeDecoder, CoCoAHeads, PatchPredictionHead, TokenPredictionHead, check_decoder_fits
from unica.cocoa.masking import check_mask_ratio, item_generators, mask_pixels, patch_grid, patchify, sample_masks
from unica.cocoa.objectives import (
    CoCoAOutput,
    CoCoAPretrainingModel,
    CoCoASettings,
    Reconstruction,
    reconstruction_loss,
    stage1_reconstruction,
    stage2_reconstruction,
)
from unica.cocoa.trainer import (
    HEADS_FILE,
    PRETRAINING_RECORD_FILE,
    CoCoATrainer,
    ItemCollator,
    check_images_for_patches,
    dataset_has_images,
)

__all__ = ["HEADS_FILE", "PRETRAINING_RECORD_FILE", "BridgeDecoder", "CoCoAHeads", "CoCoAOutput",
           "CoCoAPretrainingModel", "CoCoASettings", "CoCoATrainer", "ItemCollator", "PatchPredictionHead",
           "Reconstruction", "TokenPredictionHead", "check_decoder_fits", "check_images_for_patches", "check_mask_ratio", "dataset_has_images",
           "item_generators", "mask_pixels", "patch_grid", "patchify", "reconstruction_loss", "sample_masks",
           "stage1_reconstruction", "stage2_reconstruction"]
