"""`gather_with_grad` across two real processes (gloo, started with `spawn` and a TCP rendezvous, as torchrun does).

The samplers of notebook 05 cut a global batch that does not divide by the number of processes into
unequal shards (5 clips on 2 processes: 3 and 2). Every process must then see exactly the global
batch, compute the same loss as one process holding the whole batch, and get on its own shard
exactly that process's gradient.
"""
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avc_nb.losses import (FaultyPositiveWeights, gather_with_grad, infonce, pair_similarity, positive_mask,
                           soft_target_infonce, weighted_infonce)

GLOBAL_BATCH, DIM = 5, 6
LABELS = torch.tensor([0, -1, 0, 1, -1])  # two unlabelled clips, on different ranks


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(GLOBAL_BATCH, DIM, generator=g), torch.randn(GLOBAL_BATCH, DIM, generator=g)


def _loss(a, v, y, weights):
    "Every in-batch loss of notebook 06 on the (gathered) batch, summed."
    mask = positive_mask(y) | torch.eye(len(y), dtype=torch.bool)
    return (infonce(a, v) + infonce(a, v, pos_mask=mask) + infonce(a, v, pos_mask=mask, multi_positive='supcon')
            + weighted_infonce(a, v, weights=weights, pos_mask=mask, multi_positive='supcon')
            + soft_target_infonce(a, v, mode='cycle', weights=weights))


def _worker(rank, world, port, out):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        A, V = _batch()
        shard = torch.tensor_split(torch.arange(GLOBAL_BATCH), world)[rank]     # what the samplers hand this rank
        a, v = A[shard].clone().requires_grad_(), V[shard].clone().requires_grad_()
        ga, gv = gather_with_grad(a), gather_with_grad(v)
        gy, gidx = gather_with_grad(LABELS[shard]), gather_with_grad(shard)  # integers, as the training loop gathers them
        weights = FaultyPositiveWeights()(pair_similarity(ga.detach(), gv.detach()))
        loss = _loss(ga, gv, gy, weights)
        loss.backward()
        grid = gather_with_grad(torch.arange(len(shard) * 6, dtype=torch.float64).view(len(shard), 2, 3) + 100 * rank)
        torch.save({'n': len(shard), 'loss': loss.detach(), 'ga': a.grad, 'gv': v.grad, 'A': ga.detach(), 'V': gv.detach(),
                    'y': gy, 'idx': gidx, 'grid': grid}, os.path.join(out, f'{rank}.pt'))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run(world, out, deadline_s=120):
    ctx = mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=False, start_method='spawn')
    t0 = time.monotonic()
    while not ctx.join(timeout=1):
        if time.monotonic() - t0 > deadline_s:
            for p in ctx.processes: p.kill()
            raise TimeoutError(f"gather workers did not finish within {deadline_s} s")
    return [torch.load(os.path.join(out, f'{r}.pt'), weights_only=True) for r in range(world)]


def test_gather_unequal_shards_matches_one_process(tmp_path):
    res = _run(2, tmp_path)
    assert [r['n'] for r in res] == [3, 2]

    A, V = _batch()
    A.requires_grad_(); V.requires_grad_()
    weights = FaultyPositiveWeights()(pair_similarity(A.detach(), V.detach()))
    loss = _loss(A, V, LABELS, weights)
    loss.backward()

    for r in res:   # every rank sees the global batch, in order, and the global loss
        assert torch.equal(r['A'], A.detach()) and torch.equal(r['V'], V.detach())
        assert torch.equal(r['y'], LABELS) and torch.equal(r['idx'], torch.arange(GLOBAL_BATCH))
        torch.testing.assert_close(r['loss'], loss.detach(), rtol=1e-6, atol=1e-6)
        expected_grid = torch.cat([torch.arange(18, dtype=torch.float64).view(3, 2, 3),
                                   torch.arange(12, dtype=torch.float64).view(2, 2, 3) + 100])
        assert torch.equal(r['grid'], expected_grid)
    # each rank's gradient is the single-process gradient of its own shard
    torch.testing.assert_close(torch.cat([r['ga'] for r in res]), A.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([r['gv'] for r in res]), V.grad, rtol=1e-6, atol=1e-6)
    assert A.grad.abs().sum() > 0


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 4, requires_grad=True)
    assert not dist.is_initialized()
    assert gather_with_grad(x) is x
