"""Temporary changes around a model's forward pass, undone on exit even when the pass raises.

- :func:`eval_mode`: the model in eval mode, then every module's *own* training flag restored (a BatchNorm
  the user froze in eval mode inside a model in training mode stays frozen; ``model.train(was_training)``
  would unfreeze it).
- :func:`attached_hooks`: forward pre-hooks and forward hooks registered, then removed.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

from torch import nn

Hook = Callable[..., object]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block (yielded); each module's training flag restored after it (by its
    own ``train(flag)``, parents first, so a module whose ``train`` does more than set the flag is undone too)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:  # pre-order: a child's own call comes after its parent's recursive one
            m.train(training)


@contextlib.contextmanager
def attached_hooks(pre: Iterable[tuple[nn.Module, Hook]] = (),
                   post: Iterable[tuple[nn.Module, Hook]] = ()) -> Iterator[None]:
    """``pre``: (module, hook(module, inputs)) forward pre-hooks; ``post``: (module, hook(module, inputs,
    output)) forward hooks; registered in that order for the block and removed after it."""
    handles = []
    try:
        handles += [m.register_forward_pre_hook(h) for m, h in pre]
        handles += [m.register_forward_hook(h) for m, h in post]
        yield
    finally:
        for h in handles:
            h.remove()
