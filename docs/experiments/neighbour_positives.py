"""Neighbour positives: the second view of a training pixel drawn from one of its neighbours.

Label-scored development script (docs/RESULTS.md, *The two blocks of the readout vector*,
2026-12-03, last paragraph); not in the package. DESIGN.md names neighbour-consistency training
(SCAN, Van Gansbeke et al. 2020) as a direction. Its cheapest form in this objective: each
training pixel's second view is an augmented view of one of its ``NEIGHBOURS`` nearest training
pixels in the same tile, drawn at random each epoch from the tile's generator, instead of a second
view of the pixel itself. Nearness is measured on the pixel's standardised PCA patch
average-pooled to 3 x 3 cells (72 numbers for 8 components), so a partner shares the spectrum
and the layout of its surroundings. Everything else is ``configs/default.yaml``.

The script replaces :func:`sscc_core.training.views.shuffled_views` (which both trainers draw
their views with) in this process only, then runs :func:`cross_view.run`, so its output has the
same rows as ``cross_view.py``'s and the two compare run by run.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/neighbour_positives.py SCENE PROTOCOL SEED OUT.json
    .venv/bin/python docs/experiments/neighbour_positives.py --summary OUT1.json OUT2.json ...
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

import cross_view
import sscc_core.training.views as views
from sscc_core.config import SSCCConfig
from sscc_core.model.augment import augment
from trained_run import run_or_summarise

NEIGHBOURS = 10
POOLED_CELLS = 3


def neighbour_views(patches: torch.Tensor, cfg: SSCCConfig, gen: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`sscc_core.training.views.shuffled_views`, with row i's second view drawn from
    a random one of the ``NEIGHBOURS`` nearest other patches of ``patches[order[i]]``.

    Args:
        patches: ``(N, C, P, P)`` patches of one tile.
        cfg: Run configuration (``augment``).
        gen: The tile's generator: the order, then the partners, then the two augmentations.

    Returns:
        ``(view_a, view_b)``, each ``(N, C, P, P)``.
    """
    order = torch.randperm(len(patches), generator=gen)
    n = len(patches)
    partner = torch.arange(n)
    if n > NEIGHBOURS:
        pooled = F.adaptive_avg_pool2d(patches, POOLED_CELLS).reshape(n, -1).numpy()
        nearest = NearestNeighbors(n_neighbors=NEIGHBOURS + 1).fit(pooled).kneighbors(pooled, return_distance=False)
        pick = torch.randint(NEIGHBOURS, (n,), generator=gen)
        partner = torch.from_numpy(nearest[:, 1:])[torch.arange(n), pick]
    return augment(patches[order], cfg.augment, gen), augment(patches[partner[order]], cfg.augment, gen)


if __name__ == "__main__":
    views.shuffled_views = neighbour_views
    run_or_summarise(__doc__.splitlines()[0], cross_view.run, cross_view.summary)
