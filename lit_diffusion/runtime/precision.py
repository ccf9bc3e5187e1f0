"""One network runner for every place a network is called in a chosen precision.

The network may run in bf16/fp16 (autocast) or in its own low-precision weights; what comes back is
always float32, so the SDE and sampler arithmetic downstream never runs in low precision
(docs/maths.md §5). Used by the training step (the Trainer's autocast state), the Accelerate loop (the
Accelerator's autocast) and ``sample.py`` (``--precision``); the sampling field's own
``network_dtype`` option casts the state the same way (:class:`lit_diffusion.core.fields.Field`).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["NetworkRunner"]


class NetworkRunner(nn.Module):
    """``net(x, t[, class_labels])`` in a chosen precision, returned in float32.

    Args:
        net: the network.
        dtype: ``None`` or ``float32``: call the network as it is (an autocast set up around the call
            still applies: Accelerate); ``bfloat16``/``float16``: under ``torch.autocast`` of that dtype.
        prediction_type: what the network predicts (read by fields and losses).
        on_call: called after every evaluation (progress bars).
        autocast_from: a device type: capture the autocast state in force *now* (the Lightning training
            step's) and reproduce it at every call; without autocast the input is cast to the weights'
            dtype (``bf16-true`` weights).
    """

    def __init__(
        self,
        net: nn.Module,
        dtype: Optional[torch.dtype] = None,
        prediction_type: Optional[str] = None,
        on_call: Optional[Callable[[], None]] = None,
        autocast_from: Optional[str] = None,
    ):
        super().__init__()
        self.net = net
        self.prediction_type = prediction_type or getattr(net, "prediction_type", None)
        self.on_call = on_call
        self.cast_to = None
        self.dtype = None if dtype in (None, torch.float32) else dtype
        if autocast_from is not None and torch.is_autocast_enabled(autocast_from):
            self.dtype = torch.get_autocast_dtype(autocast_from)
        elif autocast_from is not None:
            p = next(net.parameters(), None)
            self.cast_to = p.dtype if p is not None else None
        self.last_t: Optional[Tensor] = None

    def forward(self, x: Tensor, t, class_labels=None) -> Tensor:
        if isinstance(t, Tensor):
            self.last_t = t.detach()
        kw = {} if class_labels is None else {"class_labels": class_labels}
        if self.dtype is not None:
            with torch.autocast(x.device.type, dtype=self.dtype):
                out = self.net(x.float(), t, **kw)
        else:
            out = self.net(x if self.cast_to is None else x.to(self.cast_to), t, **kw)
        if self.on_call is not None:
            self.on_call()
        return out.float()
