"""The two model architectures of the "Deep Learning with PyTorch" lung-nodule project (chapters
13-14), with parameter names that match the book's saved state dicts, so `load_state_dict` takes
the book's files and our own trainings alike, and the ONNX exports are drop-in replacements.

Both take raw HU clamped to [-1000, 1000]: the first layer is a batch norm that does the scaling,
so noduled feeds clamped HU and nothing else (src/pipeline/segment.rs, classify.rs).

- SegUNet: 2D U-Net, 7 context slices in, one probability map out
  (input batch norm, depth 3, 16/32/64 filters, padded 3x3 convs with
  batch norm after each ReLU, average pooling, transposed-conv upsampling,
  1x1 head, sigmoid).
- NoduleNet: 3D CNN on a 32x48x48 HU crop (input batch norm, four blocks of
  two padded 3x3x3 convs + ReLU + 2x2x2 max pool, 8/16/32/64 channels,
  linear 1152 -> 2, softmax). Returns (logits, probabilities).
"""
import torch
from torch import nn
import torch.nn.functional as F


class _DoubleConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        # indices 0..5 mirror the saved names: conv, relu, bn, conv, relu, bn
        self.block = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout),
            nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return self.block(x)


class _Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv_block = _DoubleConv(cin, cout)

    def forward(self, x, skip):
        return self.conv_block(torch.cat([self.up(x), skip], 1))


class _UNet(nn.Module):
    def __init__(self, in_channels, n_classes, depth, wf):
        super().__init__()
        widths = [2 ** (wf + i) for i in range(depth)]
        self.down_path = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.down_path.append(_DoubleConv(prev, w))
            prev = w
        self.up_path = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up_path.append(_Up(prev, w))
            prev = w
        self.last = nn.Conv2d(prev, n_classes, 1)

    def forward(self, x):
        skips = []
        for i, down in enumerate(self.down_path):
            x = down(x)
            if i < len(self.down_path) - 1:
                skips.append(x)
                x = F.avg_pool2d(x, 2)
        for up, skip in zip(self.up_path, reversed(skips)):
            x = up(x, skip)
        return self.last(x)


class SegUNet(nn.Module):
    def __init__(self, in_channels=7, n_classes=1, depth=3, wf=4):
        super().__init__()
        self.input_batchnorm = nn.BatchNorm2d(in_channels)
        self.unet = _UNet(in_channels, n_classes, depth, wf)

    def forward(self, x):
        return torch.sigmoid(self.unet(self.input_batchnorm(x)))


class _Block3d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return F.max_pool3d(x, 2, 2)


class NoduleNet(nn.Module):
    def __init__(self, in_channels=1, conv_channels=8):
        super().__init__()
        c = conv_channels
        self.tail_batchnorm = nn.BatchNorm3d(1)
        self.block1 = _Block3d(in_channels, c)
        self.block2 = _Block3d(c, 2 * c)
        self.block3 = _Block3d(2 * c, 4 * c)
        self.block4 = _Block3d(4 * c, 8 * c)
        self.head_linear = nn.Linear(1152, 2)

    def forward(self, x):
        x = self.tail_batchnorm(x)
        x = self.block4(self.block3(self.block2(self.block1(x))))
        logits = self.head_linear(x.flatten(1))
        return logits, torch.softmax(logits, dim=1)


def load_state(path):
    """The `model_state` dict of a book checkpoint file."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = saved["model_state"] if "model_state" in saved else saved
    return {k.removeprefix("module."): v for k, v in state.items()}


class FlipAveraged(nn.Module):
    """A NoduleNet whose answer is averaged over the 8 flips of the crop's three axes (test-time
    augmentation, inside the exported graph, so noduled needs nothing new): probabilities are the
    mean of the 8 softmaxes, logits their log (softmax(logits) = probabilities). Same input and
    outputs as NoduleNet; the state dict is the wrapped net's under `net.`."""

    FLIPS = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))

    def __init__(self, net: NoduleNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        p = torch.stack([self.net(torch.flip(x, f) if f else x)[1] for f in self.FLIPS]).mean(0)
        return torch.log(p), p
