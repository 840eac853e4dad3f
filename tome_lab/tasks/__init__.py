"""Embedded tasks in the ToMe paper's regimes, built offline from the bundled MNIST digits.

Each module registers its dataset in ``tome_lab.registry.DATASETS`` and its model with timm
on import; importing this package imports them all. Nothing below names this package in an
import: ``tome_lab.registry`` declares it as a plug-in source, imported by the first dataset
lookup and by ``tome_lab.models`` for timm (``registry.TIMM_MODELS``).

- ``clutter`` / ``vit_clutter``: a digit among clutter on a 56x56 canvas; 196 patch tokens,
  DeiT's count at 224 px with 16 px patches.
- ``spoken_digits`` / ``vit_audio_digits``: spoken digits synthesised with espeak-ng as log-mel
  spectrograms; 128 time-frequency patch tokens, the AudioMAE layout.
- ``dots`` / ``vit_dots``: count the red dots among distractor dots on a 56x56 RGB canvas
  (procedural, no MNIST); 196 patch tokens, and the answer is how many patches carry a dot.
"""

from __future__ import annotations

from tome_lab.registry import import_submodules

import_submodules(__name__)
