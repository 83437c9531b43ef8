"""Test accuracy."""

from __future__ import annotations

from collections.abc import Callable

import torch

TEST_BATCH = 500  # eval-mode accuracy does not depend on the batch size; larger batches are faster


@torch.no_grad()
def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of `predict` over normalised test inputs, with one host sync in all."""
    correct = torch.zeros((), dtype=torch.long, device=inputs.device)
    for start in range(0, inputs.shape[0], TEST_BATCH):
        logits = predict(inputs[start:start + TEST_BATCH])
        correct += (logits.argmax(dim=1) == labels[start:start + TEST_BATCH]).sum()
    return 100.0 * correct.item() / inputs.shape[0]
