"""Batched encoding of items (texts, images, image + text dicts) with a UniCA model.

:func:`encode_items` is the one batched encode loop; :class:`UniCAEncoder` puts it behind the evaluation
harness's encoder protocol (``eval.harness.Encoder``: ``encode(items, batch_size, show_progress, desc)``
and ``fingerprint``), and ``unica.mteb_encoder`` behind MTEB's.

The fast path (``benchmarks/encode.py`` measures it):

* dtype: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:func:`resolve_dtype`: bf16 where the CPU computes bf16 natively,
  :func:`native_bf16`, or on a CUDA device that supports it; fp32 elsewhere). bf16 weights are cast once
  (:func:`cast_for_inference`, :func:`load_for_inference`; :func:`encode_items` casts a float32 model for the
  call and restores it), never re-cast by autocast at every call; LayerNorm weights stay float32 (their
  statistics are computed in float32 either way) and pooling and the L2 normalisation run in float32.
* kernels: :func:`use_fast_kernels` routes the linear layers through oneDNN with the bias, GELU / SiLU, products
  and residual sums fused, where that pays (:func:`fast_kernels_pay`); attention is SDPA throughout.
* no padding waste: the items are batched by kind (text-only, with an image: no batch mixes the two paths) and
  sorted by text length within each, so a batch holds texts of similar lengths; rows come back in the items' order.
* ``torch.inference_mode()``; ``num_workers`` > 0 loads and preprocesses the next batches (image decoding,
  resizing, tokenising) in DataLoader worker processes while the model runs (the same embeddings).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from modeling_unica import UniCAModel, UniCAProcessor
from unica.st import read_prompts

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# What --dtype takes: a compute dtype, or "auto" (resolve_dtype).
DTYPE_CHOICES = ("auto", *DTYPES)
# CPU flags of a native bf16 dot product (AVX-512 BF16, AMX): bf16 matrix products run at several times float32's rate.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags_have_native_bf16(cpuinfo: str) -> bool:
    """Whether a ``/proc/cpuinfo`` text lists a native bf16 dot product (:data:`NATIVE_BF16_FLAGS`)."""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return bool(set(line.split(":", 1)[1].split()) & set(NATIVE_BF16_FLAGS))
    return False


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX; ``/proc/cpuinfo`` flags, else torch's CPU
    capability): only there does bf16 pay on a CPU (elsewhere it is emulated, slower than float32)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return cpu_flags_have_native_bf16(handle.read())
    except OSError:
        return "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()


def resolve_dtype(dtype: str, device: torch.device | str = "cpu") -> str:
    """``"fp32"`` / ``"bf16"`` as given; ``"auto"``: bf16 on a CPU with native bf16 (:func:`native_bf16`) or a CUDA
    device that supports it, fp32 elsewhere."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {list(DTYPE_CHOICES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and native_bf16() else "fp32"


def dtype_reason(requested: str, device: torch.device | str = "cpu") -> str:
    """A log line's account of :func:`resolve_dtype`: e.g. ``"bf16 (auto: this CPU computes bf16 natively)"``."""
    resolved = resolve_dtype(requested, device)
    if requested != "auto":
        return f"{resolved} (as asked)"
    if torch.device(device).type == "cuda":
        return f"{resolved} (auto: {'a' if resolved == 'bf16' else 'no'} bf16-capable CUDA device)"
    why = "this CPU computes bf16 natively" if resolved == "bf16" else "this CPU has no native bf16 (emulated: slower)"
    return f"{resolved} (auto: {why})"


def weights_dtype(model: torch.nn.Module) -> str | None:
    """``"fp32"`` / ``"bf16"``: the dtype of the model's matrix weights (its Linear layers), None for another."""
    weight = next((module.weight for module in model.modules() if isinstance(module, torch.nn.Linear)), None)
    if weight is None:
        weight = next(model.parameters(), None)
    return None if weight is None else _DTYPE_NAMES.get(weight.dtype)


def cast_for_inference(model: UniCAModel, dtype: str, fast_kernels: bool = True) -> UniCAModel:
    """Cast ``model``'s weights to ``dtype`` once, in place, for inference (eval mode); returns it.

    bf16: every weight but the LayerNorms' (kept float32: the CPU and CUDA kernels take bf16 activations with
    float32 weights and compute the statistics in float32 either way); the model pools and normalises in float32.
    fp32: every weight back to float32 (a bf16 model's weights stay rounded). ``fast_kernels``: also route the
    model's linear layers through :func:`use_fast_kernels` where that pays (CPU).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model.to(DTYPES[dtype])
    if dtype == "bf16":
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.float()
    if fast_kernels:
        use_fast_kernels(model, dtype)
    return model.eval()


# ---------------------------------------------------------------------- fast CPU kernels for inference
# oneDNN's linear with the bias (and an activation, a product or a residual sum) fused into the matrix product: for
# bf16 torch's own F.linear adds the bias in a separate pass; for float32 it calls MKL, whose code path on non-Intel
# CPUs is AVX2 (on an AVX-512 AMD CPU, oneDNN's float32 GEMM runs about twice as fast; benchmarks/encode.py).
_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
# transformers' BERT-family blocks whose forward is LayerNorm(dropout(dense(x)) + residual).
_RESIDUAL_OUTPUTS = {f"{prefix}{kind}" for prefix in ("Bert", "Roberta", "XLMRoberta", "Electra")
                     for kind in ("SelfOutput", "Output")}


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def onednn_kernels_work(dtype: str) -> bool:
    """Whether oneDNN's fused linear computes, in ``dtype``, what :func:`use_fast_kernels` relies on: each call form
    it uses, once on small tensors, against ``F.linear`` and the activation, product or sum it fuses.

    The op is torch-internal (``torch.ops.mkldnn._linear_pointwise``): a torch whose op is missing, raises, or
    computes something else gets the plain kernels, never wrong embeddings."""
    if _ONEDNN_LINEAR is None:
        return False
    torch_dtype = DTYPES[dtype]
    generator = torch.Generator().manual_seed(0)
    states, weight, bias, other = (torch.randn(*shape, generator=generator).to(torch_dtype)
                                   for shape in ((2, 3, 32), (24, 32), (24,), (2, 3, 24)))
    plain = F.linear(states, weight, bias)
    try:
        with torch.no_grad():
            pairs = [
                (_ONEDNN_LINEAR(states, weight, bias, "none", [], ""), plain),
                (_ONEDNN_LINEAR(states, weight, None, "none", [], ""), F.linear(states, weight)),
                (_ONEDNN_LINEAR(states, weight, bias, "gelu", [], "none"), F.gelu(plain)),
                (_ONEDNN_LINEAR(states, weight, bias, "swish", [], ""), F.silu(plain)),
                (_ONEDNN_LINEAR.binary(states, other, weight, bias, "add"), plain + other),
                (_ONEDNN_LINEAR.binary(states, other, weight, bias, "mul"), plain * other),
            ]
    except Exception as error:  # noqa: BLE001 - any failure of a private op means: do not use it
        logger.debug("oneDNN's fused linear is not usable here (%s: %s): plain kernels", type(error).__name__, error)
        return False
    tolerance = 1e-4 if dtype == "fp32" else 6e-2
    works = all(isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype
                and torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance)
                for got, expected in pairs)
    if not works:
        logger.debug("oneDNN's fused linear disagrees with F.linear in %s here: plain kernels", dtype)
    return works


@functools.cache
def fast_kernels_pay(dtype: str) -> bool:
    """Whether :func:`use_fast_kernels` routes ``dtype`` linear layers through oneDNN on this machine: bf16 wherever
    oneDNN is available (torch's bf16 matrix products are oneDNN's already; the bias, activation and residual are
    fused); float32 on AVX-512 CPUs whose MKL code path is not Intel's (AMD: MKL runs AVX2 kernels there). In both
    cases only if the op passes :func:`onednn_kernels_work`."""
    if _ONEDNN_LINEAR is None or not torch.backends.mkldnn.is_available():
        return False
    if dtype == "fp32":
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
        if "AVX512" not in capability or _cpu_vendor() in ("GenuineIntel", ""):
            return False
    elif dtype != "bf16":
        return False
    return onednn_kernels_work(dtype)


def _fast(states: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a call may take the fused oneDNN kernel: CPU tensors of the weight's dtype, no autograd graph to
    record, no autocast to honour."""
    return (states.device.type == "cpu" and states.dtype == weight.dtype and weight.device.type == "cpu"
            and not (torch.is_grad_enabled() and (weight.requires_grad or states.requires_grad))
            and not torch.is_autocast_enabled("cpu"))


class _FastLinear(torch.nn.Linear):
    """``nn.Linear`` through oneDNN (bias fused) at inference; ``F.linear`` otherwise."""

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if _fast(states, self.weight):
            return _ONEDNN_LINEAR(states, self.weight, self.bias, "none", [], "")
        return F.linear(states, self.weight, self.bias)


class _FastGELULinear(torch.nn.Linear):
    """``gelu(nn.Linear(x))`` (exact GELU) through oneDNN (bias and GELU fused) at inference."""

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if _fast(states, self.weight):
            return _ONEDNN_LINEAR(states, self.weight, self.bias, "gelu", [], "none")
        return F.gelu(F.linear(states, self.weight, self.bias))


class _Identity(torch.nn.Module):
    """Stands for an activation fused into the linear layer before it."""

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return states


def _fast_residual_forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    """A BERT-family ``*Output`` block, ``LayerNorm(dropout(dense(x)) + residual)``, with the sum fused."""
    if not self.training and _fast(hidden_states, self.dense.weight) and input_tensor.dtype == hidden_states.dtype:
        summed = _ONEDNN_LINEAR.binary(hidden_states, input_tensor.contiguous(), self.dense.weight, self.dense.bias,
                                       "add")
        return self.LayerNorm(summed)
    return type(self).__mro__[1].forward(self, hidden_states, input_tensor)


def _fast_swiglu_forward(self, states: torch.Tensor) -> torch.Tensor:
    """EVA-CLIP's SwiGLU, ``w3(LN(silu(w1 x) * w2 x))``, with the SiLU and the product fused."""
    if _fast(states, self.w1.weight):
        gate = _ONEDNN_LINEAR(states, self.w1.weight, self.w1.bias, "swish", [], "")
        return self.w3(self.ffn_ln(_ONEDNN_LINEAR.binary(states, gate, self.w2.weight, self.w2.bias, "mul")))
    return type(self).__mro__[1].forward(self, states)


def _fast_qkv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EVA-CLIP's query / key / value projections with their biases fused."""
    if _fast(states, self.q_proj.weight):
        return (_ONEDNN_LINEAR(states, self.q_proj.weight, self.q_bias, "none", [], ""),
                _ONEDNN_LINEAR(states, self.k_proj.weight, None, "none", [], ""),
                _ONEDNN_LINEAR(states, self.v_proj.weight, self.v_bias, "none", [], ""))
    return type(self).__mro__[1]._project(self, states)


def _fast_feed_forward(self, states: torch.Tensor) -> torch.Tensor:
    """UniCA's Bi-CA feed-forward, ``fc2(dropout(gelu(fc1 x)))``, with the GELU fused (eval: no dropout)."""
    if not self.training and _fast(states, self.fc1.weight):
        return self.fc2(_ONEDNN_LINEAR(states, self.fc1.weight, self.fc1.bias, "gelu", [], "none"))
    return type(self).__mro__[1].forward(self, states)


@functools.cache
def _fast_class(base: type, methods: tuple[tuple[str, Any], ...]) -> type:
    """A subclass of ``base`` (the module's own class: remote code included) with ``methods`` replaced."""
    return type(f"Fast{base.__name__}", (base,), {"__module__": __name__, **dict(methods)})


def use_fast_kernels(model: torch.nn.Module, dtype: str) -> Callable[[], None]:
    """Route ``model``'s linear layers through oneDNN with fused biases, activations and residual sums, where that
    pays on this machine (:func:`fast_kernels_pay`; nothing changes elsewhere); returns a function that undoes it.

    In place, for inference: each module keeps its weights and its state-dict keys (its class becomes a subclass
    of its own), and falls back to its original computation where autograd records, autocast is on or the tensors
    are not on the CPU. Fused: every ``nn.Linear``'s bias; the exact GELU after the text encoder's intermediate
    layer and Bi-CA's first feed-forward layer; BERT-family ``*Output`` blocks' residual sums; EVA-CLIP's SwiGLU
    (SiLU and product) and query / key / value biases. The embeddings equal the unfused model's to float rounding
    (tests/test_fast_path.py).
    """
    changes: list[tuple[torch.nn.Module, str, Any]] = []  # (module, attribute, value before)
    if not fast_kernels_pay(dtype):
        return lambda: None

    def swap(module: torch.nn.Module, cls: type) -> None:
        changes.append((module, "__class__", type(module)))
        module.__class__ = cls

    for module in list(model.modules()):
        base = type(module)
        methods = ()
        if base.__name__ in _RESIDUAL_OUTPUTS and isinstance(getattr(module, "dense", None), torch.nn.Linear) \
                and isinstance(getattr(module, "LayerNorm", None), torch.nn.LayerNorm):
            methods = (("forward", _fast_residual_forward),)
        elif base.__name__ == "EvaClipSwiGLU":
            methods = (("forward", _fast_swiglu_forward),)
        elif base.__name__ == "EvaClipAttention" and hasattr(base, "_project"):
            methods = (("_project", _fast_qkv),)
        elif base.__name__ == "UniCAFeedForward":
            methods = (("forward", _fast_feed_forward),)
        if methods and getattr(base, "__module__", None) != __name__:  # not already a fast class
            swap(module, _fast_class(base, methods))
        activation = getattr(module, "intermediate_act_fn", None)
        dense = getattr(module, "dense", None)
        if type(dense) is torch.nn.Linear and type(activation).__name__ == "GELUActivation" \
                and getattr(activation, "act", None) is F.gelu:
            swap(dense, _FastGELULinear)
            changes.append((module, "intermediate_act_fn", activation))
            module.intermediate_act_fn = _Identity()
    for module in list(model.modules()):
        if type(module) is torch.nn.Linear:
            swap(module, _FastLinear)

    def undo() -> None:
        for module, attribute, value in reversed(changes):
            setattr(module, attribute, value)
        changes.clear()

    return undo


def has_fast_kernels(model: torch.nn.Module) -> bool:
    """Whether :func:`use_fast_kernels` has changed ``model``."""
    return any(type(module).__module__ == __name__ for module in model.modules())


@contextlib.contextmanager
def prepared_for(model: UniCAModel, dtype: str, fast_kernels: bool = True):
    """``model`` ready to compute in ``dtype`` (``"fp32"`` / ``"bf16"``) for the duration: its weights cast
    (:func:`cast_for_inference`) and (``fast_kernels``) :func:`use_fast_kernels` applied where they are not yet, both
    undone on exit (the weights come back bit for bit). So a dtype computes the same whichever way the model was loaded: no
    autocast. A model whose weights are bf16 cannot compute in fp32 (``ValueError``: they were rounded)."""
    held = weights_dtype(model)
    if held == "bf16" and dtype == "fp32":
        raise ValueError("dtype='fp32' but the model's weights are bf16 (rounded); load the model again for fp32 "
                         "(unica.encoding.load_for_inference)")
    restore: list[tuple[Any, str, torch.Tensor]] = []
    if held != dtype:
        for module in model.modules():
            restore += [(parameter, "data", parameter.data) for parameter in module.parameters(recurse=False)]
            restore += [(module._buffers, name, buffer) for name, buffer in module._buffers.items()
                        if buffer is not None and buffer.is_floating_point()]
        with torch.no_grad():
            cast_for_inference(model, dtype, fast_kernels=False)
    undo = (lambda: None) if not fast_kernels or has_fast_kernels(model) else use_fast_kernels(model, dtype)
    try:
        yield model
    finally:
        undo()
        for owner, name, value in restore:
            if isinstance(owner, dict):
                owner[name] = value
            else:
                setattr(owner, name, value)


def load_for_inference(path: str | os.PathLike, dtype: str = "fp32") -> tuple[UniCAModel, UniCAProcessor]:
    """``unica.checkpoint.load_checkpoint`` then :func:`cast_for_inference` (``dtype`` may be ``"auto"``)."""
    from unica.checkpoint import load_checkpoint

    dtype = resolve_dtype(dtype)
    model, processor = load_checkpoint(path)
    return cast_for_inference(model, dtype), processor


def autocast_context(dtype: str, device: torch.device):
    """`torch.autocast` for ``bf16`` on the model's device, a no-op context for ``fp32``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def _batch_plan(items: Sequence[Any], batch_size: int) -> list[np.ndarray]:
    """Batches of positions of ``items``: text-only items first, then those with an image, each kind sorted by text
    length (stable) and batched on its own, so no batch mixes the two paths or pads a short text to a long one."""
    keys = []
    for item in items:
        if isinstance(item, dict):
            text, image = item.get("text"), item.get("image")
        elif isinstance(item, str):
            text, image = item, None
        else:
            text, image = None, item
        keys.append((image is not None, len(text) if isinstance(text, str) else 0))
    order = np.asarray(sorted(range(len(items)), key=keys.__getitem__), dtype=np.int64)
    text_only = sum(1 for with_image, _ in keys if not with_image)
    return [order[start : min(start + batch_size, stop)]
            for begin, stop in ((0, text_only), (text_only, len(items)))
            for start in range(begin, stop, batch_size)]


class _Batches(torch.utils.data.Dataset):
    """Batch ``i`` of the plan, processed: what a DataLoader worker prepares ahead of the model."""

    def __init__(self, processor: UniCAProcessor, items: Sequence[Any], plan: list[np.ndarray], prompt: str | None):
        self.processor, self.items, self.plan, self.prompt = processor, items, plan, prompt

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int):
        return self.processor.process_items([self.items[i] for i in self.plan[index]], prompt=self.prompt)


def _batches(dataset: _Batches, num_workers: int) -> Iterable[Any]:
    if num_workers <= 0 or len(dataset) < 2:
        return (dataset[index] for index in range(len(dataset)))
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                                       collate_fn=_as_is, prefetch_factor=2)


def _as_is(batch: Any) -> Any:
    """The DataLoader's collate function: a processed batch is already a batch."""
    return batch


def encode_items(
    model: UniCAModel,
    processor: UniCAProcessor,
    items: Sequence[Any],
    batch_size: int = 32,
    dtype: str = "fp32",
    show_progress: bool = True,
    desc: str = "encoding",
    prompt: str | None = None,
    num_workers: int = 0,
    fast_kernels: bool = True,
) -> np.ndarray:
    """Embed items (see `UniCAProcessor.process_items` for the kinds) into a float32 array, in the items' order.

    ``prompt`` goes before every item's text (``UniCAProcessor.process_items``), e.g. the checkpoint's
    ``"query"`` prompt (:func:`unica.st.read_prompts`). ``dtype``: ``"fp32"``, ``"bf16"`` or ``"auto"``
    (:func:`resolve_dtype`; a model whose weights are bf16 computes in bf16); the model is made ready for it for
    the call (:func:`prepared_for`: a float32 model's weights cast to bf16 and restored after).
    Items are batched by kind and sorted by text length (see the module docstring); ``num_workers`` DataLoader
    workers load and preprocess batches ahead of the model; ``fast_kernels=False`` leaves the model's own kernels
    (:func:`use_fast_kernels` not applied for the call).

    Example:

    ```python
    >>> emb = encode_items(model, processor, ["a red circle", {"text": "Red Circle", "image": "scene.png"}])
    >>> emb.shape
    (2, 384)
    ```
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(items)
    if not items:
        raise ValueError("nothing to encode: the list of items is empty")
    device = next(model.parameters()).device
    dtype = "bf16" if dtype == "auto" and weights_dtype(model) == "bf16" else resolve_dtype(dtype, device)
    plan = _batch_plan(items, batch_size)
    batches = _batches(_Batches(processor, items, plan, prompt), num_workers)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with prepared_for(model, dtype, fast_kernels), torch.inference_mode():
            for batch in tqdm(batches, total=len(plan), desc=desc, disable=not show_progress, unit="batch"):
                embeddings = model(**batch.to(device)).embeddings
                chunks.append(embeddings.float().cpu().numpy())
    finally:
        model.train(was_training)
    rows = np.empty((len(items), chunks[0].shape[1]), dtype=np.float32)
    rows[np.concatenate(plan)] = np.concatenate(chunks, axis=0)
    return rows


class UniCAEncoder:
    """A UniCA model + processor as an evaluation-harness encoder (the ``eval.harness.Encoder`` protocol).

    Args:
        model, processor: the UniCA model and its processor.
        fingerprint: the model's fingerprint, e.g. ``eval.cache.fingerprint_model_dir`` of its checkpoint
            folder (computed by the caller: this layer does not import ``eval``).
        dtype: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:func:`resolve_dtype`), folded into :attr:`fingerprint` as
            resolved (:attr:`dtype`). For bf16 the model's float32 weights are cast to bf16 once, in place
            (:func:`cast_for_inference`): the encoder owns the model.
        batch_size: the default batch size of :meth:`encode`.
        num_workers: DataLoader workers that load and preprocess batches ahead of the model (:func:`encode_items`;
            the same embeddings with any number).

    ``fingerprint`` (the attribute) covers the model's fingerprint, the dtype the encoder computes in and how
    (bf16 weights), and the prompts, so cached embeddings of another dtype are never reused;
    ``model_fingerprint`` is the one given.

    Example:

    ```python
    >>> from eval.cache import fingerprint_model_dir
    >>> from eval.harness import evaluate
    >>> encoder = UniCAEncoder.from_checkpoint("./unica-mini", fingerprint=fingerprint_model_dir("./unica-mini"))
    >>> encoder.encode(["a red circle", {"text": "Red Circle", "image": "scene.png"}]).shape
    (2, 384)
    >>> evaluate(encoder, "./scenes-eval", tasks=["task2"])["tasks"]["task2"]["hit@5"]
    0.62
    ```
    """

    def __init__(self, model: UniCAModel, processor: UniCAProcessor, fingerprint: str, dtype: str = "fp32",
                 batch_size: int = 32, prompts: dict[str, str] | None = None, num_workers: int = 0):
        if dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {list(DTYPE_CHOICES)}, got {dtype!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"fingerprint must be a non-empty string (the model's), got {fingerprint!r}")
        dtype = resolve_dtype(dtype, next(model.parameters()).device)
        if dtype == "bf16" and weights_dtype(model) != "bf16":
            cast_for_inference(model, "bf16")
        self.model, self.processor = model, processor
        self.model_fingerprint = fingerprint
        self.dtype, self.batch_size, self.num_workers = dtype, batch_size, num_workers
        self.prompts = dict(prompts or {})
        settings = {"encoder": "unica", "model": fingerprint, "dtype": dtype, "prompts": self.prompts}
        if dtype == "bf16":  # bf16 weights (cast once) round differently from autocast over float32 weights
            settings["bf16"] = "weights"
        self.fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, fingerprint: str, dtype: str = "fp32",
                        batch_size: int = 32, num_workers: int = 0) -> UniCAEncoder:
        """Load a checkpoint folder (:func:`load_for_inference`); ``fingerprint`` is the folder's."""
        dtype = resolve_dtype(dtype)  # before the model is loaded (an unknown dtype is an error)
        model, processor = load_for_inference(path, dtype)
        return cls(model, processor, fingerprint, dtype=dtype, batch_size=batch_size, prompts=read_prompts(path),
                   num_workers=num_workers)

    def encode(self, items: Sequence[Any], batch_size: int | None = None, show_progress: bool = False,
               desc: str = "encoding", role: str | None = None) -> np.ndarray:
        """:func:`encode_items` with this encoder's dtype (and batch size unless one is given); ``role``
        (``"query"`` / ``"document"``) puts the prompt of that name (``prompts``) before each text."""
        return encode_items(self.model, self.processor, items, batch_size=batch_size or self.batch_size,
                            dtype=self.dtype, show_progress=show_progress, desc=desc,
                            prompt=self.prompts.get(role) if role else None, num_workers=self.num_workers)


def read_jsonl_items(path: str | os.PathLike) -> list[dict]:
    """Read ``{"text": ..., "image": ...}`` records, one per line; image paths are relative to the file."""
    from dataset_builders.jsonl import iter_json_objects

    path = pathlib.Path(path)
    items = []
    for line_number, record in iter_json_objects(path):
        if not ({"text", "image"} & set(record)):
            raise ValueError(f"{path}:{line_number}: each line must be an object with 'text' and/or 'image'")
        item = {key: record[key] for key in ("text", "image") if record.get(key) not in (None, "")}
        if "image" in item:
            item["image"] = pathlib.Path(path.parent, item["image"])
        items.append(item)
    if not items:
        raise ValueError(f"JSONL file {str(path)!r} holds no records")
    return items


def pair_cli_items(texts: Iterable[str] | None, images: Iterable[str] | None) -> list[Any]:
    """Items from repeated ``--text`` / ``--image`` options: paired when both are given."""
    texts, images = list(texts or []), list(images or [])
    if texts and images:
        if len(texts) != len(images):
            raise ValueError(
                f"got {len(texts)} --text and {len(images)} --image; give equal counts to pair them, or one kind only"
            )
        return [{"text": t, "image": pathlib.Path(i)} for t, i in zip(texts, images)]
    if images:
        return [pathlib.Path(i) for i in images]
    return texts
