import numpy as np
import pytest
from scipy.signal import convolve2d

from common.evaluation.metrics import LPIPS, psnr, rgb_to_y, ssim


def test_psnr_known_values():
    a = np.zeros((8, 8, 3))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a + 0.01) == pytest.approx(40.0)
    assert psnr(a, a) == 100.0  # capped, as the reference does
    b = a.copy()
    b[0, 0, 0] = 1.0  # one pixel fully wrong among 192 values: 10 log10(192)
    assert psnr(a, b) == pytest.approx(10 * np.log10(192))


def wang_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM (the MATLAB reference code) on one channel: 11x11 Gaussian window, sigma 1.5,
    'valid' filtering, K1 = 0.01, K2 = 0.03, L = 255."""
    ax = np.arange(11) - 5
    g = np.exp(-(ax ** 2) / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    f = lambda x: convolve2d(x, win, mode="valid")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    s_aa, s_bb, s_ab = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2, f(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return float(m.mean())


def test_ssim_matches_wang_reference_per_channel():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(40, 48, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, size=a.shape), 0, 255).astype(np.uint8)
    expected = np.mean([wang_ssim(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)])
    assert ssim(a, b) == pytest.approx(expected, abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0)


def test_y_channel_by_hand():
    rgb = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(rgb_to_y(rgb)[0], [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0])
    # A grey 0.5 image against black: Y differs by 0.5 * 219 on a 255 scale.
    grey, black = np.full((16, 16, 3), 0.5), np.zeros((16, 16, 3))
    assert psnr(rgb_to_y(grey), rgb_to_y(black), data_range=255.0) == pytest.approx(
        20 * np.log10(255 / (0.5 * 219)))


@pytest.mark.slow
def test_lpips_plumbing_with_random_trunk():
    """The real lpips package with a random AlexNet trunk (its ImageNet weights need a download):
    identical images score 0, our [0, 1] -> [-1, 1] mapping equals lpips' own normalize=True."""
    import lpips as lpips_pkg
    import torch

    metric = LPIPS(pretrained_trunk=False)
    rng = np.random.default_rng(1)
    a = rng.random((64, 64, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(scale=0.1, size=a.shape), 0, 1).astype(np.float32)
    assert metric(a, a) == pytest.approx(0.0, abs=1e-7)
    d = metric(a, b)
    assert d > 0
    to_t = lambda x: torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0)
    direct = metric._model(to_t(a), to_t(b), normalize=True).item()
    assert d == pytest.approx(direct, rel=1e-5)
    assert isinstance(metric._model, lpips_pkg.LPIPS) and metric._model.version == "0.1"


def test_lpips_unavailable_is_reported_not_raised(monkeypatch, capsys):
    import lpips as lpips_pkg

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(lpips_pkg, "LPIPS", no_network)
    metric = LPIPS()
    img = np.zeros((8, 8, 3))
    assert metric(img, img) is None and metric(img, img) is None
    assert not metric.available
    assert capsys.readouterr().err.count("LPIPS unavailable") == 1
