
import numpy as np
import pytest
import torch

from minisora.diffusion import GaussianDiffusion, betas_for, space_timesteps
from models.latte import Latte, make_config
from models.stdit import STDiT, STDiTConfig


def test_schedules_and_respacing():
    b = betas_for("linear", 1000)
    assert np.isclose(b[0], 1e-4) and np.isclose(b[-1], 0.02)
    assert np.isclose(np.sqrt(np.prod(1 - b)), 0.0064, atol=2e-4)  # upstream's sqrt(alpha_bar_T)
    cos = betas_for("cosine", 1000)
    assert (cos > 0).all() and (cos <= 0.999).all()
    d = GaussianDiffusion(b)
    r = d.respaced(10)
    assert r.timestep_map.tolist() == space_timesteps(1000, 10) and r.num_timesteps == 10
    # respaced chain keeps the marginals: alpha_bar at the kept steps is unchanged
    assert np.allclose(r.alphas_cumprod, d.alphas_cumprod[r.timestep_map.numpy()])
    # a respaced chain (iddpm.py --diffusion_steps 50) respaces again from the base chain (sample.py --steps 10)
    rr = GaussianDiffusion.create("linear", 1000, respace=50).respaced(10)
    assert rr.timestep_map.tolist() == r.timestep_map.tolist() and np.allclose(rr.alphas_cumprod, r.alphas_cumprod)


def test_q_sample_and_posterior_closed_form():
    d = GaussianDiffusion(betas_for("linear", 100))
    x0, noise = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    t = torch.tensor([0, 50, 99])
    acp = torch.tensor(d.alphas_cumprod)[t].float().view(-1, 1, 1)
    assert torch.allclose(d.q_sample(x0, t, noise), acp.sqrt() * x0 + (1 - acp).sqrt() * noise, atol=1e-6)
    xt = d.q_sample(x0, t, noise)
    mean, var, _ = d.q_posterior(x0, xt, t)
    beta = torch.tensor(d.betas)[t].float().view(-1, 1, 1)
    acp_prev = torch.tensor(np.append(1.0, d.alphas_cumprod[:-1]))[t].float().view(-1, 1, 1)
    want_mean = (acp_prev.sqrt() * beta / (1 - acp)) * x0 + ((1 - beta).sqrt() * (1 - acp_prev) / (1 - acp)) * xt
    assert torch.allclose(mean, want_mean, atol=1e-5)
    assert torch.allclose(var, beta * (1 - acp_prev) / (1 - acp), atol=1e-7)
    assert torch.allclose(d.predict_x0(xt, t, noise), x0, atol=1e-4)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_loss_falls_on_tiny_overfit(learn_sigma):
    torch.manual_seed(0)
    model = STDiT(STDiTConfig(input_size=(2, 4, 4), in_channels=2, hidden_size=32, depth=1, num_heads=2, learn_sigma=learn_sigma))
    d = GaussianDiffusion.create("linear", 1000, learn_sigma)
    x0 = torch.randn(4, 2, 2, 4, 4)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    t = torch.arange(0, 1000, 250)
    torch.manual_seed(1)
    first = d.training_losses(model, x0, t)
    for _ in range(150):
        loss = d.training_losses(model, x0)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.manual_seed(1)
    last = d.training_losses(model, x0, t)  # same t and noise as `first`
    assert last["mse"].mean() < 0.5 * first["mse"].mean(), (first["mse"], last["mse"])
    assert last["loss"].mean() < first["loss"].mean()
    if learn_sigma:
        assert torch.isfinite(last["vb"]).all() and "vb" in first


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "ddpm"])
def test_samplers_deterministic_for_a_seed(sampler):
    torch.manual_seed(0)
    model = Latte(make_config("Latte-T/2", input_size=4, num_frames=2, in_channels=2, hidden_size=32, num_heads=2,
                              learn_sigma=True)).eval()
    d = GaussianDiffusion.create("linear", 1000, True)
    run = lambda: d.sample(model, (1, 2, 2, 4, 4), sampler=sampler, steps=5,  # noqa: E731
                           generator=torch.Generator().manual_seed(7))
    a, b = run(), run()
    assert a.shape == (1, 2, 2, 4, 4) and torch.isfinite(a).all() and torch.equal(a, b)


def test_solver_recovers_a_known_distribution():
    """With the exact epsilon of data concentrated at x0 = c, 20-step DPM-Solver++ and DDIM land on c."""
    d = GaussianDiffusion.create("linear", 1000, False)
    c = torch.tensor([0.5, -0.3]).view(1, 2, 1)
    acp = torch.tensor(d.alphas_cumprod).float()

    def eps(x, t):
        a = acp[t].view(-1, 1, 1)
        return (x - a.sqrt() * c) / (1 - a).sqrt()
    for sampler in ("dpm++", "ddim"):
        x = d.sample(eps, (4, 2, 3), sampler=sampler, steps=20, generator=torch.Generator().manual_seed(0))
        # DDIM's last step lands on the t=0 marginal (alpha_bar_0 = 0.9999: noise std 0.01), DPM++ on x0
        assert torch.allclose(x, c.expand_as(x), atol=5e-2 if sampler == "ddim" else 1e-4), sampler


def test_explicit_cpu_attention_matches_sdpa():
    """layers.attention's explicit path (bf16 on CPU, L <= CPU_EXPLICIT_MAX_LEN) computes what SDPA computes in
    fp32, values and grads, up to bf16 rounding; longer sequences go through SDPA."""
    import torch.nn.functional as F

    from models.layers import CPU_EXPLICIT_MAX_LEN, attention

    torch.manual_seed(0)
    for length in (4, 64, CPU_EXPLICIT_MAX_LEN + 1):
        q, k, v = (torch.randn(3, 2, length, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        out, ref = attention(q, k, v), F.scaled_dot_product_attention(q32, k32, v32)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
        g = torch.randn_like(ref)
        mine = torch.autograd.grad(out, (q, k, v), g.bfloat16())
        theirs = torch.autograd.grad(ref, (q32, k32, v32), g)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a.float(), b, atol=3e-2, rtol=3e-2)
