"""The two networks of SOT: the restoring generator and the WGAN critic.

Plain ``nn.Module``s that know nothing of training, devices or losses. Module paths follow the
authors' checkpoints (docs/METHOD.md, "Generator" and "Critic") so that their weights load into these
classes by name.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class Widths(NamedTuple):
    """A generator's base width and U-Net increment per level, and a critic's base width."""
    generator: int
    increment: int
    critic: int


GENERATOR_MULTIPLE = 4  # two bilinear halvings in the encoder
# The generator's channel attention squeezes its features to width // reduction channels: a width
# below the reduction keeps none, and the first forward pass fails (the increments only widen).
CHANNEL_REDUCTION = 4
# The paper's network widths: the generator's base width and its U-Net increment per level, and the
# critic's base width. Training defaults to them (common.training.config); the demo narrows them.
PAPER_WIDTHS = Widths(generator=80, increment=48, critic=64)
# How the critic's weights start. "reference": N(0, 0.02) as the authors' scripts (docs/METHOD.md); its ten
# layers each shrink the signal, so the gradient of the score with respect to the input starts about
# 500x below the penalty's target norm of 1 and the critic spends its first few hundred steps growing
# its gain before it can tell the sides apart: nothing in a 200-epoch run, most of a short one.
# "kaiming": He initialisation for LeakyReLU(0.2), which starts the input-gradient norm near 1.
CRITIC_INITS = ("reference", "kaiming")


def conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """Bias-free "same" convolution, the generator's only kind."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)


def _autocast_dtype() -> torch.dtype:
    """CUDA autocast's dtype (bf16 here); ``get_autocast_dtype`` is torch >= 2.4's spelling."""
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype("cuda")
    return torch.get_autocast_gpu_dtype()  # pragma: no cover - torch < 2.4


class Im2colConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same result) computed on CUDA as unfold + matrix product.

    For the critic's 3-channel first layer. The gradient penalty back-propagates through the
    critic's input gradient, and PyTorch computes a convolution's double backward for the weight as
    another convolution whose kernel is the whole feature map; for 3 input channels cuDNN runs that
    with a generic kernel that took 7.5 ms of a 56 ms training step on an H200 (docs/PERFORMANCE.md).
    As unfold + matmul, every derivative is a matmul or a fold: the bf16 step went from 59.1 to 56.7
    ms. The input is cast to bf16 before it is unfolded, and the product is one batched matmul whose
    operands are strided views, so the forward copies nothing but the unfold itself. In fp32 the plain
    convolution (TF32) stayed faster (94.7 against 98.9 ms), so
    ``use_im2col=None`` (default) means on CUDA under autocast only; True or False force it (tests;
    the reference structure in bench/speed.py).
    """

    use_im2col: bool | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("Im2colConv2d takes groups=1, zero padding given in pixels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no argument: CUDA's autocast (the form torch 2.1 has too)
        autocast_on = torch.is_autocast_enabled()
        on = (x.is_cuda and autocast_on) if self.use_im2col is None else self.use_im2col
        if not on:
            return super().forward(x)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if autocast_on and x.is_cuda:  # cast before unfolding: the unfolded copy is k*k times the input
            x = x.to(_autocast_dtype())
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        # (N, L, C*k*k) @ (N, C*k*k, out) as one batched product: the transposed operand and the expanded
        # weight are strides to the matrix kernel, not copies (F.linear would copy the transpose to fold
        # N into rows); the bias rides along in baddbmm.
        weight = self.weight.flatten(1).t().expand(n, -1, -1)
        if self.bias is None:
            out = torch.bmm(cols.transpose(1, 2), weight)
        else:
            out = torch.baddbmm(self.bias.view(1, 1, -1), cols.transpose(1, 2), weight)
        out = out.view(n, oh, ow, self.out_channels).permute(0, 3, 1, 2)  # channels_last strides, no copy
        return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global mean -> 1x1 (c -> c/r) -> ReLU -> 1x1 (c/r -> c) -> sigmoid."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        # A module (not x.mean) so that tiled inference can share the statistic across tiles by hook.
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            conv(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            conv(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel attention weights (B x C x 1 x 1) for features ``x``."""
        return self.conv_du(self.avg_pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class CAB(nn.Module):
    """Channel-attention block: conv -> PReLU -> conv -> channel attention, plus the block input."""

    def __init__(self, channels: int, kernel_size: int, reduction: int, act: nn.Module):
        super().__init__()
        self.body = nn.Sequential(conv(channels, channels, kernel_size), act,
                                  conv(channels, channels, kernel_size))
        self.CA = ChannelAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.body(x)
        # x + body * attention in one fused elementwise pass instead of a multiply and an add
        return torch.addcmul(x, body, self.CA.weights(body))


def cab_stack(n: int, channels: int, kernel_size: int, reduction: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(*[CAB(channels, kernel_size, reduction, act) for _ in range(n)])


class DownSample(nn.Module):
    """Bilinear x0.5, then a 1x1 conv that widens by ``increment`` channels."""

    def __init__(self, channels: int, increment: int):
        super().__init__()
        self.down = nn.Sequential(nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
                                  conv(channels, channels + increment, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class SkipUpSample(nn.Module):
    """Bilinear x2, a 1x1 conv that narrows by ``increment`` channels, plus the skip features."""

    def __init__(self, channels: int, increment: int):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                conv(channels + increment, channels, 1))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x) + skip


class Encoder(nn.Module):
    def __init__(self, width: int, increment: int, kernel_size: int, reduction: int, act: nn.Module):
        super().__init__()
        w1, w2, w3 = width, width + increment, width + 2 * increment
        self.encoder_level1 = cab_stack(2, w1, kernel_size, reduction, act)
        self.encoder_level2 = cab_stack(2, w2, kernel_size, reduction, act)
        self.encoder_level3 = cab_stack(2, w3, kernel_size, reduction, act)
        self.down12 = DownSample(w1, increment)
        self.down23 = DownSample(w2, increment)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc1 = self.encoder_level1(x)
        enc2 = self.encoder_level2(self.down12(enc1))
        enc3 = self.encoder_level3(self.down23(enc2))
        return enc1, enc2, enc3


class Decoder(nn.Module):
    def __init__(self, width: int, increment: int, kernel_size: int, reduction: int, act: nn.Module):
        super().__init__()
        w1, w2, w3 = width, width + increment, width + 2 * increment
        self.decoder_level1 = cab_stack(2, w1, kernel_size, reduction, act)
        self.decoder_level2 = cab_stack(2, w2, kernel_size, reduction, act)
        self.decoder_level3 = cab_stack(2, w3, kernel_size, reduction, act)
        self.skip_attn1 = CAB(w1, kernel_size, reduction, act)
        self.skip_attn2 = CAB(w2, kernel_size, reduction, act)
        self.up21 = SkipUpSample(w1, increment)
        self.up32 = SkipUpSample(w2, increment)

    def forward(self, enc1: torch.Tensor, enc2: torch.Tensor, enc3: torch.Tensor) -> torch.Tensor:
        dec3 = self.decoder_level3(enc3)
        dec2 = self.decoder_level2(self.up32(dec3, self.skip_attn2(enc2)))
        return self.decoder_level1(self.up21(dec2, self.skip_attn1(enc1)))


class SAM(nn.Module):
    """MPRNet's supervised-attention module, of which SOT uses only the image head ``conv2``.

    ``conv1`` and ``conv3`` fed attention-weighted features that nothing downstream reads. They are
    kept, frozen, so that checkpoints keep the authors' keys and parameter count, and are never run.
    """

    def __init__(self, width: int, channels: int):
        super().__init__()
        self.conv1 = conv(width, width, 1)
        self.conv2 = conv(width, channels, 1)
        self.conv3 = conv(channels, width, 1)
        self.conv1.requires_grad_(False)
        self.conv3.requires_grad_(False)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.conv2(features) + image


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right edges so that height and width are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def project_off_low_res(residual: torch.Tensor, scale: int) -> torch.Tensor:
    """``r - U(D(r))``: a residual without what an x ``scale`` bicubic downsampler D keeps of it (U: bicubic
    upsampling back), i.e. roughly its part in D's null space. Sides must be multiples of ``scale``.

    D is antialiased, as MATLAB's ``imresize`` that makes SR inputs. A constant (a colour shift) goes
    entirely, slow shading nearly so; detail finer than the low-resolution pixels stays (on the SR demo's
    held-out photographs, 91-97% of the true residual's RMS). Computed in float32 (autocast-safe).
    """
    r = residual.float()
    low = F.interpolate(r, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    return r - F.interpolate(low, scale_factor=scale, mode="bicubic", align_corners=False)


class Generator(nn.Module):
    """Single-stage MPRNet encoder-decoder that predicts a residual on top of its input (docs/METHOD.md).

    ``forward`` takes any height and width: it pads to a multiple of 4 (reflecting the border) and
    crops back, so callers never need padding code. Output = input + conv(80 -> 3)(decoder features).

    ``null_space_scale`` s > 1 (not in the paper; SR's --null-space) projects that residual off what
    an x s bicubic downsampler keeps of it (``project_off_low_res``): G may add only the detail the
    low-resolution input does not already fix, not shift its colours or shading. 1: the paper's G.
    """

    def __init__(self, channels: int = 3, width: int = PAPER_WIDTHS.generator, increment: int = PAPER_WIDTHS.increment,
                 reduction: int = CHANNEL_REDUCTION, kernel_size: int = 3, null_space_scale: int = 1):
        super().__init__()
        if width < reduction:
            raise ValueError(f"a generator of width {width} cannot run: its channel attention squeezes the width "
                             f"by {reduction}, which would leave no channel")
        self.arch = dict(channels=channels, width=width, increment=increment, reduction=reduction,
                         kernel_size=kernel_size, null_space_scale=null_space_scale)
        # One PReLU module, shared by every block: the reference learns a single slope.
        act = nn.PReLU()
        self.shallow_feat1 = nn.Sequential(conv(channels, width, kernel_size),
                                           CAB(width, kernel_size, reduction, act))
        self.stage1_encoder = Encoder(width, increment, kernel_size, reduction, act)
        self.stage1_decoder = Decoder(width, increment, kernel_size, reduction, act)
        self.sam12 = SAM(width, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scale = self.arch["null_space_scale"]
        padded = pad_to_multiple(x, math.lcm(GENERATOR_MULTIPLE, scale))
        features = self.stage1_decoder(*self.stage1_encoder(self.shallow_feat1(padded)))
        out = self.sam12(features, padded)
        if scale > 1:
            out = padded + project_off_low_res(out.float() - padded.float(), scale).to(out.dtype)
        return out[..., :h, :w] if out.shape[-2:] != (h, w) else out


class Critic(nn.Module):
    """SRGAN-style critic without normalisation layers (docs/METHOD.md, "Critic").

    Ten convolutions, each followed by LeakyReLU(0.2), five of them 4x4 stride 2, then
    Linear(512 * (input_size / 32)^2, hidden) -> LeakyReLU(0.2) -> Linear(hidden, 1). With the
    reference's 128x128 patches the flattened features are 8192 wide. Returns one score per sample.
    """

    def __init__(self, channels: int = 3, hidden: int = 640, input_size: int = 128, width: int = PAPER_WIDTHS.critic,
                 init: str = "reference"):
        super().__init__()
        if init not in CRITIC_INITS:
            raise ValueError(f"unknown critic initialisation {init!r}; one of {', '.join(CRITIC_INITS)}")
        if input_size % 32:
            raise ValueError(f"the critic's input size must be a multiple of 32, got {input_size}")
        self.arch = dict(channels=channels, hidden=hidden, input_size=input_size, width=width)
        w = width
        # (in, out, kernel, stride, bias); "4x4 s2" convs pad 1, the others pad "same".
        spec = [(channels, w, 5, 1, True), (w, w, 4, 2, True), (w, 2 * w, 3, 1, True),
                (2 * w, 2 * w, 4, 2, True), (2 * w, 4 * w, 3, 1, True), (4 * w, 4 * w, 4, 2, True),
                (4 * w, 8 * w, 3, 1, False), (8 * w, 8 * w, 4, 2, False), (8 * w, 8 * w, 3, 1, False),
                (8 * w, 8 * w, 4, 2, False)]
        layers: list[nn.Module] = []
        for i, (cin, cout, k, s, bias) in enumerate(spec):
            layer = Im2colConv2d if i == 0 else nn.Conv2d  # the first: see Im2colConv2d
            layers += [layer(cin, cout, k, stride=s, padding=1 if s == 2 else k // 2, bias=bias),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        side = input_size // 32
        self.fc1 = nn.Linear(8 * w * side * side, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        # The reference's N(0, 0.02) at its width 64. A narrower critic (quick experiments) gets the
        # same per-layer signal gain, std 0.02 * sqrt(64 / width): with 0.02 its ten layers would shrink
        # the input's signal about 1000x more at width 16, leaving a critic that cannot see its input.
        std = 0.02 * math.sqrt(PAPER_WIDTHS.critic / width)
        if self.fc1.weight.is_meta:
            # sizes only (the run's preflight): meta tensors hold no values, and drawing them would
            # import torch's compiler (about 2 s of every train.py start)
            return
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                if init == "kaiming":
                    nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                else:
                    nn.init.normal_(m.weight, 0.0, std)
        if init == "kaiming":
            nn.init.kaiming_normal_(self.fc1.weight, a=0.2, nonlinearity="leaky_relu")

    @property
    def input_size(self) -> int:
        return self.arch["input_size"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"the critic takes {self.input_size}x{self.input_size} patches, "
                             f"got {tuple(x.shape[-2:])}")
        h = self.features(x).flatten(1)
        return self.fc2(F.leaky_relu(self.fc1(h), 0.2)).view(-1)


def compile_blocks(generator: nn.Module) -> nn.Module:
    """Regional compilation: each channel-attention block of the generator through ``torch.compile``
    (its PReLU, attention and residual chain fused), the rest as it is. Compiling the whole generator
    was measured slower; this is the block-wise alternative ``bench/speed.py --compile-blocks``
    measures against the plain step. In place; returns the generator."""
    for module in generator.modules():
        if isinstance(module, CAB):
            if hasattr(module, "compile"):  # nn.Module.compile: torch >= 2.2
                module.compile(dynamic=False)
            else:  # pragma: no cover - torch 2.1
                module.forward = torch.compile(module.forward, dynamic=False)
    return generator


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
