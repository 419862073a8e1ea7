"""The two training objectives shared by train_dit.py, iddpm.py and sample.py (`--objective eps | rf`).

eps (GaussianDiffusion): discrete-time DDPM (T base steps, linear or cosine betas) with epsilon prediction
and, optionally, learned-range variance trained with the improved-DDPM hybrid loss (MSE on epsilon + lambda *
VLB with the mean detached). Samplers: ancestral DDPM, deterministic DDIM and DPM-Solver++(2M) (diffusers),
all on `steps` timesteps of the chain picked quadratically (denser near the data, DDIM's "quadratic"
selection): evenly spaced steps leave a last step too coarse for fine detail (25 evenly spaced DPM-Solver++
steps gave 0.34x the std of N(mu, 0.05^2) data from its exact epsilon; see tests/test_diffusion.py).

rf (RectifiedFlow): x_t = (1 - t) x0 + t noise, t ~ logit-normal(0, 1) (as SD3), the model predicts the
velocity noise - x0 (MSE) and sees the timestep t * 1000. Samplers: Euler and Heun from t = 1 to 0.

Both expose sample(model, shape, sampler, steps, ...) and resolve_sampler(name); `make_diffusion(dict)`
builds either from a checkpoint's `diffusion` settings (no `objective` key: eps).
Tensors: x (B, C, ...) with the channel axis at dim 1.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

EPS_SAMPLERS = ("dpm++", "ddim", "ddpm")
RF_SAMPLERS = ("euler", "heun")
_ALIASES = {"dpmsolver++": "dpm++", "dpm": "dpm++"}
_noted: set[str] = set()


def note_once(msg: str) -> None:
    """Print a one-line note the first time it comes up in this process."""
    if msg not in _noted:
        _noted.add(msg)
        print(msg, flush=True)


def make_diffusion(cfg: dict) -> "GaussianDiffusion | RectifiedFlow":
    """The objective described by a checkpoint's `diffusion` dict ({'objective': 'eps' | 'rf', ...}; older
    checkpoints without 'objective' are eps)."""
    objective = cfg.get("objective", "eps")
    if objective == "rf":
        if cfg.get("learn_sigma"):
            raise ValueError("rectified flow (objective rf) predicts a velocity: learn_sigma must be off")
        return RectifiedFlow()
    if objective == "eps":
        return GaussianDiffusion.create(cfg.get("schedule", "linear"), cfg.get("steps", 1000), cfg.get("learn_sigma", False),
                                        cfg.get("respace"))
    raise ValueError(f"unknown diffusion objective {objective!r} (eps | rf)")


def sampling_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` distinct chain indices, descending from num_timesteps - 1 to 0, spaced quadratically
    (t_i ~ (T - 1) (1 - i / (steps - 1))^2, DDIM's 'quadratic' selection): dense where the noise is small,
    so the last steps resolve fine detail. steps >= num_timesteps: every index."""
    if steps >= num_timesteps:
        return list(range(num_timesteps - 1, -1, -1))
    if steps <= 1:
        return [num_timesteps - 1]
    out: list[int] = []
    for i in range(steps):
        t = max(int(round((num_timesteps - 1) * (1 - i / (steps - 1)) ** 2)), steps - 1 - i)  # room for the rest
        out.append(min(t, out[-1] - 1) if out else t)
    return out


def betas_for(schedule: str, steps: int = 1000) -> np.ndarray:
    if schedule == "linear":  # Ho et al., scaled so any T spans the same range
        scale = 1000 / steps
        return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    if schedule == "cosine":  # Nichol & Dhariwal
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)], np.float64)
    raise ValueError(f"unknown noise schedule {schedule!r} (linear | cosine)")


def space_timesteps(num_steps: int, respace: int) -> list[int]:
    """`respace` evenly spaced timesteps out of num_steps (always including 0 and num_steps - 1)."""
    if not 1 <= respace <= num_steps:
        raise ValueError(f"cannot respace {num_steps} steps to {respace}")
    return sorted({int(round(x)) for x in np.linspace(0, num_steps - 1, respace)})


def _gather(a: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return a.to(t.device)[t].float().view(-1, *([1] * (ndim - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_nll(x, means, log_scales):
    """NLL of x (in [-1, 1], 256 bins) under a discretised Gaussian (improved-DDPM decoder term)."""
    centered = x - means
    inv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv * (centered + 1 / 255))
    cdf_min = _approx_std_normal_cdf(inv * (centered - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    log_probs = torch.where(x < -0.999, log_cdf_plus,
                            torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))
    return -log_probs


class GaussianDiffusion:
    """Epsilon-prediction diffusion (objective 'eps') on a chain of `timesteps` (a subset of the base T steps
    when respaced).

    `timestep_map[i]` is the base-chain index of step i: models always see base-chain times, so a model
    trained on 1000 steps samples on any respaced chain.
    """

    objective = "eps"

    def __init__(self, betas: np.ndarray, learn_sigma: bool = False, timesteps: list[int] | None = None,
                 vlb_weight: float = 1.0):
        base = np.asarray(betas, np.float64)
        self.num_base_steps = len(base)
        self.learn_sigma, self.vlb_weight = learn_sigma, vlb_weight
        use = timesteps or list(range(len(base)))
        acp_base = np.cumprod(1.0 - base)
        self.base_alphas_cumprod = acp_base  # the full chain, so that a respaced chain can be respaced again
        acp = acp_base[use]
        prev = np.append(1.0, acp[:-1])
        betas = 1 - acp / prev
        self.timestep_map = torch.tensor(use, dtype=torch.long)
        self.num_timesteps = len(betas)
        self.betas = betas
        self.alphas_cumprod = acp
        t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
        self.sqrt_acp, self.sqrt_1m_acp = t(np.sqrt(acp)), t(np.sqrt(1 - acp))
        self.sqrt_recip_acp, self.sqrt_recipm1_acp = t(np.sqrt(1 / acp)), t(np.sqrt(1 / acp - 1))
        post_var = betas * (1 - prev) / (1 - acp)
        self.posterior_variance = t(post_var)
        self.posterior_log_var = t(np.log(np.append(post_var[1], post_var[1:])) if len(post_var) > 1 else np.log(np.maximum(post_var, 1e-20)))
        self.post_c1 = t(betas * np.sqrt(prev) / (1 - acp))
        self.post_c2 = t((1 - prev) * np.sqrt(1 - betas) / (1 - acp))
        self.log_betas = t(np.log(betas))

    @classmethod
    def create(cls, schedule: str = "linear", steps: int = 1000, learn_sigma: bool = False, respace: int | None = None):
        betas = betas_for(schedule, steps)
        ts = space_timesteps(steps, respace) if respace and respace != steps else None
        return cls(betas, learn_sigma, ts)

    def respaced(self, steps: int) -> "GaussianDiffusion":
        """The same process on `steps` evenly spaced base timesteps (for faster ancestral sampling)."""
        base = betas_from_acp(self.base_alphas_cumprod)
        return GaussianDiffusion(base, self.learn_sigma, space_timesteps(self.num_base_steps, steps), self.vlb_weight)

    # -------------------------------------------------------------------------------- forward
    def q_sample(self, x0, t, noise):
        return _gather(self.sqrt_acp, t, x0.ndim) * x0 + _gather(self.sqrt_1m_acp, t, x0.ndim) * noise

    def q_posterior(self, x0, xt, t):
        mean = _gather(self.post_c1, t, x0.ndim) * x0 + _gather(self.post_c2, t, x0.ndim) * xt
        return mean, _gather(self.posterior_variance, t, x0.ndim), _gather(self.posterior_log_var, t, x0.ndim)

    def predict_x0(self, xt, t, eps):
        return _gather(self.sqrt_recip_acp, t, xt.ndim) * xt - _gather(self.sqrt_recipm1_acp, t, xt.ndim) * eps

    # ------------------------------------------------------------------------------ reverse
    def split_output(self, out: torch.Tensor):
        if self.learn_sigma:
            eps, v = out.chunk(2, dim=1)
            return eps, v
        return out, None

    def p_mean_variance(self, model_out, xt, t, clip_x0: float | None = None):
        eps, v = self.split_output(model_out.float())
        if v is not None:  # learned range between beta_t and the posterior variance (log space)
            frac = (v + 1) / 2
            min_log, max_log = _gather(self.posterior_log_var, t, xt.ndim), _gather(self.log_betas, t, xt.ndim)
            log_var = frac * max_log + (1 - frac) * min_log
        else:  # fixed large variance: beta_t (posterior variance at t=0)
            lv = torch.cat([self.posterior_log_var[1:2], self.log_betas[1:]]) if self.num_timesteps > 1 else self.posterior_log_var
            log_var = _gather(lv, t, xt.ndim)
        x0 = self.predict_x0(xt, t, eps)
        if clip_x0:
            x0 = x0.clamp(-clip_x0, clip_x0)
        mean, _, _ = self.q_posterior(x0, xt, t)
        return mean, log_var, x0, eps

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """Base-chain timestep given to the model for chain index t."""
        return self.timestep_map.to(t.device)[t]

    def timestep_fraction(self, t: torch.Tensor) -> torch.Tensor:
        """Chain index t as a noise level in [0, 1) (0: clean), for loss-by-timestep-quartile logging."""
        return t.float() / self.num_timesteps

    # --------------------------------------------------------------------------------- loss
    def training_losses(self, model: Callable, x0: torch.Tensor, t: torch.Tensor | None = None, **model_kwargs) -> dict:
        """Per-sample losses: {'loss', 'mse', 'vb' (learned sigma only), 't'}."""
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        out = model(xt, self.model_t(t), **model_kwargs).float()
        eps, v = self.split_output(out)
        mse = (eps - noise).pow(2).flatten(1).mean(1)
        terms = {"mse": mse, "t": t}
        if v is not None:
            frozen = torch.cat([eps.detach(), v], dim=1)  # VLB trains the variance only
            terms["vb"] = self.vb_term(frozen, x0, xt, t) * self.num_timesteps / 1000.0
            terms["loss"] = mse + self.vlb_weight * terms["vb"]
        else:
            terms["loss"] = mse
        return terms

    def vb_term(self, model_out, x0, xt, t):
        true_mean, _, true_log_var = self.q_posterior(x0, xt, t)
        mean, log_var, _, _ = self.p_mean_variance(model_out, xt, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1) / math.log(2.0)
        nll = discretized_gaussian_nll(x0, mean, 0.5 * log_var).flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    # ----------------------------------------------------------------------------- samplers
    def resolve_sampler(self, sampler: str | None) -> str:
        """The sampler name to use (None: dpm++); euler/heun belong to rectified-flow models."""
        name = _ALIASES.get(sampler, sampler) if sampler else "dpm++"
        if name in RF_SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is for rectified-flow (objective rf) models; this epsilon model "
                             f"samples with {' | '.join(EPS_SAMPLERS)}")
        if name not in EPS_SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} ({' | '.join(EPS_SAMPLERS)})")
        return name

    def sampling_chain(self, steps: int) -> "GaussianDiffusion":
        """This process on `steps` of this chain's timesteps (sampling_timesteps: denser near the data), for
        ancestral sampling; learned variances are respaced with it. steps >= the chain: the chain itself."""
        if steps >= self.num_timesteps:
            return self
        use = self.timestep_map[sampling_timesteps(self.num_timesteps, steps)].tolist()
        return GaussianDiffusion(betas_from_acp(self.base_alphas_cumprod), self.learn_sigma, sorted(use), self.vlb_weight)

    def _noise(self, shape, noise, generator, device):
        return noise if noise is not None else torch.randn(shape, generator=generator, device=device)

    def _steps_for_chain(self, steps: int, sampler: str) -> int:
        if steps > self.num_timesteps:
            note_once(f"[diffusion] {sampler}: {steps} steps asked on a {self.num_timesteps}-step chain; "
                      f"using {self.num_timesteps}")
            return self.num_timesteps
        return max(1, steps)

    @torch.no_grad()
    def ddpm_sample(self, model: Callable, shape, noise=None, generator=None, device="cpu", progress=False,
                    clip_x0: float | None = None, **model_kwargs):
        """Ancestral sampling over this whole chain (sample(..., 'ddpm', steps) picks the sub-chain)."""
        x = self._noise(shape, noise, generator, device)
        steps = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc="ddpm", leave=False)
        for i in steps:
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            mean, log_var, _, _ = self.p_mean_variance(model(x, self.model_t(t), **model_kwargs), x, t, clip_x0)
            z = torch.randn(x.shape, generator=generator, device=x.device) if i > 0 else 0
            x = mean + (0.5 * log_var).exp() * z
        return x

    @torch.no_grad()
    def ddim_sample(self, model: Callable, shape, steps: int = 50, noise=None, generator=None, device="cpu",
                    progress=False, **model_kwargs):
        """Deterministic DDIM (eta = 0) on sampling_timesteps(chain, steps); the last step returns the x0
        prediction at t = 0 (alpha_bar = 1)."""
        ts = sampling_timesteps(self.num_timesteps, self._steps_for_chain(steps, "ddim"))
        acp = torch.tensor(self.alphas_cumprod, dtype=torch.float32, device=device)
        x = self._noise(shape, noise, generator, device).float()
        it = range(len(ts))
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc="ddim", leave=False)
        for i in it:
            t = torch.full((x.shape[0],), ts[i], device=x.device, dtype=torch.long)
            eps, _ = self.split_output(model(x, self.model_t(t), **model_kwargs).float())
            a = acp[ts[i]]
            a_next = acp[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=x.device)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x

    @torch.no_grad()
    def solver_sample(self, model: Callable, shape, steps: int = 25, sampler: str = "dpm++", noise=None,
                      generator=None, device="cpu", progress=False, **model_kwargs):
        """DPM-Solver++(2M) (diffusers) or DDIM on this chain's betas, at sampling_timesteps(chain, steps) (clamped
        to the chain's length), down to sigma = 0 (first-order last step)."""
        if sampler == "ddim":
            return self.ddim_sample(model, shape, steps, noise, generator, device, progress, **model_kwargs)
        if sampler not in ("dpm++", "dpmsolver++", "dpm"):
            raise ValueError(f"unknown sampler {sampler!r} (ddpm | ddim | dpm++)")
        from diffusers import DPMSolverMultistepScheduler

        sched = DPMSolverMultistepScheduler(num_train_timesteps=self.num_timesteps, trained_betas=self.betas.tolist(),
                                            algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)
        sched.set_timesteps(timesteps=sampling_timesteps(self.num_timesteps, self._steps_for_chain(steps, sampler)),
                            device=device)
        x = self._noise(shape, noise, generator, device) * sched.init_noise_sigma
        it = sched.timesteps
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=sampler, leave=False)
        for t in it:
            tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            eps, _ = self.split_output(model(x, self.model_t(tt), **model_kwargs).float())
            x = sched.step(eps, t, x).prev_sample
        return x

    def sample(self, model, shape, sampler: str = "dpm++", steps: int = 25, **kw):
        """One entry point: sampler in {ddpm, ddim, dpm++} (resolve_sampler), `steps` model evaluations (at most
        the chain's length: more are clamped, with a note)."""
        sampler = self.resolve_sampler(sampler)
        if sampler == "ddpm":
            return self.sampling_chain(steps).ddpm_sample(model, shape, **kw)
        return self.solver_sample(model, shape, steps, sampler, **kw)


def betas_from_acp(acp: np.ndarray) -> np.ndarray:
    prev = np.append(1.0, acp[:-1])
    return 1 - acp / prev


class RectifiedFlow:
    """Rectified flow (objective 'rf'): x_t = (1 - t) x0 + t noise for t in [0, 1] (0: data, 1: noise),
    t ~ logit-normal(mean, std) in training (SD3: mean 0, std 1); the model predicts the velocity
    dx_t/dt = noise - x0 (MSE) from x_t and t * time_scale (the sinusoidal timestep embedding expects ~0..1000).
    Samplers integrate the ODE from t = 1 (pure noise) to 0 on a uniform grid: 'euler' (steps model calls)
    or 'heun' (2 * steps). The model's output has C channels (no learned variance)."""

    objective = "rf"
    learn_sigma = False

    def __init__(self, time_scale: float = 1000.0, logit_mean: float = 0.0, logit_std: float = 1.0):
        self.time_scale, self.logit_mean, self.logit_std = time_scale, logit_mean, logit_std

    def sample_t(self, n: int, device) -> torch.Tensor:
        return torch.sigmoid(torch.randn(n, device=device) * self.logit_std + self.logit_mean)

    def interpolate(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = t.float().view(-1, *([1] * (x0.ndim - 1)))
        return (1 - t) * x0 + t * noise

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep the model sees for flow time t in [0, 1]."""
        return t.float() * self.time_scale

    def timestep_fraction(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()

    def training_losses(self, model: Callable, x0: torch.Tensor, t: torch.Tensor | None = None, **model_kwargs) -> dict:
        """Per-sample losses: {'loss', 'mse', 't'} (t in [0, 1])."""
        if t is None:
            t = self.sample_t(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        out = model(self.interpolate(x0, t, noise), self.model_t(t), **model_kwargs).float()
        if out.shape != x0.shape:
            raise ValueError(f"rectified flow needs a model output shaped like its input {tuple(x0.shape)}, got "
                             f"{tuple(out.shape)} (learn_sigma must be off)")
        mse = (out - (noise - x0.float())).pow(2).flatten(1).mean(1)
        return {"loss": mse, "mse": mse, "t": t}

    def resolve_sampler(self, sampler: str | None) -> str:
        """euler | heun (None: euler); an epsilon-model sampler (dpm++, ddim, ddpm) becomes euler, with a note."""
        if not sampler:
            return "euler"
        if sampler in RF_SAMPLERS:
            return sampler
        if _ALIASES.get(sampler, sampler) in EPS_SAMPLERS:
            note_once(f"[diffusion] {sampler} is an epsilon-model sampler; this rectified-flow model samples with euler")
            return "euler"
        raise ValueError(f"unknown sampler {sampler!r} ({' | '.join(RF_SAMPLERS)})")

    @torch.no_grad()
    def sample(self, model: Callable, shape, sampler: str = "euler", steps: int = 25, noise=None, generator=None,
               device="cpu", progress=False, **model_kwargs) -> torch.Tensor:
        """Integrate dx/dt = v(x, t) from t = 1 (x = noise) to t = 0 over `steps` uniform intervals."""
        sampler = self.resolve_sampler(sampler)
        x = (noise if noise is not None else torch.randn(shape, generator=generator, device=device)).float()
        grid = torch.linspace(1.0, 0.0, max(1, steps) + 1, dtype=torch.float64).tolist()

        def v(x, t):
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
            return model(x, self.model_t(tt), **model_kwargs).float()
        it = range(len(grid) - 1)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=sampler, leave=False)
        for i in it:
            t, t_next = grid[i], grid[i + 1]
            d = v(x, t)
            x_next = x + (t_next - t) * d
            if sampler == "heun":  # trapezoidal correction with the slope at the Euler prediction
                x_next = x + (t_next - t) * 0.5 * (d + v(x_next, t_next))
            x = x_next
        return x
