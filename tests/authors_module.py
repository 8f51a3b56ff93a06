"""An independent re-creation of the authors' ``srresnet_unet2`` module, for writing files in their format.

Written from docs/METHOD.md, "Generator" and "Critic" (class names, module paths, the two unused shallow-feature branches and
the SAM that computes attention features nobody uses), not from our networks, so that loading its
pickles checks our key mapping against a second reading of the specification. Tests write this source
to a temporary folder as ``srresnet_unet2.py``, import it, pickle whole modules and forget it again.
"""
SOURCE = '''
import torch
import torch.nn as nn


def conv(cin, cout, k, bias=False, stride=1):
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias, stride=stride)


class CALayer(nn.Module):
    def __init__(self, c, reduction=4, bias=False):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(c, c // reduction, 1, bias=bias), nn.ReLU(inplace=True),
                                     nn.Conv2d(c // reduction, c, 1, bias=bias), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class CAB(nn.Module):
    def __init__(self, c, k, reduction, bias, act):
        super().__init__()
        self.CA = CALayer(c, reduction, bias)
        self.body = nn.Sequential(conv(c, c, k, bias), act, conv(c, c, k, bias))

    def forward(self, x):
        return self.CA(self.body(x)) + x


class DownSample(nn.Module):
    def __init__(self, c, s):
        super().__init__()
        self.down = nn.Sequential(nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
                                  nn.Conv2d(c, c + s, 1, bias=False))

    def forward(self, x):
        return self.down(x)


class UpSample(nn.Module):
    def __init__(self, c, s):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(c + s, c, 1, bias=False))

    def forward(self, x):
        return self.up(x)


class SkipUpSample(nn.Module):
    def __init__(self, c, s):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(c + s, c, 1, bias=False))

    def forward(self, x, y):
        return self.up(x) + y


class Encoder(nn.Module):
    def __init__(self, n, k, r, act, bias, s):
        super().__init__()
        self.encoder_level1 = nn.Sequential(*[CAB(n, k, r, bias, act) for _ in range(2)])
        self.encoder_level2 = nn.Sequential(*[CAB(n + s, k, r, bias, act) for _ in range(2)])
        self.encoder_level3 = nn.Sequential(*[CAB(n + 2 * s, k, r, bias, act) for _ in range(2)])
        self.down12 = DownSample(n, s)
        self.down23 = DownSample(n + s, s)

    def forward(self, x):
        e1 = self.encoder_level1(x)
        e2 = self.encoder_level2(self.down12(e1))
        e3 = self.encoder_level3(self.down23(e2))
        return [e1, e2, e3]


class Decoder(nn.Module):
    def __init__(self, n, k, r, act, bias, s):
        super().__init__()
        self.decoder_level1 = nn.Sequential(*[CAB(n, k, r, bias, act) for _ in range(2)])
        self.decoder_level2 = nn.Sequential(*[CAB(n + s, k, r, bias, act) for _ in range(2)])
        self.decoder_level3 = nn.Sequential(*[CAB(n + 2 * s, k, r, bias, act) for _ in range(2)])
        self.skip_attn1 = CAB(n, k, r, bias, act)
        self.skip_attn2 = CAB(n + s, k, r, bias, act)
        self.up21 = SkipUpSample(n, s)
        self.up32 = SkipUpSample(n + s, s)

    def forward(self, outs):
        e1, e2, e3 = outs
        d3 = self.decoder_level3(e3)
        d2 = self.decoder_level2(self.up32(d3, self.skip_attn2(e2)))
        d1 = self.decoder_level1(self.up21(d2, self.skip_attn1(e1)))
        return [d1, d2, d3]


class SAM(nn.Module):
    def __init__(self, n, k, bias):
        super().__init__()
        self.conv1 = conv(n, n, k, bias)
        self.conv2 = conv(n, 3, k, bias)
        self.conv3 = conv(3, n, k, bias)

    def forward(self, x, x_img):
        x1 = self.conv1(x)
        img = self.conv2(x) + x_img
        x1 = x1 * torch.sigmoid(self.conv3(img)) + x
        return x1, img


class _NetG(nn.Module):
    def __init__(self, in_c=3, out_c=3, n_feat=80, s=48, k=3, r=4, bias=False):
        super().__init__()
        act = nn.PReLU()
        self.shallow_feat1 = nn.Sequential(conv(in_c, n_feat, k, bias), CAB(n_feat, k, r, bias, act))
        self.shallow_feat2 = nn.Sequential(conv(in_c, n_feat, k, bias), CAB(n_feat, k, r, bias, act))
        self.shallow_feat3 = nn.Sequential(conv(in_c, n_feat, k, bias), CAB(n_feat, k, r, bias, act))
        self.stage1_encoder = Encoder(n_feat, k, r, act, bias, s)
        self.stage1_decoder = Decoder(n_feat, k, r, act, bias, s)
        self.sam12 = SAM(n_feat, 1, bias)

    def forward(self, x):
        feats = self.stage1_decoder(self.stage1_encoder(self.shallow_feat1(x)))
        _, img = self.sam12(feats[0], x)
        return img


class _NetD(nn.Module):
    def __init__(self, in_c=3, hidden=640):
        super().__init__()
        def block(cin, cout, k, s, bias=True):
            pad = 1 if s == 2 else k // 2
            return [nn.Conv2d(cin, cout, k, s, pad, bias=bias), nn.LeakyReLU(0.2, inplace=True)]
        layers = (block(in_c, 64, 5, 1) + block(64, 64, 4, 2) + block(64, 128, 3, 1) + block(128, 128, 4, 2)
                  + block(128, 256, 3, 1) + block(256, 256, 4, 2) + block(256, 512, 3, 1, False)
                  + block(512, 512, 4, 2, False) + block(512, 512, 3, 1, False) + block(512, 512, 4, 2, False))
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(8192, hidden)
        self.LeakyReLU = nn.LeakyReLU(0.2, inplace=True)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.fc2(self.LeakyReLU(self.fc1(self.features(x).flatten(1))))
'''
