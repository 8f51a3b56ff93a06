import pytest
import torch

import torch.nn.functional as F

from common.networks import Critic, Generator, count_parameters, project_off_low_res
from helpers import ROOT


def test_parameter_counts_at_real_sizes():
    assert count_parameters(Generator()) == 4_592_721
    assert count_parameters(Critic(hidden=640)) == 18_922_305
    assert count_parameters(Critic(hidden=64)) == 14_202_561


def test_the_docs_count_the_parameters_in_use_as_the_code_does():
    """docs/METHOD.md and docs/FIDELITY.md said 4,592,721 parameters in use: that counted SAM's two
    frozen convolutions (6,640 weights), which the forward never reads."""
    g = Generator()
    in_use = sum(p.numel() for p in g.parameters() if p.requires_grad)
    frozen = count_parameters(g) - in_use
    assert (in_use, frozen) == (4_586_081, 6_640)
    for page in ("METHOD.md", "FIDELITY.md"):
        text = " ".join((ROOT / "docs" / page).read_text().split())
        assert f"{in_use:,} parameters in use" in text.replace("are in use", "in use"), page
        assert f"{frozen:,}" in text and f"{count_parameters(g):,}" in text, page


def test_one_shared_prelu():
    g = Generator(width=16, increment=8)
    prelus = {id(m) for m in g.modules() if isinstance(m, torch.nn.PReLU)}
    assert len(prelus) == 1
    assert g.stage1_encoder.encoder_level1[0].body[1] is g.stage1_decoder.decoder_level3[1].body[1]
    assert g.stage1_encoder.encoder_level1[0].body[1].weight.item() == pytest.approx(0.25)


def test_authors_module_paths():
    keys = set(Generator().state_dict())
    for key in ("shallow_feat1.0.weight", "stage1_encoder.encoder_level3.1.CA.conv_du.2.weight",
                "stage1_encoder.down23.down.1.weight", "stage1_decoder.skip_attn2.body.2.weight",
                "stage1_decoder.up32.up.1.weight", "sam12.conv1.weight", "sam12.conv3.weight"):
        assert key in keys
    critic_keys = set(Critic().state_dict())
    assert {"features.0.weight", "features.18.weight", "fc1.weight", "fc2.bias"} <= critic_keys
    assert "features.18.bias" not in critic_keys and "features.10.bias" in critic_keys


def test_generator_returns_input_plus_residual():
    torch.manual_seed(0)
    g = Generator(width=16, increment=8).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = g.stage1_decoder(*g.stage1_encoder(g.shallow_feat1(x)))
        residual = g.sam12.conv2(features)
        out = g(x)
    assert residual.abs().mean() > 1e-4  # the default init does not start at the identity
    torch.testing.assert_close(out, x + residual)


@pytest.mark.parametrize("h,w", [(32, 32), (37, 50), (5, 9)])
def test_generator_takes_any_size(h, w):
    g = Generator(width=16, increment=8).eval()
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape


def test_unaligned_input_is_reflect_padded_then_cropped():
    g = Generator(width=16, increment=8).eval()
    x = torch.rand(1, 3, 34, 41)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 2), mode="reflect")
    with torch.no_grad():
        torch.testing.assert_close(g(x), g(padded)[..., :34, :41])


def test_projection_off_the_low_resolution_band():
    """--null-space: a colour shift goes entirely, detail at the high-resolution pixel scale stays."""
    shift = torch.full((1, 3, 32, 32), 0.2)
    assert project_off_low_res(shift, 4).abs().max() < 1e-6
    checker = torch.ones(32, 32)
    checker[::2] *= -1
    checker[:, ::2] *= -1
    checker = checker.expand(1, 3, 32, 32)
    torch.testing.assert_close(project_off_low_res(checker, 4), checker, atol=0.01, rtol=0)
    ramp = torch.linspace(-0.5, 0.5, 32).expand(1, 3, 32, 32)  # slow shading: nearly all of it goes
    assert project_off_low_res(ramp, 4).norm() < 0.05 * ramp.norm()


def test_null_space_generator_keeps_what_the_downsampler_sees():
    """With null_space_scale 4 the output, downsampled x4, is the input downsampled (up to D(U(.)) != id),
    where the same weights without the projection change it; G is still input + (projected) residual."""
    torch.manual_seed(0)
    plain = Generator(width=8, increment=4).eval()
    projected = Generator(width=8, increment=4, null_space_scale=4).eval()
    projected.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 64)
    down = lambda t: F.interpolate(t, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    with torch.no_grad():
        r_plain, r_projected = plain(x) - x, projected(x) - x
    torch.testing.assert_close(r_projected, project_off_low_res(r_plain, 4))
    assert down(r_projected).pow(2).mean().sqrt() < 0.2 * down(r_plain).pow(2).mean().sqrt()
    with torch.no_grad():
        assert projected(torch.rand(1, 3, 37, 50)).shape == (1, 3, 37, 50)


def test_critic_shapes_and_input_check():
    d = Critic(hidden=64)
    assert d(torch.rand(3, 3, 128, 128)).shape == (3,)
    with pytest.raises(ValueError, match="128x128"):
        d(torch.rand(1, 3, 96, 96))
    small = Critic(hidden=16, input_size=32, width=8)
    assert small(torch.rand(2, 3, 32, 32)).shape == (2,)


def test_critic_conv_init():
    d = Critic()
    w = torch.cat([m.weight.flatten() for m in d.features if isinstance(m, torch.nn.Conv2d)])
    assert w.mean().abs() < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.02)


def test_critic_kaiming_init_starts_near_the_penalty_target():
    """The reference's N(0, 0.02) starts the score's input gradient far below the gradient penalty's
    norm of 1 (so a short run spends its first steps growing it); --critic-init kaiming starts near 1."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 128, requires_grad=True)
    norms = {}
    for init in ("reference", "kaiming"):
        d = Critic(hidden=640, width=16, init=init)
        grad, = torch.autograd.grad(d(x).sum(), x)
        norms[init] = grad.flatten(1).norm(dim=1).mean().item()
    assert norms["reference"] < 0.01 and 0.2 < norms["kaiming"] < 2, norms
    with pytest.raises(ValueError, match="unknown critic initialisation"):
        Critic(init="xavier")


def test_sam_side_branches_are_frozen_and_unused():
    g = Generator(width=16, increment=8)
    assert not g.sam12.conv1.weight.requires_grad and not g.sam12.conv3.weight.requires_grad
    x = torch.rand(1, 3, 16, 16)
    g(x).sum().backward()
    assert g.sam12.conv1.weight.grad is None and g.sam12.conv2.weight.grad is not None


@pytest.mark.parametrize("channels_last", [False, True])
def test_im2col_first_critic_layer_matches_the_convolution(channels_last):
    """The critic's first layer as unfold + matmul (what CUDA runs): the same scores, and the same
    gradients through the gradient penalty's double backward, to float64 round-off."""
    from common.sot import gradient_penalty
    from common.networks import Im2colConv2d

    torch.manual_seed(0)
    d = Critic(hidden=16, input_size=32, width=8).double()
    assert isinstance(d.features[0], Im2colConv2d) and d.features[0].use_im2col is None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    d = d.to(memory_format=fmt)
    real, fake = (torch.rand(3, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=fmt) for _ in range(2))
    eps = torch.rand(3, 1, 1, 1, dtype=torch.float64)
    results = []
    for im2col in (False, True):
        d.features[0].use_im2col = im2col
        d.zero_grad()
        first = d.features[0](real)
        loss = gradient_penalty(d, real, fake, eps) + d(real).mean() - d(fake).mean()
        loss.backward()
        results.append((first, loss.detach(), [p.grad.clone() for p in d.parameters()]))
    (conv_out, conv_loss, conv_grads), (col_out, col_loss, col_grads) = results
    assert col_out.is_contiguous(memory_format=fmt)
    # and the forward copies no activation besides the unfold itself (a contiguous output also pays the
    # layout change at the end; the weight's 600 values may be reordered)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            source = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.seen.append((func.__name__.split(".")[0], source.numel() if source is not None else 0))
            return func(*args, **(kwargs or {}))
    with Ops() as ops:
        d.features[0](real.requires_grad_(True))
    weight = d.features[0].weight.numel()
    copies = [op for op, size in ops.seen if op in ("clone", "copy_", "contiguous", "_to_copy") and size > weight]
    assert copies == ([] if channels_last else ["clone"]), ops.seen
    assert torch.allclose(col_out, conv_out, rtol=0, atol=1e-13)
    assert torch.allclose(col_loss, conv_loss, rtol=1e-12, atol=0)
    for a, b in zip(conv_grads, col_grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
