"""The v* / z* optimisation loop of kmeng01/rome ``compute_v.py`` and kmeng01/memit ``compute_z.py``,
re-implemented once for the parity tests (test_rome_parity.py, test_memit_reference.py).

Both references run the same loop: loss = NLL + ``kl_factor`` KL(P_new || P_init) on "{subject} is a"
(``kl_div(log_init, log_new, log_target=True)``) + ``v_weight_decay`` ||delta|| / ||init||^2; stop
once the total loss is below 5e-2 or at the last step (before stepping); Adam; then clamp
``||delta|| <= clamp_norm_factor ||init||``. They differ only in what ``init`` is (the MLP output for
ROME, the block's output for MEMIT) and where delta is added, which the caller's forward decides.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F


def reference_loop(hp: Any, delta: torch.Tensor, state: dict,
                   forward: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Runs the loop on ``delta``; ``forward()`` returns (nll, KL-prompt log-probs (1, V)) and sets
    ``state["init"]`` on its first call. Returns the number of steps (losses computed)."""
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    it = 0
    for it in range(hp.v_num_grad_steps):
        opt.zero_grad()
        nll, kl_log_probs = forward()
        if "kl_init" not in state:
            state["kl_init"] = kl_log_probs.detach().clone()
        kl = hp.kl_factor * F.kl_div(state["kl_init"], kl_log_probs, log_target=True, reduction="batchmean")
        loss = nll + kl + hp.v_weight_decay * (delta.norm() / state["init"].norm() ** 2)
        if loss < 5e-2 or it == hp.v_num_grad_steps - 1:
            break
        loss.backward()
        opt.step()
        max_norm = hp.clamp_norm_factor * state["init"].norm()
        if delta.norm() > max_norm:
            with torch.no_grad():
                delta[...] = delta * max_norm / delta.norm()
    return it + 1
