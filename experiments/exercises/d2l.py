"""The section's own run: D2L's dropout MLP as the book trains it, on every backend side by side."""
from __future__ import annotations

from experiments.entry import Entry

ENTRY = Entry("d2l", "the section's run: 784-256-256-10 MLP, dropout (0.5, 0.5), SGD lr 0.1, batch 256, 10 epochs",
              number=0)
