"""Tests for unica.losses and unica.distributed: hand-computed values, sentence-transformers parity,
gradcheck, and two real processes (gloo, DDP; plain and GradCache-style cached loss) against one
process on the concatenated batch."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from unica.distributed import gather_with_grad, is_distributed, rank_and_world_size
from unica.losses import (
    InfoNCELoss,
    PositiveSimilarityLoss,
    RetrievalLoss,
    RetrievalLossOutput,
    info_nce,
    positive_similarity_loss,
    retrieval_loss,
)

# A 2-query example small enough to do by hand (every vector has norm 1 once normalised):
#   q1 = (1, 0), q2 = (0, 1); p1 = (0.6, 0.8), p2 = (0, 2) -> (0, 1); n1 = (1, 0), n2 = (0.8, -0.6)
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[0.6, 0.8], [0.0, 2.0]])
N = torch.tensor([[[1.0, 0.0]], [[0.8, -0.6]]])  # (B=2, k=1, D=2)
T = 0.5


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


# cosines of q_i against [p1, p2, n1, n2]: q1 -> [0.6, 0, 1, 0.8], q2 -> [0.8, 1, 0, -0.6]; / T = 0.5
HAND_FORWARD = ((-1.2 + _lse(1.2, 0.0, 2.0, 1.6)) + (-2.0 + _lse(1.6, 2.0, 0.0, -1.2))) / 2
# cosines of p_i against [q1, q2]: p1 -> [0.6, 0.8], p2 -> [0, 1]
HAND_REVERSE = ((-1.2 + _lse(1.2, 1.6)) + (-2.0 + _lse(0.0, 2.0))) / 2
HAND_PSL_COSINE = ((1 - 0.6) + (1 - 1.0)) / 2  # 0.2
HAND_PSL_HINGE_08 = (max(0.0, 0.8 - 0.6) + max(0.0, 0.8 - 1.0)) / 2  # 0.1


def test_info_nce_hand_computed() -> None:
    assert info_nce(Q, P, N, temperature=T).item() == pytest.approx(HAND_FORWARD, abs=1e-6)
    # the (B, k, D) and (B * k, D) layouts of the negatives give the same loss
    assert info_nce(Q, P, N.reshape(-1, 2), temperature=T).item() == pytest.approx(HAND_FORWARD, abs=1e-6)
    assert info_nce(Q, P, N, temperature=T, symmetric=True).item() == pytest.approx(
        (HAND_FORWARD + HAND_REVERSE) / 2, abs=1e-6
    )
    # in-batch negatives only: q1 -> [1.2, 0], q2 -> [1.6, 2]
    in_batch = ((-1.2 + _lse(1.2, 0.0)) + (-2.0 + _lse(1.6, 2.0))) / 2
    assert info_nce(Q, P, temperature=T).item() == pytest.approx(in_batch, abs=1e-6)
    # identical unit pairs at temperature 1: -log(e / (e + 1))
    assert info_nce(torch.eye(2), torch.eye(2), temperature=1.0).item() == pytest.approx(math.log1p(math.exp(-1)))


def test_psl_and_total_hand_computed() -> None:
    assert positive_similarity_loss(Q, P).item() == pytest.approx(HAND_PSL_COSINE, abs=1e-6)
    assert positive_similarity_loss(Q, P, variant="hinge", margin=0.8).item() == pytest.approx(
        HAND_PSL_HINGE_08, abs=1e-6
    )
    # margin 1 makes the hinge equal to the cosine variant
    assert positive_similarity_loss(Q, P, variant="hinge", margin=1.0).item() == pytest.approx(HAND_PSL_COSINE)

    out = retrieval_loss(Q, P, N, temperature=T, psl_weight=0.5)
    assert isinstance(out, RetrievalLossOutput)
    assert out.info_nce.item() == pytest.approx(HAND_FORWARD, abs=1e-6)
    assert out.psl.item() == pytest.approx(HAND_PSL_COSINE, abs=1e-6)
    assert out.loss.item() == pytest.approx(HAND_FORWARD + 0.5 * HAND_PSL_COSINE, abs=1e-6)
    assert out.as_dict() == pytest.approx(
        {"loss": HAND_FORWARD + 0.1, "info_nce": HAND_FORWARD, "psl": 0.2, "temperature": T}, abs=1e-6
    )

    # psl_weight=0 is the "PSL off" ablation: the total is InfoNCE alone, PSL is still reported
    off = retrieval_loss(Q, P, N, temperature=T, psl_weight=0.0, psl_variant="hinge")
    assert off.loss.item() == pytest.approx(HAND_FORWARD, abs=1e-6)
    assert off.psl.item() == pytest.approx(HAND_PSL_HINGE_08, abs=1e-6)


def _numpy_info_nce(q: np.ndarray, p: np.ndarray, n: np.ndarray, temperature: float) -> float:
    """Explicit per-query formula: -s(q_i, p_i) + log sum_c exp(s(q_i, c)), s = cos / temperature."""
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q, candidates = unit(q), unit(np.concatenate([p, n.reshape(-1, n.shape[-1])]))
    losses = []
    for i in range(len(q)):
        scores = [float(q[i] @ c) / temperature for c in candidates]
        losses.append(-scores[i] + math.log(sum(math.exp(s) for s in scores)))
    return float(np.mean(losses))


def test_info_nce_matches_numpy_on_random_embeddings() -> None:
    rng = np.random.default_rng(0)
    q, p, n = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)), rng.normal(size=(5, 3, 7))
    ours = info_nce(*(torch.from_numpy(x) for x in (q, p, n)), temperature=0.07).item()
    assert ours == pytest.approx(_numpy_info_nce(q, p, n, 0.07), abs=1e-10)


def test_info_nce_equals_sentence_transformers_mnrl() -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize

    # A real SentenceTransformer whose only module normalises precomputed embeddings, so its loss's
    # full forward (features -> model -> loss) runs on our embeddings.
    model = SentenceTransformer(modules=[Normalize()], device="cpu")
    torch.manual_seed(0)
    q, p, n = torch.randn(6, 16), torch.randn(6, 16), torch.randn(6, 2, 16)
    columns = [q, p, n[:, 0], n[:, 1]]  # ST's (anchor, positive, negative_1, negative_2) columns

    for symmetric in (False, True):
        directions = ("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",)
        st_loss = MultipleNegativesRankingLoss(model, scale=20.0, directions=directions, partition_mode="per_direction")
        leaves = [c.clone().requires_grad_() for c in columns]
        expected = st_loss([{"sentence_embedding": leaf} for leaf in leaves], labels=None)
        expected.backward()

        ours_q, ours_p, ours_n = (x.clone().requires_grad_() for x in (q, p, n))
        ours = info_nce(ours_q, ours_p, ours_n, temperature=1 / 20.0, symmetric=symmetric)
        ours.backward()
        assert ours.item() == pytest.approx(expected.item(), abs=1e-6)
        torch.testing.assert_close(ours_q.grad, leaves[0].grad)
        torch.testing.assert_close(ours_p.grad, leaves[1].grad)
        torch.testing.assert_close(ours_n.grad[:, 1], leaves[3].grad)


def test_gradcheck() -> None:
    torch.manual_seed(0)
    q, p, n = (torch.randn(*shape, dtype=torch.double) for shape in ((2, 3), (2, 3), (2, 2, 3)))
    temperature = torch.tensor(0.3, dtype=torch.double)
    inputs = tuple(x.requires_grad_() for x in (q, p, n, temperature))
    # the full Jacobian once, on the symmetric loss with hard negatives and a tensor temperature
    assert torch.autograd.gradcheck(lambda *x: info_nce(*x[:3], temperature=x[3], symmetric=True), inputs)
    # random-projection checks (fast_mode) for the rest
    assert torch.autograd.gradcheck(lambda *x: info_nce(*x[:3], temperature=x[3]), inputs, fast_mode=True)
    for variant in ("cosine", "hinge"):
        psl = lambda a, b, v=variant: positive_similarity_loss(a, b, variant=v, margin=0.9)  # noqa: E731
        assert torch.autograd.gradcheck(psl, inputs[:2], fast_mode=True)
    total = lambda *x: retrieval_loss(*x[:3], temperature=x[3], psl_weight=0.3, symmetric=True).loss  # noqa: E731
    assert torch.autograd.gradcheck(total, inputs, fast_mode=True)


def test_learnable_temperature() -> None:
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 5, dtype=torch.double), torch.randn(4, 5, dtype=torch.double), torch.randn(4, 2, 5)
    n = n.double()
    module = InfoNCELoss(temperature=0.1, learnable_temperature=True).double()
    assert module.log_scale.item() == pytest.approx(math.log(10.0))
    loss = module(q, p, n)
    # log_scale is a float32 parameter: log(10) is stored to ~1e-7
    assert loss.item() == pytest.approx(info_nce(q, p, n, temperature=0.1).item(), rel=1e-6)
    loss.backward()
    # d loss / d log_scale = scale * mean_i(sum_c softmax_ic * cos_ic - cos_i,label_i), with scale = 10
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    cos = (unit(q) @ unit(torch.cat([p, n.reshape(-1, 5)])).T).numpy()
    softmax = np.exp(10 * cos) / np.exp(10 * cos).sum(axis=1, keepdims=True)
    expected = 10 * np.mean((softmax * cos).sum(axis=1) - cos[np.arange(4), np.arange(4)])
    assert module.log_scale.grad.item() == pytest.approx(expected, rel=1e-5)

    # the module wrapper reports the learnable temperature and routes its gradient
    total = RetrievalLoss(temperature=0.1, learnable_temperature=True, psl_weight=0.2)
    out = total(q.float(), p.float(), n.float())
    assert out.temperature.item() == pytest.approx(0.1)
    out.loss.backward()
    assert total.info_nce.log_scale.grad is not None
    # a fixed temperature has no parameter
    assert list(RetrievalLoss(temperature=0.1).parameters()) == []


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: info_nce(Q, P, temperature=0.0), "temperature"),
        (lambda: info_nce(Q, P, temperature=-0.05), "temperature"),
        (lambda: info_nce(Q, P, temperature=float("nan")), "temperature"),
        (lambda: retrieval_loss(Q, P, temperature=0.0), "temperature"),
        (lambda: retrieval_loss(Q, P, psl_weight=-0.1), "psl_weight"),
        (lambda: RetrievalLoss(psl_weight=-1.0), "psl_weight"),
        (lambda: RetrievalLoss(temperature=0.0), "temperature"),
        (lambda: InfoNCELoss(temperature=0.001, learnable_temperature=True), "temperature"),
        (lambda: positive_similarity_loss(Q, P, variant="l2"), "variant"),
        (lambda: positive_similarity_loss(Q, P, variant="hinge", margin=2.0), "margin"),
        (lambda: PositiveSimilarityLoss("hinge", margin=-3.0), "margin"),
        (lambda: info_nce(Q, P[:1]), "positives"),
        (lambda: info_nce(Q, P, torch.randn(3, 1, 2)), "negatives"),
        (lambda: info_nce(Q, P, torch.randn(4, 3)), "negatives"),
    ],
)
def test_bad_arguments_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


def test_single_process_gather_is_identity() -> None:
    assert not is_distributed()
    assert rank_and_world_size() == (0, 1)
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x
    gathered = info_nce(Q, P, N, temperature=T, symmetric=True, gather_across_processes=True)
    assert gathered.item() == pytest.approx((HAND_FORWARD + HAND_REVERSE) / 2, abs=1e-6)


# --- two processes ---------------------------------------------------------------------------------

WORLD, LOCAL_B, K, DIM = 2, 3, 2, 8
LOSS_KWARGS = dict(temperature=0.1, psl_weight=0.3, symmetric=True)


def _global_batch() -> tuple[torch.nn.Linear, list[torch.Tensor]]:
    """An encoder and global (query, positive, negative) inputs, identical in every process."""
    torch.manual_seed(1234)
    encoder = torch.nn.Linear(DIM, DIM)
    inputs = [
        torch.randn(WORLD * LOCAL_B, DIM),
        torch.randn(WORLD * LOCAL_B, DIM),
        torch.randn(WORLD * LOCAL_B, K, DIM),
    ]
    return encoder, inputs


def _ddp_losses(rank: int) -> dict:
    """One process's share: plain and cached loss under DDP with gathered negatives."""
    from torch.nn.parallel import DistributedDataParallel

    from unica.grad_cache import cached_retrieval_loss

    encoder, inputs = _global_batch()
    model = DistributedDataParallel(encoder)
    local = [x[rank * LOCAL_B : (rank + 1) * LOCAL_B].clone().requires_grad_() for x in inputs]
    out = retrieval_loss(*(model(x) for x in local), gather_across_processes=True, **LOSS_KWARGS)
    out.loss.backward()  # DDP averages the parameter gradients over the two processes
    plain = {"loss": out.loss.detach(), "weight_grad": encoder.weight.grad, "input_grads": [x.grad for x in local]}

    # the same through the GradCache-style cached loss, in chunks of 2 (negatives flattened query-major)
    encoder.zero_grad(set_to_none=True)
    groups = [{"x": local[0].detach()}, {"x": local[1].detach()}, {"x": local[2].detach().reshape(-1, DIM)}]
    cached = cached_retrieval_loss(
        lambda batch: model(batch["x"]), *groups, chunk_size=2, model=model, gather_across_processes=True, **LOSS_KWARGS
    )
    cached.loss.backward()
    return {"plain": plain, "cached": {"loss": cached.loss.detach(), "weight_grad": encoder.weight.grad}}


def _two_process_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        # DDP lives inside _ddp_losses: it is freed before the process group is destroyed (else exit can hang)
        torch.save(_ddp_losses(rank), f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path) -> None:
    """DDP over 2 gloo processes with gathered negatives, plain and cached (unica.grad_cache) loss."""
    mp.start_processes(_two_process_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]

    encoder, inputs = _global_batch()
    inputs = [x.clone().requires_grad_() for x in inputs]
    reference = retrieval_loss(*(encoder(x) for x in inputs), **LOSS_KWARGS)
    reference.loss.backward()

    for mode in ("plain", "cached"):
        # the global loss is the mean of the per-process losses (equal local batch sizes)
        mean_loss = sum(results[r][mode]["loss"] for r in range(WORLD)) / WORLD
        assert mean_loss.item() == pytest.approx(reference.loss.item(), abs=1e-6), mode
        for rank in range(WORLD):
            torch.testing.assert_close(
                results[rank][mode]["weight_grad"], encoder.weight.grad, atol=1e-6, rtol=1e-5, msg=mode
            )
    # each process's loss is the mean over its own queries: its input gradients are WORLD times the
    # one-process gradients of the global mean
    for rank in range(WORLD):
        for local_grad, full in zip(results[rank]["plain"]["input_grads"], inputs):
            expected = WORLD * full.grad[rank * LOCAL_B : (rank + 1) * LOCAL_B]
            torch.testing.assert_close(local_grad, expected, atol=1e-6, rtol=1e-5)
    # without gathering the two processes would see different negatives: the check above is not vacuous
    local_only = retrieval_loss(*(encoder(x[:LOCAL_B]) for x in inputs), **LOSS_KWARGS).loss.item()
    assert abs(local_only - results[0]["plain"]["loss"].item()) > 1e-3
