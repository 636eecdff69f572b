"""Tests for unica.trainer: the loss the Trainer optimises, cached = plain gradients, freezing, LoRA,
learnable temperature, evaluation accuracy and full-checkpoint saves. Tiny real components: a random
2-layer BERT with the MiniLM tokenizer and a 32 px ViT."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import TINY_VIT, make_image
from transformers import TrainerCallback

from unica.checkpoint import init_model, load_checkpoint
from unica.collator import RetrievalCollator
from unica.losses import retrieval_loss
from unica.trainer import UniCATrainer, UniCATrainingArguments, concat_inputs


def make_rows(count: int, image_dir=None) -> list[dict]:
    """Training rows mixing text->image, image->text and text->image+text, one hard negative each.

    With ``image_dir`` images are saved as PNG files and given as relative paths (JSONL style).
    """
    rows = []
    for i in range(count):
        image = make_image(i)
        negative = make_image(i + 100)
        if image_dir is not None:
            image.save(image_dir / f"{i}.png")
            negative.save(image_dir / f"n{i}.png")
            image, negative = f"{image_dir.name}/{i}.png", f"{image_dir.name}/n{i}.png"
        row = {"qid": f"q{i}", "query_text": "", "query_image": None, "pos_text": "", "pos_image": None,
               "neg_text": f"a decoy scene number {i}", "neg_image": None}
        if i % 3 == 0:
            row.update(query_text=f"blocks of colour {i}", pos_image=image)
        elif i % 3 == 1:
            row.update(query_image=image, pos_text=f"caption {i}", neg_text="", neg_image=negative)
        else:
            row.update(query_text=f"which scene is {i}", pos_text=f"scene {i}", pos_image=image, neg_image=negative)
        rows.append(row)
    return rows


def tiny_model(tiny_text_path: str, **overrides):
    torch.manual_seed(0)
    return init_model(tiny_text_path, "vit-micro", vision_config_overrides=TINY_VIT, **overrides)


def make_trainer(tiny_text_path, tmp_path, rows=None, model=None, eval_rows=None, **settings) -> UniCATrainer:
    if model is None:
        model, processor = tiny_model(tiny_text_path)
    else:
        model, processor = model
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, learning_rate=1e-2,
                    report_to="none", disable_tqdm=True, dataloader_pin_memory=False, save_strategy="no",
                    hard_negatives=1, temperature=0.05, psl_weight=0.5, seed=0)
    defaults.update(settings)
    args = UniCATrainingArguments(**defaults)
    train = datasets.Dataset.from_list(rows if rows is not None else make_rows(4))
    evaluation = datasets.Dataset.from_list(eval_rows) if eval_rows is not None else None
    return UniCATrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                        data_collator=RetrievalCollator(processor))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"psl_weight": -0.1}, "psl_weight must be a finite number >= 0"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"freeze": "bica"}, "freeze must be one of"),
        ({"hard_negatives": -1}, "hard_negatives must be an integer >= 0"),
        ({"cache_chunk_size": 0}, "cache_chunk_size must be a positive integer"),
        ({"psl_variant": "l2"}, "psl_variant must be one of"),
        ({"lora_r": -2}, "lora_r must be an integer >= 0"),
        ({"remove_unused_columns": True}, "remove_unused_columns=True would drop every column"),
    ],
)
def test_arguments_reject_bad_values(setting, message, tmp_path) -> None:
    with pytest.raises(ValueError, match=message):
        UniCATrainingArguments(output_dir=str(tmp_path), **setting)


def test_compute_loss_is_info_nce_plus_psl_on_the_model_embeddings(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path)
    model = trainer.model.eval()
    batch = trainer.data_collator(make_rows(4))
    loss, parts = trainer.compute_loss(model, batch, return_outputs=True)
    with torch.no_grad():
        q, p, n = (model(**batch[group]).embeddings for group in ("query", "positive", "negative"))
    expected = retrieval_loss(q, p, n.view(4, 1, -1), temperature=0.05, psl_weight=0.5)
    assert loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)
    assert parts.psl.item() == pytest.approx(expected.psl.item(), abs=1e-6)
    assert loss.item() == pytest.approx(parts.info_nce.item() + 0.5 * parts.psl.item(), abs=1e-6)
    # Padding to a common length for the single forward pass does not change an embedding.
    merged = concat_inputs([batch["query"], batch["positive"]])
    torch.testing.assert_close(model(**merged).embeddings[:4], q, atol=1e-6, rtol=1e-5)


def test_cached_loss_gives_the_plain_loss_and_gradients(tiny_text_path, tmp_path) -> None:
    rows = make_rows(5)
    results = []
    for chunk in (None, 3):
        trainer = make_trainer(tiny_text_path, tmp_path, rows=rows, cache_chunk_size=chunk)
        model = trainer.model.train()
        loss = trainer.compute_loss(model, trainer.data_collator(rows))
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain), (cached_loss, cached) = results
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert plain.keys() == cached.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_train_logs_loss_parts_and_freeze_backbones_trains_only_fusion(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path, freeze="backbones", max_steps=2, logging_steps=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("fusion_encoder.", "visual_projection.")) for n in changed)
    assert any(n.startswith("visual_projection.") for n in changed)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert entry["temperature"] == pytest.approx(0.05)
        assert entry["loss"] == pytest.approx(entry["info_nce"] + 0.5 * entry["psl"], rel=1e-3)


def test_evaluate_reports_in_batch_accuracy(tiny_text_path, tmp_path) -> None:
    eval_rows = make_rows(6)
    trainer = make_trainer(tiny_text_path, tmp_path, eval_rows=eval_rows, per_device_eval_batch_size=3)
    metrics = trainer.evaluate()
    model = trainer.model.eval()
    correct = correct_with_negatives = 0
    with torch.no_grad():
        for start in (0, 3):
            batch = trainer.data_collator(eval_rows[start : start + 3])
            q, p, n = (model(**batch[group]).embeddings for group in ("query", "positive", "negative"))
            correct += int(((q @ p.T).argmax(1) == torch.arange(3)).sum())
            correct_with_negatives += int(((q @ torch.cat([p, n]).T).argmax(1) == torch.arange(3)).sum())
    assert metrics["eval_accuracy"] == pytest.approx(correct / 6)
    assert metrics["eval_accuracy_with_negatives"] == pytest.approx(correct_with_negatives / 6)
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_info_nce"] + 0.5 * metrics["eval_psl"], rel=1e-4)


def test_lora_trains_adapters_and_saves_a_merged_checkpoint(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path, lora_r=4, lora_alpha=8, max_steps=2)
    text_trainable = {n for n, p in trainer.model.text_model.named_parameters() if p.requires_grad}
    assert text_trainable and all("lora_" in n for n in text_trainable)
    base = trainer.model.text_model.encoder.layer[0].attention.self.query.base_layer.weight.detach().clone()
    trainer.train()
    assert trainer.model.text_model.encoder.layer[0].attention.self.query.lora_B["default"].weight.abs().sum() > 0
    trainer.save_model(str(tmp_path / "lora-model"))

    loaded, processor = load_checkpoint(tmp_path / "lora-model")
    assert not torch.equal(loaded.text_model.encoder.layer[0].attention.self.query.weight, base)
    batch = trainer.data_collator(make_rows(3))["positive"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).embeddings, trainer.model.eval()(**batch).embeddings,
                                   atol=1e-5, rtol=1e-4)
    adapter = json.loads((tmp_path / "lora-model" / "lora_adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["query", "value"]
    assert (tmp_path / "lora-model" / "lora_adapter" / "adapter_model.safetensors").is_file()


def test_learnable_temperature_is_a_model_weight_trained_and_saved(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path, learnable_temperature=True, max_steps=2, learning_rate=0.05)
    assert float(trainer.model.temperature.detach()) == pytest.approx(0.05)  # set from args.temperature
    trainer.train()
    learned = float(trainer.model.temperature.detach())
    assert learned != pytest.approx(0.05, abs=1e-4)
    trainer.save_model(str(tmp_path / "model"))
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["contrastive_temperature"] == pytest.approx(learned, abs=1e-6)
    assert json.loads((tmp_path / "model" / "training_record.json").read_text())["temperature"] == pytest.approx(
        learned, abs=1e-6)
    loaded, _ = load_checkpoint(tmp_path / "model")  # the weight itself comes back, not a config default
    assert float(loaded.temperature) == pytest.approx(learned, rel=1e-6)


def test_a_fixed_temperature_is_not_trained(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path, max_steps=2, temperature=0.07)
    trainer.train()
    assert not trainer.model.logit_scale.requires_grad
    assert float(trainer.model.temperature) == pytest.approx(0.07)


def test_temperature_and_bica_gates_get_no_weight_decay(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path, learnable_temperature=True, weight_decay=0.1)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = {names[id(p)] for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    undecayed = {names[id(p)] for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    gates = {n for n in names.values() if n.endswith("_gate")}
    assert len(gates) == 4 and gates <= undecayed and not gates & decayed
    assert "logit_scale" in undecayed
    bica_weights = {n for n in names.values() if n.startswith("fusion_encoder.") and n.endswith("q_proj.weight")}
    assert bica_weights and bica_weights <= decayed  # the rest of Bi-CA still decays


def test_save_model_into_output_dir_keeps_training_checkpoints(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path, save_strategy="steps", save_steps=1)
    trainer.train()
    out = tmp_path / "out"
    assert (out / "checkpoint-1" / "optimizer.pt").is_file()
    (out / "notes.txt").write_text("kept")
    trainer.save_model()
    assert (out / "checkpoint-1" / "trainer_state.json").is_file() and (out / "notes.txt").read_text() == "kept"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    loaded, _ = load_checkpoint(out)
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, trainer.model.state_dict()[name])


def test_a_collator_with_fewer_negatives_than_asked_fails_before_training(tiny_text_path, tmp_path) -> None:
    rows = make_rows(4)
    rows[2].update(neg_text="", neg_image=None)
    with pytest.raises(ValueError, match=r"hard_negatives=1 but row 2 \(qid 'q2'\) of train_dataset provides 0"):
        make_trainer(tiny_text_path, tmp_path, rows=rows)


def test_fusion_learning_rate_moves_the_zero_gates_faster(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path, learning_rate=1e-5, fusion_learning_rate=1e-2, max_steps=3,
                           lr_scheduler_type="constant", weight_decay=0.0)
    model = trainer.model
    text_before = model.text_model.embeddings.word_embeddings.weight.detach().clone()
    projection_before = model.visual_projection.proj.weight.detach().clone()
    trainer.train()
    gate = model.fusion_encoder.layers[0].text_attention_gate.detach()
    # Adam moves each parameter by about one learning rate per step: 3 steps of 1e-2 vs 1e-5.
    assert 5e-3 < gate.abs().max().item() <= 3.1e-2
    assert (model.visual_projection.proj.weight.detach() - projection_before).abs().max().item() > 5e-3
    assert (model.text_model.embeddings.word_embeddings.weight.detach() - text_before).abs().max().item() <= 3.1e-5
    rates = sorted({group["lr"] for group in trainer.optimizer.param_groups if group["params"]})
    assert rates == [1e-5, 1e-2]


class FirstEvaluationIsBest(TrainerCallback):
    """Scores each evaluation ``eval_rank = -global_step``: the first checkpoint is the best one, whatever the
    (tiny, noisy) losses do, so "best" and "last" differ by construction."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        metrics["eval_rank"] = -state.global_step


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_load_best_model_at_end_restores_the_best_checkpoint_strictly(tiny_text_path, tmp_path, lora_r) -> None:
    """The best checkpoint is loaded as on resume: ViT keys are renamed on save, so a non-strict load of the
    file's keys would silently keep the last step's vision weights."""
    rows = make_rows(4)
    trainer = make_trainer(tiny_text_path, tmp_path, rows=rows, eval_rows=rows, max_steps=3, lora_r=lora_r,
                           eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                           per_device_eval_batch_size=4, load_best_model_at_end=True, metric_for_best_model="rank",
                           greater_is_better=True)
    trainer.add_callback(FirstEvaluationIsBest())
    trainer.train()
    out = tmp_path / "out"
    best, last = trainer.state.best_model_checkpoint, str(out / "checkpoint-3")
    assert best is not None and best != last and (out / "checkpoint-3").is_dir()

    live = {n: p.detach() for n, p in trainer.model.vision_model.named_parameters()}
    best_model, _ = load_checkpoint(best)
    last_model, _ = load_checkpoint(last)
    best_vision, last_vision = best_model.vision_model.state_dict(), last_model.vision_model.state_dict()
    assert live.keys() == best_vision.keys()
    for name, value in live.items():
        torch.testing.assert_close(value, best_vision[name], atol=0, rtol=0, msg=name)
    assert any(not torch.equal(value, last_vision[name]) for name, value in live.items())
    # The whole model (with LoRA: the best step's adapters) is the best checkpoint's.
    batch = trainer.data_collator(rows)["query"]
    with torch.no_grad():
        torch.testing.assert_close(trainer.model.eval()(**batch).embeddings, best_model(**batch).embeddings,
                                   atol=1e-5, rtol=1e-4)
