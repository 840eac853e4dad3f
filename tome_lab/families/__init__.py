"""Model-family adapters beyond timm's ``VisionTransformer`` (which ``tome_lab.patch`` owns):
one file each, each a :class:`tome_lab.engine.Family` registered in
``tome_lab.registry.FAMILIES``. An adapter imports its library only when asked about a model,
so the core install, without the optional extras, imports this package without error.
"""

from __future__ import annotations

from tome_lab.registry import import_submodules

import_submodules(__name__)
