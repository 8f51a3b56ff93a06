import numpy as np
import pytest
import torch

from common.recipe import mean_shift_cost
from common.sot import critic_loss, generator_loss, gradient_penalty, transport_cost


def numpy_cost(r: np.ndarray, kind: str) -> float:
    """docs/METHOD.md's formulas, written out in float64 NumPy: every cost on the spectrum, as the reference."""
    f = np.fft.fft2(r, axes=(-2, -1))
    p = np.abs(f) ** 2 + 1e-9
    if kind == "ot":
        return float(np.sqrt(np.mean(p)))
    if kind == "sot-l1":
        return float(np.mean(p ** 0.5))
    return float(np.mean(p ** 0.25) ** 2)


@pytest.mark.parametrize("kind", ["sot-l0.5", "sot-l1", "ot"])
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (3, 3, 12, 20)])
def test_transport_cost_matches_numpy(kind, shape):
    rng = np.random.default_rng(0)
    r = rng.normal(scale=0.1, size=shape)
    r[0, :, 4:6, :] += 0.5  # a sparse, structured component as well as noise
    got = transport_cost(torch.from_numpy(r).float(), kind)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(numpy_cost(r, kind), rel=1e-5)


def test_ot_is_the_scripts_spectral_l2_which_is_sqrt_hw_times_the_pixel_rmse():
    """The reference carries OT as sqrt(mean |F|^2); we compute it in the pixel domain (Parseval)."""
    r = torch.randn(2, 3, 128, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.05
    spectral = (torch.fft.fft2(r).abs().square() + 1e-9).mean().sqrt()
    ours = transport_cost(r, "ot")
    assert ours.item() == pytest.approx(spectral.item(), rel=1e-12)
    assert ours.item() == pytest.approx(128 * r.square().mean().sqrt().item(), rel=1e-9)  # x sqrt(128 * 128)


def test_transport_cost_is_float32_under_bf16_input():
    r = torch.randn(2, 3, 8, 8).bfloat16()
    assert transport_cost(r, "sot-l1").dtype == torch.float32


def test_transport_cost_has_finite_gradient_at_zero_residual():
    r = torch.zeros(1, 3, 8, 8, requires_grad=True)
    for kind in ("sot-l0.5", "sot-l1"):
        (g,) = torch.autograd.grad(transport_cost(r, kind), r)
        assert torch.isfinite(g).all()


def test_sparse_spectrum_costs_less_under_sot_than_dense_of_equal_energy():
    """The point of SOT: at equal pixel energy (equal OT cost), a residual whose spectrum is sparse
    (a few sinusoids) is cheaper than white noise."""
    yy, xx = torch.meshgrid(torch.arange(32.), torch.arange(32.), indexing="ij")
    sparse = torch.sin(2 * torch.pi * 5 * xx / 32).expand(1, 3, 32, 32).contiguous()
    dense = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dense *= sparse.square().mean().sqrt() / dense.square().mean().sqrt()
    assert transport_cost(sparse, "ot").item() == pytest.approx(transport_cost(dense, "ot").item(), rel=1e-5)
    for kind in ("sot-l0.5", "sot-l1"):
        assert transport_cost(sparse, kind) < 0.2 * transport_cost(dense, kind)


def test_unknown_cost_is_refused():
    with pytest.raises(ValueError, match="unknown transport cost"):
        transport_cost(torch.zeros(1, 3, 4, 4), "l2")


class LinearCritic(torch.nn.Module):
    """D(x) = <w, x>: its input gradient is w for every sample."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_on_linear_critic():
    w = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.05
    critic = LinearCritic(w.clone())
    real, fake = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    gp = gradient_penalty(critic, real, fake)
    expected = 10 * (w.flatten().norm().item() - 1) ** 2  # the norm runs over all C*H*W entries
    assert gp.item() == pytest.approx(expected, rel=1e-5)
    gp.backward()  # create_graph=True: the penalty back-propagates into the critic
    assert critic.w.grad is not None and torch.isfinite(critic.w.grad).all()


def test_gradient_penalty_interpolates_per_sample():
    """x_hat = eps y + (1 - eps) G(x) with one eps per sample: a critic that reads x_hat sees it."""
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x.detach().clone()
            return x.flatten(1).sum(1)

    real, fake = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    eps = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1)
    gradient_penalty(Spy(), real, fake, eps=eps)
    assert torch.allclose(seen["x"][:, 0, 0, 0], torch.tensor([0.0, 0.5, 1.0]))


def test_critic_and_generator_losses():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5])
    assert critic_loss(real, fake).item() == pytest.approx(0.5 - 2.0)
    r = torch.full((1, 3, 4, 4), 0.1)
    loss, cost = generator_loss(fake, r, sigma=10.0, kind="ot")
    assert cost.item() == pytest.approx(0.1 * 4)  # the pixel RMSE times sqrt(4 * 4)
    assert loss.item() == pytest.approx(-0.5 + 10 * 0.4)


def test_dc_weight_has_a_finite_gradient_at_a_zero_residual():
    """G starts as the identity with --init identity: the residual is exactly zero at step 1."""
    r = torch.zeros(2, 3, 8, 8, requires_grad=True)
    extra = lambda residual, batch_mean: mean_shift_cost(residual, batch_mean, 1.0)
    for kind in ("sot-l0.5", "sot-l1", "ot"):
        loss, _ = generator_loss(torch.zeros(2), r, 1.0, kind, extra_cost=extra)
        (g,) = torch.autograd.grad(loss, r)
        assert torch.isfinite(g).all(), kind


def test_transport_cost_is_the_papers_r_alone_and_extras_ride_beside_it():
    """--dc-weight W charges sigma * (R + W * shift); the R that is logged stays the paper's."""
    r = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) - 0.3
    extra = lambda residual, batch_mean: mean_shift_cost(residual, batch_mean, 2.0)
    loss, cost = generator_loss(torch.zeros(2), r, 5.0, "sot-l1", extra_cost=extra)
    assert cost.item() == pytest.approx(transport_cost(r, "sot-l1").item())
    shift = float(r.mean(dim=(-2, -1)).square().mean().sqrt())
    assert loss.item() == pytest.approx(5.0 * (cost.item() + 2.0 * shift), rel=1e-5)
