"""The encode fast path (issue 17): bf16 weights cast once, fused oneDNN kernels, no padding waste, DataLoader
workers, ``--dtype auto``, and the benchmark summary. Every test checks results (numbers, dtypes, equality), none a
timing: ``benchmarks/encode.py`` measures the speed."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VIT, make_image
from transformers import BertConfig

import unica.encoding as encoding
from configuration_unica import EvaClipVisionConfig, UniCAConfig
from modeling_unica import UniCAModel
from unica.apps.cli import build_parser
from unica.apps.cli import main as cli
from unica.encoding import (
    UniCAEncoder,
    cast_for_inference,
    cpu_flags_have_native_bf16,
    encode_items,
    load_for_inference,
    prepared_for,
    resolve_dtype,
    use_fast_kernels,
)

ONEDNN = encoding._ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available()


def _open_gates(model: UniCAModel) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.fusion_encoder.layers:
            for gate in (layer.text_attention_gate, layer.image_attention_gate, layer.text_ffn_gate,
                         layer.image_ffn_gate):
                gate.copy_(0.5 + 0.1 * torch.randn(gate.shape, generator=generator))


def _eva_model(fusion: str, pooling: str = "cls") -> UniCAModel:
    """A tiny BERT + EVA02-CLIP UniCA model (VISTA's tower), random weights moved off their initial values."""
    text = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                      max_position_embeddings=64, vocab_size=30522, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
    vision = EvaClipVisionConfig(hidden_size=64, intermediate_size=170, num_hidden_layers=2, num_attention_heads=1,
                                 image_size=32, patch_size=8, projection_dim=16)
    config = UniCAConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), fusion=fusion, pooling=pooling,
                         empty_text_ids=[101, 102], fused_position_start=0)
    torch.manual_seed(0)
    model = UniCAModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    if fusion == "bica":
        _open_gates(model)
    return model


def _inputs(batch: int = 3, length: int = 7, image_size: int = 32, padded: bool = True) -> dict:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 29000, (batch, length), generator=generator)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    if padded:  # the first item's text is shorter: padding the attention must ignore
        mask[0, 4:] = 0
        ids[0, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": torch.randn(batch, 3, image_size, image_size, generator=generator)}


@pytest.fixture
def always_fast(monkeypatch):
    """Fast kernels wherever oneDNN exists (on Intel CPUs float32 would otherwise keep MKL: nothing to compare)."""
    if not ONEDNN:
        pytest.skip("torch was built without oneDNN")
    monkeypatch.setattr(encoding, "fast_kernels_pay", lambda dtype: True)


def _classes(model: torch.nn.Module) -> list[type]:
    return [type(module) for module in model.modules()]


@pytest.mark.parametrize("fusion", ["concat", "bica"])
@pytest.mark.parametrize("tower", ["eva", "vit"])
def test_fast_kernels_compute_what_the_model_computes_and_undo_restores_it(tower, fusion, always_fast, minilm_path):
    if tower == "eva":
        model = _eva_model(fusion)
        inputs = _inputs()
    else:
        from unica.checkpoint import init_model

        torch.manual_seed(0)
        model, _ = init_model(minilm_path, "vit-micro", fusion=fusion, vision_config_overrides=TINY_VIT)
        model.eval()
        if fusion == "bica":
            _open_gates(model)
        inputs = _inputs()
    classes = _classes(model)
    with torch.inference_mode():
        plain = {"hybrid": model(**inputs).embeddings,
                 "text": model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).embeddings,
                 "image": model(pixel_values=inputs["pixel_values"]).embeddings}
    undo = use_fast_kernels(model, "fp32")
    changed = sum(a is not b for a, b in zip(classes, _classes(model)))
    assert changed > 10  # every Linear, the GELU / residual / SwiGLU / qkv blocks
    with torch.inference_mode():
        fast = {"hybrid": model(**inputs).embeddings,
                "text": model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).embeddings,
                "image": model(pixel_values=inputs["pixel_values"]).embeddings}
    for kind in plain:
        torch.testing.assert_close(fast[kind], plain[kind], atol=1e-5, rtol=0)
    undo()
    assert _classes(model) == classes
    with torch.inference_mode():
        assert torch.equal(model(**inputs).embeddings, plain["hybrid"])


def test_fast_kernels_step_aside_for_autograd_and_autocast(always_fast):
    """Training through a model with fast kernels: the same loss and gradients as without (F.linear is used)."""
    model = _eva_model("bica")
    reference = copy.deepcopy(model)
    use_fast_kernels(model, "fp32")
    inputs = _inputs()
    for net in (model, reference):
        net.train()
        net(**inputs).embeddings.sum().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        if b.grad is None:
            assert a.grad is None, name
        else:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)
    model.eval()
    reference.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(**inputs).embeddings, reference(**inputs).embeddings)


def test_bf16_cast_keeps_layernorms_float32_and_pools_in_float32():
    model = _eva_model("bica", pooling="mean")
    inputs = _inputs()
    with torch.inference_mode():
        fp32 = model(**inputs).embeddings
    cast_for_inference(model, "bf16")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    with torch.inference_mode():
        output = model(**inputs)
    assert output.embeddings.dtype == torch.float32  # pooled and normalised in float32 (was bf16)
    torch.testing.assert_close(output.embeddings.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    assert float(torch.nn.functional.cosine_similarity(output.embeddings, fp32).min()) > 0.99


def test_mean_pooling_of_bf16_states_is_computed_in_float32():
    """Pooling a bf16 model's states: the float32 mean of the states, not a bf16 sum (rounded at every add)."""
    model = _eva_model("concat", pooling="mean")
    generator = torch.Generator().manual_seed(3)
    states = (1.0 + torch.rand(2, 300, 64, generator=generator) * 1e-2).to(torch.bfloat16)
    mask = torch.ones(2, 300, dtype=torch.long)
    mask[1, 150:] = 0
    expected = torch.stack([states[0].float().mean(0), states[1, :150].float().mean(0)])
    pooled = model._pool(states, mask)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(expected, dim=-1), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def mixed_items():
    """Texts of very different lengths and image + text / image-only items, interleaved."""
    items = []
    for index in range(11):
        text = "word " * (1 + (index * 7) % 23)
        if index % 3 == 0:
            items.append({"text": text, "image": make_image(index, size=40)})
        elif index % 3 == 1:
            items.append(text)
        else:
            items.append(make_image(index, size=40))
    return items


def test_encode_items_batches_one_kind_sorted_by_length_and_keeps_the_order(tiny_pair, mixed_items):
    model, processor = tiny_pair
    seen = []
    original = model.forward

    def recording(**batch):
        seen.append((bool(batch["image_mask"].all()), bool((~batch["image_mask"]).all()),
                     int(batch["attention_mask"].shape[1]), int(batch["attention_mask"].sum(1).max())))
        return original(**batch)

    model.forward = recording
    try:
        batched = encode_items(model, processor, mixed_items, batch_size=4, show_progress=False)
    finally:
        del model.forward
    assert all(with_image or text_only for with_image, text_only, _, _ in seen)  # no batch mixes the two paths
    assert all(width == longest for _, _, width, longest in seen)  # padded to its own longest text only
    one_by_one = np.concatenate([encode_items(model, processor, [item], batch_size=1, show_progress=False)
                                 for item in mixed_items])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)  # in the items' order


def test_encode_items_in_bf16_casts_for_the_call_and_restores_the_model(tiny_pair, mixed_items):
    """bf16 computes with bf16 weights (never autocast), so it gives what a bf16-loaded model gives; the float32
    model comes back bit for bit, its classes too."""
    model, processor = tiny_pair
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    classes = _classes(model)
    got = encode_items(model, processor, mixed_items, batch_size=4, dtype="bf16", show_progress=False)
    assert _classes(model) == classes
    after = model.state_dict()
    assert all(after[name].dtype == value.dtype and torch.equal(after[name], value) for name, value in before.items())
    cast = cast_for_inference(copy.deepcopy(model), "bf16")
    expected = encode_items(cast, processor, mixed_items, batch_size=4, dtype="bf16", show_progress=False)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32
    fp32 = encode_items(model, processor, mixed_items, batch_size=4, show_progress=False)
    assert float(np.min(np.sum(got * fp32, axis=1))) > 0.99
    with pytest.raises(ValueError, match="weights are bf16"):
        encode_items(cast, processor, mixed_items, dtype="fp32", show_progress=False)
    with prepared_for(model, "fp32"):
        pass
    assert _classes(model) == classes


def test_dataloader_workers_give_identical_embeddings(tiny_checkpoint, mixed_items, tmp_path):
    model, processor = load_for_inference(tiny_checkpoint, "fp32")
    without = encode_items(model, processor, mixed_items, batch_size=2, show_progress=False)
    with_workers = encode_items(model, processor, mixed_items, batch_size=2, show_progress=False, num_workers=2)
    np.testing.assert_array_equal(with_workers, without)

    from dataset_builders.evaluation import build_evaluation_sets
    from eval.harness import evaluate

    eval_set = tmp_path / "eval"
    build_evaluation_sets(Path(__file__).parent / "fixtures" / "scenes", eval_set, dataset="scenes", tasks=(2,))
    results = {workers: evaluate(UniCAEncoder(model, processor, "f" * 64, batch_size=8, num_workers=workers),
                                 eval_set, k_values=[1, 5, 10], show_progress=False)
               for workers in (0, 2)}
    assert results[0]["tasks"] == results[2]["tasks"]
    assert results[0]["rankings"] == results[2]["rankings"]


def test_auto_dtype_follows_the_cpu_and_the_fingerprint_records_the_dtype_used(tiny_pair, monkeypatch):
    assert cpu_flags_have_native_bf16("vendor_id : AuthenticAMD\nflags : fpu avx512f avx512_bf16 sse\n")
    assert cpu_flags_have_native_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not cpu_flags_have_native_bf16("flags : fpu avx512f avx512bw avx2\n")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(encoding, "native_bf16", lambda native=native: native)
        assert resolve_dtype("auto") == expected
        assert resolve_dtype("fp32") == "fp32" and resolve_dtype("bf16") == "bf16"
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("fp16")
    model, processor = tiny_pair
    monkeypatch.setattr(encoding, "native_bf16", lambda: False)
    auto = UniCAEncoder(model, processor, "f" * 64, dtype="auto")
    fp32 = UniCAEncoder(model, processor, "f" * 64, dtype="fp32")
    assert auto.dtype == "fp32" and auto.fingerprint == fp32.fingerprint
    copied = copy.deepcopy(model)
    monkeypatch.setattr(encoding, "native_bf16", lambda: True)
    bf16 = UniCAEncoder(copied, processor, "f" * 64, dtype="auto")
    assert bf16.dtype == "bf16" and bf16.fingerprint not in (fp32.fingerprint, auto.fingerprint)
    assert encoding.weights_dtype(copied) == "bf16"  # cast once, by the encoder that owns the model


def test_cli_encode_and_evaluate_default_to_auto_and_log_the_dtype_used(tiny_checkpoint, tmp_path, caplog):
    parser = build_parser()
    assert parser.parse_args(["encode", "c", "--text", "a", "--out", "o.npy"]).dtype == "auto"
    assert parser.parse_args(["evaluate", "c", "--dataset", "d", "--out", "o"]).dtype == "auto"
    resolved = resolve_dtype("auto")
    with caplog.at_level(logging.INFO, logger="unica"):
        assert cli(["encode", str(tiny_checkpoint), "--text", "a red circle", "--out", str(tmp_path / "e.npy")]) == 0
    assert f"encoding 1 items in {resolved} (auto: " in caplog.text
    model, processor = load_for_inference(tiny_checkpoint, resolved)
    expected = encode_items(model, processor, ["a red circle"], dtype=resolved, show_progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), expected)
    texts = ["a red circle", "a blue square at the top", "green", "a small yellow triangle"]
    args = ["encode", str(tiny_checkpoint), *[part for text in texts for part in ("--text", text)], "--dtype", "fp32",
            "--batch-size", "2"]
    assert cli([*args, "--out", str(tmp_path / "w0.npy")]) == 0
    assert cli([*args, "--num-workers", "2", "--out", str(tmp_path / "w2.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "w2.npy"), np.load(tmp_path / "w0.npy"))
    assert np.load(tmp_path / "w2.npy").shape[0] == 4


def test_eva_rotary_embedding_equals_the_rotate_pairs_formula():
    """The rotation without splitting the CLS token off equals EVA-CLIP's (CLS unrotated, patches rotated)."""
    from modeling_unica.modeling_eva_clip import rotary_tables, rotate_pairs

    model = _eva_model("concat")
    attention = model.vision_model.blocks[0].attn
    states = torch.randn(2, 17, 64)
    rope = model.vision_model._rope(4, states)
    cos, sin = rotary_tables(4, 64, 16, 10000.0)

    def old_rotate(tensor):  # the formula before issue 17 (cat of CLS and rotated patches)
        patches = tensor[:, :, 1:]
        return torch.cat([tensor[:, :, :1], patches * cos + rotate_pairs(patches) * sin], dim=2)

    captured = {}
    original = torch.nn.functional.scaled_dot_product_attention

    def capture(query, key, value, *args, **kwargs):
        captured.update(query=query, key=key)
        return original(query, key, value, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", capture)
        attention(states, rope)
    query, key, _ = (attention._heads(t) for t in attention._project(states))
    torch.testing.assert_close(captured["query"], old_rotate(query), atol=1e-6, rtol=0)
    torch.testing.assert_close(captured["key"], old_rotate(key), atol=1e-6, rtol=0)


def test_run_all_summary_marks_each_target(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks.run_all import summary_rows, summary_table

    results = tmp_path / "results"
    results.mkdir()
    (results / "encode.json").write_text(json.dumps({"targets": {
        "hybrid_fp32_vs_reference": {"value": 1.4, "op": ">=", "target": 1.0, "met": True},
        "bica_vs_concat": {"value": 0.93, "op": ">=", "target": 0.95, "met": False, "evidence": "Bi-CA FLOPs"},
        "bf16_cosine_to_fp32": {"value": None, "op": ">=", "target": 0.995, "met": None,
                                "note": "not measured: no trained checkpoint at x"}}}))
    (results / "st_encode.json").write_text(json.dumps({"throughput_ratio_st_over_direct": 0.97,
                                                         "target_ratio": 0.95}))
    rows = summary_rows(results, ["encode", "st_encode", "search"])
    marks = {(row["benchmark"], row["target"]): row["status"] for row in rows}
    assert marks[("encode", "hybrid_fp32_vs_reference")] == "met"
    assert marks[("encode", "bica_vs_concat")] == "missed"
    assert marks[("encode", "bf16_cosine_to_fp32")] == "not measured"
    assert marks[("st_encode", "st / direct throughput")] == "met"
    assert marks[("search", "(no result)")] == "not run"
    table = summary_table(rows)
    assert "| encode | bica_vs_concat | 0.93 | >= 0.95 | missed |" in table


def test_every_attention_runs_through_sdpa(tiny_checkpoint, monkeypatch):
    """The loaded text encoder uses transformers' SDPA attention; Bi-CA, the text layers and the vision tower all
    call F.scaled_dot_product_attention (the CPU flash kernel; no eager attention materialising masks)."""
    model, processor = load_for_inference(tiny_checkpoint, "fp32")
    assert model.text_model.config._attn_implementation == "sdpa"
    assert model.vision_model.config._attn_implementation == "sdpa"
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    batch = processor.process_items([{"text": "a red circle", "image": make_image(0)}])
    with torch.inference_mode():
        model(**batch)
    config = model.config
    expected = (config.text_config.num_hidden_layers + config.vision_config.num_hidden_layers
                + 2 * config.bica_layers)
    assert len(calls) == expected, calls


def test_a_oneDNN_op_that_computes_something_else_is_not_used(monkeypatch):
    """The fused linear is torch-internal: a torch whose op raises or disagrees with F.linear gets plain kernels."""
    if not ONEDNN:
        pytest.skip("torch was built without oneDNN")
    assert encoding.onednn_kernels_work("fp32") and encoding.onednn_kernels_work("bf16")
    real = encoding._ONEDNN_LINEAR

    class WithoutBias:  # an op of another torch: the same name, the bias ignored
        binary = real.binary

        def __call__(self, states, weight, bias, *args):
            return real(states, weight, None, *args)

    class Raising:
        def __call__(self, *args):
            raise RuntimeError("_linear_pointwise() takes 5 arguments")

    for replacement in (WithoutBias(), Raising()):
        monkeypatch.setattr(encoding, "_ONEDNN_LINEAR", replacement)
        encoding.fast_kernels_pay.cache_clear()
        try:
            assert not encoding.onednn_kernels_work("bf16")
            assert not encoding.fast_kernels_pay("bf16")
            model = _eva_model("concat")
            classes = _classes(model)
            use_fast_kernels(model, "bf16")
            assert _classes(model) == classes  # nothing swapped
        finally:
            encoding.fast_kernels_pay.cache_clear()


def test_cli_evaluate_num_workers_gives_the_same_results(tiny_checkpoint, tmp_path, capsys):
    from dataset_builders.evaluation import build_evaluation_sets
    from unica.apps.evaluate import evaluate_checkpoint

    eval_set = tmp_path / "eval"
    build_evaluation_sets(Path(__file__).parent / "fixtures" / "scenes", eval_set, dataset="scenes", tasks=(2,))
    assert cli(["evaluate", str(tiny_checkpoint), "--dataset", str(eval_set), "--out", str(tmp_path / "o"),
                "--dtype", "fp32", "--num-workers", "2", "--batch-size", "4", "--no-cache"]) == 0
    written = json.loads((tmp_path / "o" / "results.json").read_text())
    direct = evaluate_checkpoint(tiny_checkpoint, eval_set, batch_size=4, show_progress=False)
    assert written["tasks"] == direct["tasks"] and written["tasks"]["task2"]["hit@1"] > 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "c", "--dataset", "d", "--out", "o", "--num-workers", "-1"])
    assert "--num-workers: expected an integer >= 0, got -1" in capsys.readouterr().err
