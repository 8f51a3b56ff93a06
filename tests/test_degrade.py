import numpy as np
import pytest

from common.data.degrade import DEGRADATIONS, add_haze, bicubic_down, depth_proxy, rain_streaks
from common.demo import load_photo


@pytest.fixture(scope="module")
def photo():
    return load_photo("astronaut")[::2, ::2].copy()  # 256 x 256


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_deterministic_by_seed_and_in_range(photo, name):
    f = DEGRADATIONS[name]
    a = f(photo, np.random.default_rng(7))
    b = f(photo, np.random.default_rng(7))
    c = f(photo, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and a.dtype == np.float32
    if name != "bicubic-x4":
        assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rain_layer_is_sparse_and_oriented(seed):
    layer, angle = rain_streaks((160, 160), np.random.default_rng(seed), "light")
    assert (layer > 0.05).mean() < 0.1  # sparse: most pixels carry no rain
    gy, gx = np.gradient(layer.astype(np.float64))
    a = np.radians(angle)  # streak direction (x, y) = (sin a, cos a): y grows downwards
    along = gx * np.sin(a) + gy * np.cos(a)
    across = gx * np.cos(a) - gy * np.sin(a)
    assert (along ** 2).sum() < 0.35 * (across ** 2).sum()  # it changes little along the streaks


def test_heavy_rain_covers_more_than_light():
    light = np.mean([(rain_streaks((128, 128), np.random.default_rng(s), "light")[0] > 0.05).mean() for s in range(4)])
    heavy = np.mean([(rain_streaks((128, 128), np.random.default_rng(s), "heavy")[0] > 0.05).mean() for s in range(4)])
    assert heavy > 2 * light


def test_haze_lowers_contrast_monotonically_in_beta(photo):
    contrasts = [add_haze(photo, np.random.default_rng(3), beta=b, airlight=0.9).std() for b in (0.0, 0.5, 1.0, 2.0, 3.0)]
    assert contrasts[0] == pytest.approx(photo.std(), rel=1e-5)  # beta = 0: no haze
    assert all(x > y for x, y in zip(contrasts, contrasts[1:]))


def test_haze_is_thicker_far_away(photo):
    d = depth_proxy(photo.shape[:2])
    assert d.min() == pytest.approx(0) and d.max() == pytest.approx(1)
    assert d[:32].mean() > d[-32:].mean()  # the top of the frame is far
    white = np.ones_like(photo) * 0.0
    hazy = add_haze(white, np.random.default_rng(0), beta=2.0, airlight=1.0)
    assert hazy[:32].mean() > hazy[-32:].mean()  # more airlight where it is farther


def test_bicubic_down_size_and_flat_image():
    img = np.full((130, 66, 3), 0.25, np.float32)
    out = bicubic_down(img, 4)
    assert out.shape == (32, 16, 3)  # cropped to a multiple of 4 first
    np.testing.assert_allclose(out, 0.25, atol=1e-6)
