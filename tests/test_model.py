"""The MRNet family on tiny configs: shapes, gradients, learning, peer sizes, TorchScript, ONNX."""

import pytest
import torch
from torch import nn

from mrnet_ray.config import MRNetConfig
from mrnet_ray.nn import build_model, count_parameters, model_cost
from mrnet_ray.nn.layers import MultiRouteRes2Block, Res2Conv, TDNNBlock

ARCHS = ("mrnet", "ecapa", "shortchunk")
SCRIPT_WARNING = "ignore:`torch.jit.script` is deprecated:FutureWarning"


def tiny(arch: str = "mrnet", **changes) -> MRNetConfig:
    values = dict(
        arch=arch,
        n_mels=16,
        n_classes=3,
        channels=16,
        res2_scale=4,
        se_channels=8,
        attention_channels=8,
        embedding_dim=8,
    )
    return MRNetConfig(**(values | changes))


def with_running_stats(model: nn.Module, n_mels: int) -> nn.Module:
    """Eval mode after a few train-mode passes, so BatchNorm's running stats are not 0/1."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(3.0 * torch.randn(4, n_mels, 29) + 1.0)
    return model.eval()


@pytest.mark.parametrize(
    ("dilations", "route_depths"),
    [((1,), ((1,),)), ((2, 3), ((1, 2), (3,))), ((2, 3, 5), ((1, 2, 3), (2, 2), (1,)))],
)
@pytest.mark.parametrize("res2_scale", [1, 2, 4])
@pytest.mark.parametrize("arch", ["mrnet", "ecapa"])
def test_1d_output_shapes(arch, dilations, route_depths, res2_scale):
    cfg = tiny(arch, dilations=dilations, route_depths=route_depths, res2_scale=res2_scale)
    model = build_model(cfg).eval()
    for frames in (1, 37, 64, 129):
        assert model(torch.randn(2, 16, frames)).shape == (2, 3)


def test_ecapa_ignores_route_depths():
    cfg = tiny("mrnet", dilations=(2, 3), route_depths=((1, 2, 3), (2,)))
    ecapa = build_model(cfg.replace(arch="ecapa"))
    assert [len(block.routes) for block in ecapa.blocks] == [1, 1]
    assert [len(block.routes[0]) for block in ecapa.blocks] == [1, 1]
    assert count_parameters(ecapa) < count_parameters(build_model(cfg))


@pytest.mark.parametrize("n_mels", [16, 40])
@pytest.mark.parametrize("channels", [4, 32])
def test_shortchunk_output_shapes(n_mels, channels):
    cfg = tiny("shortchunk", n_mels=n_mels, channels=channels, res2_scale=1)
    model = build_model(cfg).eval()
    for frames in (1, 2, 37, 129, 130):
        assert model(torch.randn(2, n_mels, frames)).shape == (2, 3)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_gets_a_gradient(arch):
    torch.manual_seed(0)
    model = build_model(tiny(arch, dropout=0.1))
    loss = nn.functional.cross_entropy(model(torch.randn(4, 16, 37)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_steps_fit_a_separable_batch(arch):
    torch.manual_seed(0)
    labels = torch.arange(12) % 3
    x = torch.randn(12, 16, 37)
    for c in range(3):  # class c is louder in its own third of the mel bands
        x[labels == c, 5 * c : 5 * c + 5] += 2.0
    model = build_model(tiny(arch))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_layer_arguments_are_checked_by_name():
    with pytest.raises(ValueError, match="^scale=3 must be >= 1 and divide channels=16"):
        Res2Conv(16, scale=3)
    with pytest.raises(ValueError, match="^kernel_size=4"):
        TDNNBlock(8, 8, kernel_size=4)
    with pytest.raises(ValueError, match="^route_depths"):
        MultiRouteRes2Block(16, (), res2_scale=4, se_channels=4)
    with pytest.raises(ValueError, match="^frames=0"):
        model_cost(tiny(), frames=0)


def test_single_route_block_is_ecapas_se_res2_block():
    # speechbrain's SERes2NetBlock(512, 512, res2net_scale=8, se_channels=128, kernel_size=3):
    # two 1x1 TDNNs (conv+bias+BN) 2 * 263,680, Res2 7 * (64*64*3 + 64 + 128) = 87,360,
    # SE 512*128 + 128 + 128*512 + 512 = 131,712.
    block = MultiRouteRes2Block(512, (1,), kernel_size=3, dilation=2, res2_scale=8)
    assert count_parameters(block) == 2 * 263_680 + 87_360 + 131_712


def test_full_size_ecapa_matches_the_published_size():
    # Desplanques et al. 2020 report 6.2 M; speechbrain's ECAPA_TDNN(80, lin_neurons=192) with
    # C=512, s=8, SE 128, attention 128 has 6,194,048 parameters (summed from its layer
    # shapes). Ours adds the input BatchNorm (2 * 80) and the 192 -> 10 classifier.
    cfg = MRNetConfig(arch="ecapa", n_mels=80, n_classes=10, channels=512, embedding_dim=192)
    params = count_parameters(build_model(cfg))
    assert params == 6_194_048 + 2 * 80 + 192 * 10 + 10
    assert 0.95 * 6.2e6 < params < 1.05 * 6.2e6


def test_model_cost_counts_flops_that_grow_with_frames():
    cfg = tiny("mrnet")
    short, long = model_cost(cfg, 37), model_cost(cfg, 74)
    assert short.params == long.params == count_parameters(build_model(cfg))
    # Convs scale with frames; the pooled head does not, so slightly less than double.
    assert 1.8 * short.flops < long.flops < 2 * short.flops


@pytest.mark.filterwarnings(SCRIPT_WARNING)
@pytest.mark.parametrize("arch", ARCHS)
def test_scripted_model_matches_eager(arch):
    model = with_running_stats(
        build_model(tiny(arch, dilations=(2, 3), route_depths=((1, 3), (2,)))), 16
    )
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for frames in (1, 37, 130):
            x = torch.randn(3, 16, frames)
            expected = model(x)
            assert expected.abs().max() > 1e-3  # a non-trivial output to compare
            torch.testing.assert_close(scripted(x), expected, rtol=0, atol=1e-5)
