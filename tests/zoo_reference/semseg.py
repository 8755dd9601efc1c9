"""Reference re-implementation of hszhao/semseg's PSPNet (``model/pspnet.py`` @ 4f274c3), the layout of
the trained PSPNet teachers the APD README points to: the APD release's deep-base ResNet and dilation
(every block of layers 3 and 4 dilated), a ``ppm`` without ``merge``; ``cls`` = 3x3 conv (4096 -> 512),
BN, ReLU, Dropout2d, 1x1 conv; ``aux`` as in the release (semseg builds it in ``__init__`` while the
module is still in training mode, so every checkpoint has it). Module names equal the source's."""

import torch
import torch.nn.functional as F
from torch import nn

from .apd import ResNet, dilate


class PPM(nn.Module):
    def __init__(self, in_dim: int, reduction_dim: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction_dim, 1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [x] + [F.interpolate(f(x), x.shape[2:], mode="bilinear", align_corners=True) for f in self.features]
        return torch.cat(out, 1)


class PSPNet(nn.Module):
    """Eval forward: the main logits upsampled to ``((H-1)/8*8+1, (W-1)/8*8+1)`` with align_corners=True
    (the input must be 8k+1 on each side, as semseg asserts)."""

    def __init__(self, layers: int = 50, classes: int = 19, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        resnet = ResNet({50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[layers])
        self.layer0 = nn.Sequential(
            resnet.conv1, resnet.bn1, resnet.relu, resnet.conv2, resnet.bn2, resnet.relu,
            resnet.conv3, resnet.bn3, resnet.relu, resnet.maxpool,
        )  # fmt: skip
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        dilate(self.layer3, self.layer4, classes=0)  # semseg's surgery: the release's non-Context branch
        self.ppm = PPM(2048, 2048 // len(bins), bins)
        self.cls = nn.Sequential(
            nn.Conv2d(4096, 512, 3, padding=1, bias=False),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=0.1),
            nn.Conv2d(512, classes, 1),
        )
        self.aux = nn.Sequential(
            nn.Conv2d(1024, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=0.1),
            nn.Conv2d(256, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert (x.shape[2] - 1) % 8 == 0 and (x.shape[3] - 1) % 8 == 0
        h, w = (x.shape[2] - 1) // 8 * 8 + 1, (x.shape[3] - 1) // 8 * 8 + 1
        out = self.cls(self.ppm(self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x)))))))
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)


def build(family: str, depth: int, num_classes: int) -> nn.Module:
    if family != "pspnet":
        raise ValueError(f"semseg has PSPNet only, not {family!r}")
    return PSPNet(depth, num_classes)


def save_checkpoint(model: nn.Module, path) -> None:
    """semseg's ``tool/train.py``: ``torch.save({'epoch', 'state_dict': model.state_dict(), 'optimizer'})`` of a
    DataParallel / DDP model, so every key starts with ``module.``; the optimizer state is empty here."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    state = {"module." + k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"epoch": 200, "state_dict": state, "optimizer": optimizer.state_dict()}, path)
