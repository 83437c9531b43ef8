"""A reference-style SimKD training loop, the baseline `kdsweep bench` compares against. Never used for training.

It trains one student the way the SimKD / RepDistiller CIFAR scripts do (written here, not copied): torchvision
transforms on PIL images in a DataLoader, fp32, eager, the whole teacher run for this one student on every batch,
the student's full forward (`is_feat=True`, head included), the projector and the reused teacher classifier for the
training accuracy, and three `.item()` host syncs per step (loss, top-1, top-5 meters).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdsweep.methods.projector import Projector
from kdsweep.models import FeatureModel


class PilImages(torch.utils.data.Dataset):
    """uint8 (N, 3, 32, 32) images served as PIL images through `transform`, as torchvision's CIFAR100 does."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, what PIL expects
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_loader(images: torch.Tensor, labels: torch.Tensor, mean, std, batch_size: int, workers: int,
                     seed: int = 0) -> torch.utils.data.DataLoader:
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    return torch.utils.data.DataLoader(
        PilImages(images.cpu(), labels.cpu(), transform), batch_size=batch_size, shuffle=True, num_workers=workers,
        drop_last=True, generator=torch.Generator().manual_seed(seed), worker_init_fn=_seed_worker,
    )


def _seed_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)


class ReferenceStudent:
    """One SimKD student (last-stage tap, MSE) trained step by step as the reference scripts do."""

    def __init__(self, student: FeatureModel, teacher: FeatureModel, device: torch.device, lr: float = 0.05):
        self.student, self.teacher, self.device = student.to(device).train(), teacher.to(device).eval(), device
        s_channels = student.feature_info.stage_channels[-1]
        t_info = teacher.feature_info
        self.size = min(student.feature_info.stage_size(-1), t_info.stage_size(-1))
        self.projector = Projector(s_channels, t_info.stage_channels[-1]).to(device)
        params = [*self.student.parameters(), *self.projector.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
        self.meters = {"loss": 0.0, "top1": 0.0, "top5": 0.0}

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MSE loss, logits through the reused teacher classifier) of one batch."""
        feats, _ = self.student(images, is_feat=True)
        with torch.no_grad():
            teacher_feats, _ = self.teacher(images, is_feat=True)
        target = F.adaptive_avg_pool2d(teacher_feats[-2], self.size)
        projected = self.projector(feats[-2], self.size)
        logits = self.teacher.classifier_layer(F.adaptive_avg_pool2d(projected, 1).flatten(1))
        return F.mse_loss(projected, target), logits

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        loss, logits = self.losses(images, labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        hits = logits.topk(5, dim=1).indices == labels[:, None]
        # The reference's AverageMeters: one host sync each.
        self.meters["loss"] += loss.item()
        self.meters["top1"] += hits[:, 0].float().mean().item()
        self.meters["top5"] += hits.any(dim=1).float().mean().item()
