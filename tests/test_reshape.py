import pytest
import torch
import torch.nn.functional as F

from lightning_embeddings.capture import LayerCapture
from lightning_embeddings.layers import resolve_layers
from lightning_embeddings.reshape import resolve_strategy


def _tlc_avg_pool(t, n):
    """3LC's avg_pool_N_N: adaptive average pooling, then flatten per sample."""
    return F.adaptive_avg_pool2d(t, (n, n)).flatten(1)


def _tlc_mean(t):
    """3LC's mean: average over dims 2..n-1."""
    return t.mean(dim=tuple(range(2, t.ndim)))


@pytest.fixture
def conv_map():
    return torch.randn(5, 7, 9, 11, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 12])
def test_avg_pool_equals_3lc(conv_map, n):
    out = resolve_strategy(f"avg_pool_{n}_{n}")(conv_map)
    assert out.shape == (5, 7 * n * n)
    torch.testing.assert_close(out, _tlc_avg_pool(conv_map, n), rtol=0, atol=0)


def test_avg_pool_is_channel_major_and_works_channels_last(conv_map):
    channels_last = conv_map.contiguous(memory_format=torch.channels_last)
    out = resolve_strategy("avg_pool_2_2")(channels_last)
    torch.testing.assert_close(out, _tlc_avg_pool(conv_map, 2))
    # channel-major: the first 4 values are channel 0's 2x2 grid
    torch.testing.assert_close(out[:, :4], F.adaptive_avg_pool2d(conv_map[:, :1], (2, 2)).flatten(1))


def test_mean_and_flatten_equal_3lc(conv_map):
    torch.testing.assert_close(resolve_strategy("mean")(conv_map), _tlc_mean(conv_map), rtol=0, atol=0)
    torch.testing.assert_close(resolve_strategy("flatten")(conv_map), conv_map.reshape(5, -1), rtol=0, atol=0)
    flat = torch.randn(4, 6)
    assert torch.equal(resolve_strategy("mean")(flat), flat)


def test_token_strategies_respect_padding():
    t = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = resolve_strategy("token_mean")(t, mask)
    torch.testing.assert_close(out[0], t[0].mean(0))
    torch.testing.assert_close(out[1], t[1, :2].mean(0))
    torch.testing.assert_close(resolve_strategy("token_mean")(t), t.mean(1))
    assert torch.equal(resolve_strategy("cls")(t), t[:, 0])


@pytest.mark.parametrize("shape, suggestion", [((4, 16), "flatten or mean"), ((4, 5, 16), "token_mean or cls")])
def test_avg_pool_on_non_map_names_shape_and_a_fitting_strategy(shape, suggestion):
    with pytest.raises(ValueError, match=rf"avg_pool_2_2.*shape \({shape[0]}, .*{suggestion}"):
        resolve_strategy("avg_pool_2_2")(torch.randn(*shape))


@pytest.mark.parametrize("spec", ["avg_pool", "avgpool_2_2", "avg_pool_0_0", "avg_pool_2_3", "max", "meen"])
def test_unknown_strategy_lists_the_valid_ones(spec):
    with pytest.raises(ValueError, match=r"mean, token_mean, cls, flatten, avg_pool_N_N|avg_pool_N_N takes one size"):
        resolve_strategy(spec)


def test_callable_and_import_paths():
    def first_two(t):
        return t.flatten(1)[:, :2]

    t = torch.randn(3, 4, 5)
    assert resolve_strategy(first_two)(t).shape == (3, 2)
    for path in ("torch.nn.functional:normalize", "torch.nn.functional.normalize"):
        strategy = resolve_strategy(path)
        assert strategy.name == path
        torch.testing.assert_close(strategy(torch.ones(2, 4)), F.normalize(torch.ones(2, 4)))
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_strategy("not_a_module_xyz:fn")


def test_callable_must_return_2d_and_one_row_per_sample_of_the_batch():
    with pytest.raises(ValueError, match=r"must return a 2-D \(batch, dim\) tensor .* returned \(3, 4, 2\)"):
        resolve_strategy(lambda t: t)(torch.randn(3, 4, 2))
    # rows are counted against the batch by the hook: a callable may move the batch dim first ...
    layer = resolve_layers(torch.nn.Sequential(torch.nn.Identity()), [1])[0]
    capture = LayerCapture(layer, resolve_strategy(lambda t: t.transpose(0, 1).flatten(1)), None)
    capture.start_batch(None, batch_size=3)
    capture.active = True
    layer.module(torch.randn(5, 3, 2))
    assert capture.vectors.shape == (3, 10)
    # ... but not give another number of rows than the batch holds
    capture = LayerCapture(layer, resolve_strategy(lambda t: t.reshape(-1, 2)[:1]), None)
    capture.start_batch(None, batch_size=3)
    capture.active = True
    with pytest.raises(ValueError, match=r"gave 1 rows from an output of shape \(3, 4\) for a batch of 3 samples"):
        layer.module(torch.randn(3, 4))
