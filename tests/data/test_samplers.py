import torch

from kubedistill.data.datasets import ImageDataset
from kubedistill.data.samplers import ShardedEpochSampler, sample_seed


def _keys(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_ranks_get_disjoint_equal_shards_of_the_same_permutation():
    ranks = [ShardedEpochSampler(10, rank=r, world_size=3, seed=5) for r in range(3)]
    shards = [[i for _, i in _keys(s, epoch=2)] for s in ranks]
    assert [len(s) for s in shards] == [3, 3, 3]  # the 10th item is dropped so every rank runs the same steps
    assert len(set().union(*shards)) == 9
    order = ranks[0].order(2)
    assert shards[1] == order[:9][1::3]
    assert all(e == 2 for e, _ in _keys(ranks[0], epoch=2))


def test_epochs_reshuffle_and_a_seed_fixes_the_order():
    a, b = ShardedEpochSampler(50, seed=1), ShardedEpochSampler(50, seed=1)
    assert _keys(a, 0) == _keys(b, 0)
    assert [i for _, i in _keys(a, 0)] != [i for _, i in _keys(a, 1)]
    assert [i for _, i in _keys(ShardedEpochSampler(50, seed=2), 0)] != [i for _, i in _keys(a, 0)]


def test_start_skips_items_already_used():
    sampler = ShardedEpochSampler(20, rank=1, world_size=2, seed=0)
    full = _keys(sampler, 3)
    assert _keys(sampler, 3, start=4) == full[4:]
    assert len(sampler) == 10  # the epoch's length does not change with start


def test_sample_seeds_are_distinct():
    seeds = {sample_seed(0, e, i) for e in range(5) for i in range(1000)}
    assert len(seeds) == 5000


def _random_transform(image):
    return image.float().mean() + torch.rand(1)  # draws from the global RNG like the real augmentations


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    from PIL import Image

    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(path)
        paths.append(str(path))
    dataset = ImageDataset(paths, _random_transform, seed=7)
    first = dataset[(1, 2)]["image"]
    torch.rand(100)  # whatever happened before does not matter
    assert torch.equal(dataset[(1, 2)]["image"], first)
    assert not torch.equal(dataset[(2, 2)]["image"], first)
    assert not torch.equal(ImageDataset(paths, _random_transform, seed=8)[(1, 2)]["image"], first)
    # The global RNG is left as it was.
    state = torch.get_rng_state()
    dataset[(0, 0)]
    assert torch.equal(torch.get_rng_state(), state)
