import pytest
import torch

from torch_utils import distributed, misc


def test_stacked_generator_matches_per_seed_generators():
    seeds = [0, 7, 2**32 + 5]
    rnd = misc.StackedRandomGenerator('cpu', seeds)
    latents = rnd.randn([3, 2, 4, 4])
    labels = rnd.randint(10, size=[3])
    noise = rnd.randn_like(torch.zeros([3, 2, 4, 4], dtype=torch.float64))
    for i, seed in enumerate(seeds):
        g = torch.Generator('cpu').manual_seed(seed % 2**32)
        assert torch.equal(latents[i], torch.randn([2, 4, 4], generator=g))
        assert labels[i].item() == torch.randint(10, size=[], generator=g).item()
        assert torch.equal(noise[i], torch.randn([2, 4, 4], generator=g, dtype=torch.float64))
    assert noise.dtype == torch.float64


def test_stacked_generator_independent_of_batching():
    full = misc.StackedRandomGenerator('cpu', [3, 4, 5, 6]).randn([4, 3, 8, 8])
    parts = [misc.StackedRandomGenerator('cpu', s).randn([len(s), 3, 8, 8]) for s in ([3, 4, 5], [6])]
    assert torch.equal(full, torch.cat(parts))


@pytest.mark.parametrize('n,batch,world', [(10, 3, 1), (10, 3, 2), (1000, 64, 3), (5, 64, 4)])
def test_rank_batches_cover_every_item_once(n, batch, world):
    seen = []
    counts = set()
    for rank in range(world):
        batches = distributed.rank_batches(n, batch, rank=rank, world_size=world)
        counts.add(len(batches))
        assert all(len(b) <= batch for b in batches)
        seen += [i for b in batches for i in b.tolist()]
    assert sorted(seen) == list(range(n))
    assert len(counts) == 1  # Every rank runs the same number of iterations (barriers stay matched).


def test_copy_params_and_buffers():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    misc.copy_params_and_buffers(a, b, require_all=True)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    with pytest.raises(ValueError, match='shape'):
        misc.copy_params_and_buffers(torch.nn.Linear(4, 2), b)


def test_constant_matches_edm_semantics():
    c = misc.constant([1, 2], shape=[3, 2])
    assert c.dtype == torch.get_default_dtype() and c.shape == (3, 2) and c.is_contiguous()
    assert c.tolist() == [[1.0, 2.0]] * 3
    assert misc.constant(0.5, dtype=torch.float64).dtype == torch.float64
