"""Per-evaluation affine coefficients of a whole sampling run, computed once (float64) per grid.

Every step of the Euler-Maruyama, exponential-Euler (localization) and DDRaM samplers of a linear SDE
is an *affine* map of its inputs: the state, the field value, the Gaussian noise (and, for DDRaM's end
point, the start state and the midpoint noise).  The conversion of a network output into the field
(``epsilon -> denoiser`` ...) is affine in the output and the state too (docs/maths.md, prediction
types).  So a whole run is a table of coefficients, one row per network evaluation, that
:class:`AffinePlan` computes in one vectorised pass by *probing* the samplers' own step functions with
basis inputs (so the plan cannot drift from the reference implementation) and that
:class:`lit_diffusion.integrations.scheduler.SDEScheduler` then applies with a few fused tensor operations per
``step`` call:

* single-evaluation steps: ``x_s = cx x + cf F + c0 + cz z`` with ``F = A x + B out + C``;
* DDRaM stage 1: ``x_tau = cx x_t + cf F_t + c0 + cz z1``; stage 2:
  ``x_s = dx x_t + df F_tau + d0 + dz1 z1 + dz2 z2``;
* multistep step ``k``: ``x_{k+1} = cx x_k + c0 + cz z_k + sum_j cD_j D_{k-j}`` over the last four
  denoiser values (the polynomial's nodes and, with the corrector, the redone previous step: its
  start state and noise cancel out of the correction, so the step stays affine in the values given).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..core.parametrizations import convert
from ..core.sdes import LinearSDE
from ..core.sdes import compute_dtype
from ..core.utils import randn
from .steps import corrector_kappa, langevin_corrector_step

__all__ = ["AffinePlan", "supports"]

F64 = torch.float64


def supports(stepper) -> bool:
    """Whether a run of ``stepper`` can be planned: the affine samplers, and predictor-corrector with a
    one-evaluation predictor and the corrector after it (its Langevin steps are applied directly,
    with precomputed conversions, ``kappa`` and ``sigma``).  Not moment matching."""
    from .multistep import MultistepStepper
    from .steppers import DDRaMStepper, EulerStepper, ExpEulerStepper, LocalizationStepper, PCStepper

    if type(stepper) is PCStepper:
        return stepper.corrector == "after" and type(stepper.predictor) in (EulerStepper, ExpEulerStepper)
    if getattr(stepper, "starts_at_midpoint", False):
        return False  # its move to the midpoint reads the previous step's evaluation: the stepper runs it
    return type(stepper) in (EulerStepper, ExpEulerStepper, LocalizationStepper, DDRaMStepper, MultistepStepper)


def _conversion(sde: LinearSDE, declared: str, kind: str, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(A, B, C)`` with ``convert(out, declared, kind, x, t) = A x + B out + C`` at each time of ``t``."""
    e = t.numel()
    z, o = torch.zeros(e, 1, dtype=F64), torch.ones(e, 1, dtype=F64)
    c = convert(z, declared, kind, z, t, sde)
    a = convert(z, declared, kind, o, t, sde) - c
    b = convert(o, declared, kind, z, t, sde) - c
    return a[:, 0], b[:, 0], c[:, 0]


def _probe(stepper, t: Tensor, s: Tensor, u: Optional[Tensor], probes: list[dict]) -> list[tuple[Tensor, Tensor]]:
    """Run every step of the grid once per probe, all probes in one batch: ``probes[i]`` gives the
    constant inputs ``x, F0, z1`` (and ``F1, z2`` for two-stage steps).  Returns, per probe, the state
    after the first evaluation (``x_eval``: the midpoint, or the end point of a one-stage step) and the
    end point (``None`` for one-stage steps)."""
    n, p = t.numel(), len(probes)

    def col(key):
        return torch.cat([torch.full((n, 1), float(pr.get(key, 0.0)), dtype=F64) for pr in probes])

    rep = lambda v: None if v is None else v.repeat(p)  # noqa: E731
    st = stepper.start(col("x"), rep(t), rep(s), **({} if u is None else {"u": rep(u.to(F64))}))
    st.advance(col("F0"), noise=col("z1") if st.noise_needed else None)
    first = (st.x if st.done else st.x_eval)[:, 0].to(F64).reshape(p, n)
    if st.done:
        return [(first[i], None) for i in range(p)]
    st.advance(col("F1"), noise=col("z2") if st.noise_needed else None)
    end = st.x[:, 0].to(F64).reshape(p, n)
    return [(first[i], end[i]) for i in range(p)]


#: denoiser values a multistep step reads: the order-3 polynomial's nodes and the corrector's extra one
MULTISTEP_HISTORY = 4


def _multistep_rows(stepper, grid: Tensor, final_jump: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, cD, stochastic)`` of a multistep run on ``grid``, probed on the stepper itself: one run
    with eight scalar probes (all inputs zero; the state 1 at every step; the noise 1 at every step;
    ``D_m = 1`` at the evaluations ``m ≡ r mod 5``, one probe per residue ``r``), each step fed the
    probe's own inputs, so that step ``k``'s output is affine in exactly the state, noise and denoiser
    values given to it; a step reads only the last four values, which fall in four distinct residues.
    ``rows[k] = (cx, 0, c0, cz)`` in :attr:`AffinePlan.mid`'s layout; ``cD[k, j]``: the coefficient of
    ``D_{k-j}``."""
    n = grid.numel() - 1
    R = MULTISTEP_HISTORY + 1
    P = 3 + R
    stepper.reset(grid, final_jump)
    out = torch.empty(n, P, dtype=F64)
    stochastic = torch.zeros(n, dtype=torch.bool)
    x, z = torch.zeros(P, 1, dtype=F64), torch.zeros(P, 1, dtype=F64)
    x[1], z[2] = 1.0, 1.0
    for k in range(n):
        F = torch.zeros(P, 1, dtype=F64)
        F[3 + k % R] = 1.0
        st = stepper.start(x, grid[k], grid[k + 1])
        stochastic[k] = bool(st.noise_needed)
        st.advance(F, noise=z if stochastic[k] else None)
        out[k] = st.x[:, 0].to(F64)
    stepper.reset(grid, final_jump)  # the probes filled its history: a stepper-driven run starts afresh
    c0 = out[:, 0]
    rows = torch.stack([out[:, 1] - c0, torch.zeros_like(c0), c0, out[:, 2] - c0], 1)
    cD = torch.zeros(n, MULTISTEP_HISTORY, dtype=F64)
    for k in range(n):
        for j in range(min(MULTISTEP_HISTORY, k + 1)):
            cD[k, j] = out[k, 3 + (k - j) % R] - c0[k]
    return rows, cD, stochastic


class AffinePlan:
    """The coefficient table of one run (grid ``T = t_0 > ... > t_n``, DDRaM uniforms ``u``)."""

    def __init__(self, stepper, sde: LinearSDE, declared: str, grid: Tensor, u: Optional[Tensor], final_denoise: bool,
                 final_jump: Optional[bool] = None):
        grid = grid.to(F64)
        self.declared = declared
        t, s = grid[:-1], grid[1:]
        n = t.numel()
        self.pc = None
        outer = stepper
        if hasattr(stepper, "n_corrector"):  # predictor-corrector: plan the predictor, keep the corrector's data
            c = int(stepper.n_corrector)
            kappa = corrector_kappa(sde, t, s).to(F64)
            self.pc = dict(n_corrector=c, snr=float(stepper.snr), snr_norm=stepper.snr_norm,
                           kappa=kappa, sigma=sde.sigma(s).to(F64))
            stepper = stepper.predictor
        self.two_stage = bool(getattr(stepper, "needs_midpoint", False))
        self.multistep = None  # a multistep run's rows, noise flags and weights; its denoiser values in self.history
        self.history: list = []
        if self.two_stage:
            times, kinds = self._two_stage(stepper, t, s, u)
        elif hasattr(stepper, "solver_order"):
            times, kinds, self.end = t, ["denoiser"] * n, None
            # final_jump: the run ends with a denoising evaluation (by default: the plan's own final one)
            self.mid, cD, flags = _multistep_rows(stepper, grid, final_denoise if final_jump is None else final_jump)
            # python floats: a step is then a handful of fused scalar-tensor ops (the fast path)
            self.multistep = dict(rows=self.mid[:, [0, 2, 3]].tolist(), stochastic=flags.tolist(),
                                  weights=[[(j, w) for j, w in enumerate(cD[k].tolist()) if w != 0.0] for k in range(n)])
        else:
            times = t
            (b0, _), (bx, _), (bf, _), (bz, _) = _probe(stepper, t, s, None, [{}, {"x": 1}, {"F0": 1}, {"z1": 1}])
            self.mid = torch.stack([bx - b0, bf - b0, b0, bz - b0], 1)
            self.end = None
            kinds = [stepper.field_kind] * n
            if self.pc is not None and self.pc["n_corrector"] > 0:  # each step: predictor at t, correctors at s
                c = self.pc["n_corrector"]
                times = torch.stack([t] + [s] * c, 1).reshape(-1)
                kinds = [k for kind in kinds for k in [kind] + ["score"] * c]
        if final_denoise:
            times = torch.cat([times, grid[-1:].expand(1, *times.shape[1:])])
            kinds.append("denoiser")
        self.times = times
        self.conv = torch.empty(times.shape[0], 3, *times.shape[1:], dtype=F64)  # per-sample midpoints: (evals, 3, B)
        for kind in set(kinds):
            i = torch.tensor([e for e, k in enumerate(kinds) if k == kind])
            abc = torch.stack(_conversion(sde, declared, kind, times[i].reshape(-1)), 1)
            self.conv[i] = abc.reshape(len(i), *times.shape[1:], 3).movedim(-1, 1)
        if final_denoise:
            self.final = self.conv[-1]
        self.conv_floats = self.conv.tolist()
        self.n = n
        self.stochastic = bool(stepper.stochastic)
        self.evals_per_step = int(outer.evals_per_step)
        self._cast: dict = {}
        self.carry = None  # (x_t, first noise) of a two-stage step between its evaluations

    def _two_stage(self, stepper, t: Tensor, s: Tensor, u: Tensor):
        """DDRaM's two tables (midpoint and end point), probed per sub-stepper (``parametrization="auto"``
        picks one per step); returns the times and field kinds of the evaluations.  ``u``: one uniform
        per step ``(n,)`` (shared by the batch: scalar coefficients) or per step and sample ``(n, B)``
        (``sample()``: every table entry is then a ``(B,)`` vector, and so are the midpoint times)."""
        n = t.numel()
        u = u.to(F64).reshape(n, -1)
        B = u.shape[1]
        subs = [stepper.for_step(t[k], s[k]) if hasattr(stepper, "for_step") else stepper for k in range(n)]
        groups: dict = {}
        for k, sub in enumerate(subs):
            groups.setdefault(id(sub), (sub, []))[1].append(k)
        tau = torch.empty(n, B, dtype=F64)
        self.mid, self.end = torch.empty(n, 4, B, dtype=F64), torch.empty(n, 5, B, dtype=F64)
        keys = [{}, {"x": 1}, {"F0": 1}, {"z1": 1}, {"F1": 1}, {"z2": 1}]
        for sub, idx in groups.values():
            i = torch.tensor(idx)
            ti, si, ui = t[i].repeat_interleave(B), s[i].repeat_interleave(B), u[i].reshape(-1)
            tau[i] = torch.as_tensor(sub.midpoint(ti, si, ui), dtype=F64).reshape(-1, B)
            (m0, e0), (mx, ex), (mf, _), (mz, ez1), (_, ef), (_, ez2) = _probe(sub, ti, si, ui, keys)
            self.mid[i] = torch.stack([mx - m0, mf - m0, m0, mz - m0], 1).reshape(-1, B, 4).transpose(1, 2)
            self.end[i] = torch.stack([ex - e0, ef - e0, e0, ez1 - e0, ez2 - e0], 1).reshape(-1, B, 5).transpose(1, 2)
        if B == 1:  # shared by the batch: scalar coefficients
            self.mid, self.end, tau = self.mid[..., 0], self.end[..., 0], tau[:, 0]
        else:
            t = t[:, None].expand(n, B)
        return torch.stack([t, tau], 1).reshape(2 * n, *tau.shape[1:]), [sub.field_kind for sub in subs for _ in range(2)]

    def cast(self, dtype: torch.dtype, device, ndim: int = 1) -> tuple:
        """The coefficient tables in ``dtype`` on ``device`` (cast once per run and cached); per-sample
        entries shaped ``(B, 1, ..., 1)`` to broadcast against a state of ``ndim`` dimensions."""
        key = (dtype, str(device), ndim)
        if key not in self._cast:
            per_sample = self.times.dim() == 2
            self._cast[key] = tuple(
                None if v is None else v.to(device=device, dtype=dtype).reshape(*v.shape, *[1] * (ndim - 1 if per_sample else 0))
                for v in (self.mid, self.end, self.conv, getattr(self, "final", None))
            )
        return self._cast[key]

    def apply(self, out: Tensor, x: Tensor, i: int, k: int, j: int, generator, final: bool) -> Tensor:
        """Evaluation ``i`` (stage ``j`` of step ``k``; ``final``: the final denoising evaluation) of an
        affine sampler from the network output ``out`` at state ``x``: a few fused tensor operations
        on the precomputed coefficients, arithmetic in float32/64.  A two-stage step keeps its start
        and first noise between its two evaluations."""
        dtype = compute_dtype(x)
        mid, end, conv, final_c = self.cast(dtype, x.device, x.dim())
        if out.shape[1:] != x.shape[1:]:
            out = out[:, : x.shape[1]]  # learned-variance output: the variance half is not used
        xd, od = x.to(dtype), out.to(dtype)
        if final:  # final denoise: D(x, t_min)
            a, b, c = final_c
            self.carry = None
            return torch.addcmul(torch.addcmul(c, a, xd), b, od).to(x.dtype)

        def noise():
            return randn(x.shape, generator=generator, device=x.device, dtype=dtype)

        if self.multistep is not None:
            return self._multistep_step(od, xd, i, k, noise).to(x.dtype)
        a, b, c = conv[i]
        F = torch.addcmul(torch.addcmul(c, a, xd), b, od)
        if j > 0 and self.pc is not None:  # a Langevin corrector step at s (F is the score)
            kappa, sigma = self.pc["kappa"][k].to(dtype), self.pc["sigma"][k].to(dtype)
            y = langevin_corrector_step(xd, F, self.pc["snr"], kappa, noise(), self.pc["snr_norm"], sigma)
            return y.to(x.dtype)
        if j == 0:
            cx, cf, c0, cz = mid[k]
            y = torch.addcmul(torch.addcmul(c0, cx, xd), cf, F)
            z1 = None
            if self.stochastic:
                z1 = noise()
                y = y.add_(z1 * cz)
            if self.two_stage:
                self.carry = (xd, z1)
            return y.to(x.dtype)
        if self.carry is None:
            raise ValueError(
                f"evaluation {i} is stage {j} of step {k}, but the step's first evaluation was not given to this "
                "scheduler; start from a step boundary (set_begin_index / index multiple of order)"
            )
        x_t, z1 = self.carry
        dx, df, d0, dz1, dz2 = end[k]
        y = torch.addcmul(torch.addcmul(d0, dx, x_t), df, F)
        if self.stochastic:
            y = y.add_(z1 * dz1).add_(noise() * dz2)
        self.carry = None
        return y.to(x.dtype)

    def _multistep_step(self, out: Tensor, xd: Tensor, i: int, k: int, noise) -> Tensor:
        """Multistep step ``k`` (evaluation ``i``) from the state and the network output: the denoiser
        value ``D = a x + b out + c`` (kept for later steps), then ``cx x + c0 + sum_j w_j D_{k-j} + cz z``."""
        ms = self.multistep
        if k == 0:
            self.history = []
        a, b, c = self.conv_floats[i]
        D = (xd * a).add_(out, alpha=b)
        if c != 0.0:
            D = D.add_(c)
        self.history = [D] + self.history[: MULTISTEP_HISTORY - 1]
        cx, c0, cz = ms["rows"][k]
        y = xd * cx
        if c0 != 0.0:
            y = y.add_(c0)
        for j, w in ms["weights"][k]:
            y = y.add_(self.history[j], alpha=w)
        if ms["stochastic"][k]:
            y = y.add_(noise(), alpha=cz)
        return y
