"""How good are generated Flying MNIST videos, in numbers.

* FMD  -- Fréchet distance between features of generated and real videos, from a small spatio-temporal
  network trained here on real Flying MNIST (supervised by the generator's metadata: which digits are
  present, how many, how fast they move, and whether the frames are in order). Reported with the
  real-vs-real floor and a bootstrap confidence interval.
* legibility -- digits found per frame (connected components of the foreground) and classified by an MNIST
  CNN trained on the bundled digits: the fraction classified with confidence >= 0.9.
* temporal consistency -- digits tracked across frames: identity switches (class changes along a track)
  and the median acceleration in pixels (a constant-velocity-with-bounce motion has ~0 away from bounces).
* FVD (I3D) -- when given the StyleGAN-V I3D TorchScript detector.

Videos here are uint8 (N, T, H, W, 3) numpy arrays or float (N, 3, T, H, W) in [-1, 1] tensors.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FEAT_T, FEAT_R = 16, 64  # the feature network sees 16 frames at 64²
WHERE_T, WHERE_G = 4, 4   # "where the digits move" targets: 4 time quarters x a 4x4 grid


def to_float(videos: np.ndarray) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) -> float (N, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(videos)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)


def fit_clip(x: torch.Tensor, t: int = FEAT_T, r: int = FEAT_R) -> torch.Tensor:
    """Resample (N, 3, T, H, W) to t frames at r² (frames repeated or subsampled evenly)."""
    idx = torch.linspace(0, x.shape[2] - 1, t).round().long()
    x = x[:, :, idx]
    if x.shape[-1] != r:
        n = x.shape[0]
        x = F.interpolate(x.transpose(1, 2).flatten(0, 1), size=(r, r), mode="bilinear", antialias=True,
                          align_corners=False).view(n, t, 3, r, r).transpose(1, 2)
    return x


# ------------------------------------------------------------------------------------ feature net
class FeatureNet(nn.Module):
    """Small 3D CNN -> 256-d features; heads: digits present (10), digit count, mean speed, frames-in-order,
    and where the digits move (WHERE_T time quarters x WHERE_G² cells: is a digit centre there)."""

    def __init__(self, width: int = 32, dim: int = 256):
        super().__init__()
        w = width

        def block(i, o, s):
            return nn.Sequential(nn.Conv3d(i, o, 3, s, 1), nn.GroupNorm(8, o), nn.SiLU())
        self.body = nn.Sequential(block(3, w, (1, 2, 2)), block(w, 2 * w, (2, 2, 2)), block(2 * w, 4 * w, (2, 2, 2)),
                                  block(4 * w, 4 * w, (2, 2, 2)), block(4 * w, dim, (1, 2, 2)))
        self.heads = nn.Linear(dim, 10 + 1 + 1 + 1 + WHERE_T * WHERE_G * WHERE_G)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(fit_clip(x)).mean((2, 3, 4))

    def forward(self, x):
        return self.heads(self.features(x))


def _targets(meta: dict, start: int = 0, frames: int | None = None) -> torch.Tensor:
    """Supervision of one clip (frames [start, start + frames) of a video) from its generator metadata:
    digits present (10), count, mean speed, then the WHERE_T x WHERE_G x WHERE_G occupancy of digit centres."""
    frames = frames or meta["num_frames"] - start
    y = torch.zeros(12 + WHERE_T * WHERE_G * WHERE_G)
    y[meta["labels"]] = 1
    y[10] = len(meta["labels"]) / 2.0
    v = np.asarray(meta["velocities"], np.float64)  # (digits, frames, 2) in generated-frame pixels
    y[11] = float(np.linalg.norm(v, axis=-1).mean()) * FEAT_R / meta["resolution"] / 4.0
    pos = np.asarray(meta["positions"], np.float64)[:, start:start + frames]  # (digits, frames, [x, y]) top-left
    centre = (pos + np.asarray(meta["sizes"], np.float64)[:, None, None] / 2) / meta["resolution"]
    cell = np.clip((centre * WHERE_G).astype(int), 0, WHERE_G - 1)
    quarter = np.arange(pos.shape[1]) * WHERE_T // pos.shape[1]
    where = np.zeros((WHERE_T, WHERE_G, WHERE_G), np.float32)
    for d in range(len(pos)):
        where[quarter, cell[d, :, 1], cell[d, :, 0]] = 1
    y[12:] = torch.from_numpy(where.reshape(-1))
    return y


def train_feature_net(dataset, steps: int = 300, batch_size: int = 16, seed: int = 0, log=print) -> FeatureNet:
    """Train FeatureNet on a VideoDataset(return_metadata=...) whose split has metadata.jsonl."""
    import json

    from torch.utils.data import DataLoader

    from minisora.data import collate_videos, to_model_range
    torch.manual_seed(seed)
    meta = {json.loads(line)["file"]: json.loads(line) for line in open(dataset.dir / "metadata.jsonl")}
    net = FeatureNet()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.01)
    batch_size = min(batch_size, len(dataset))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=1, drop_last=True,
                        persistent_workers=True, collate_fn=collate_videos)
    step = 0
    while step < steps:
        for batch in loader:
            x = fit_clip(to_model_range(batch["video"]) if batch["video"].dtype == torch.uint8 else batch["video"])
            frames = dataset.span
            y = torch.stack([_targets(meta[dataset.files[i].relative_to(dataset.dir).as_posix()], int(s), frames)
                             for i, s in zip(batch["index"], batch["start"])])
            shuffled = torch.rand(len(x)) < 0.5
            for j in torch.nonzero(shuffled).flatten():
                x[j] = x[j][:, torch.randperm(x.shape[2])]
            out = net(x)
            where = F.binary_cross_entropy_with_logits(out[:, 13:], y[:, 12:], reduction="none").mean(1)
            loss = (F.binary_cross_entropy_with_logits(out[:, :10], y[:, :10]) + F.mse_loss(out[:, 10:12], y[:, 10:12])
                    + F.binary_cross_entropy_with_logits(out[:, 12], (~shuffled).float())
                    + (where * ~shuffled).sum() / (~shuffled).sum().clamp_min(1))  # shuffled clips: no trajectory
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                log(f"[features] step {step}/{steps} loss {loss.item():.3f}")
            if step >= steps:
                break
    return net.eval()


@torch.no_grad()
def extract_features(net: FeatureNet, videos: torch.Tensor, batch: int = 16) -> np.ndarray:
    return torch.cat([net.features(videos[i:i + batch]) for i in range(0, len(videos), batch)]).double().numpy()


def standardizer(ref: np.ndarray):
    """Per-dimension z-scoring by the reference (real) features: FMD then does not depend on the feature
    network's arbitrary per-unit scale, so numbers are comparable across feature-net trainings."""
    mu, sd = ref.mean(0), ref.std(0)
    sd = sd + 1e-6 * sd.max() + 1e-12  # dead units do not blow up
    return lambda f: (f - mu) / sd


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½), with the trace term from the eigenvalues of
    S_a^½ S_b S_a^½ (symmetric PSD: stable, no complex sqrtm)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    ra = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(ra @ sb @ ra), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)


def fd_with_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 50, seed: int = 0) -> tuple[float, float, float]:
    """Fréchet distance and a 90% bootstrap interval (resampling both sets)."""
    rng = np.random.default_rng(seed)
    boots = [frechet_distance(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(n_boot)]
    return frechet_distance(a, b), float(np.percentile(boots, 5)), float(np.percentile(boots, 95))


# ------------------------------------------------------------------------------------ legibility
class DigitCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(32 * 49, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


def train_digit_classifier(epochs: int = 4, seed: int = 0, log=print) -> tuple[DigitCNN, float]:
    """MNIST CNN on the bundled 10k digits (9k train / 1k held out), with light scale/shift augmentation.
    Returns (model, held-out accuracy)."""
    from minisora.flying_mnist import load_digits

    torch.manual_seed(seed)
    images, labels = load_digits("bundled")
    x = normalise_digit_crops(torch.from_numpy(images).float().div(255).unsqueeze(1))  # as crops found in frames
    y = torch.from_numpy(labels).long()
    perm = torch.randperm(len(x))
    tr, te = perm[:9000], perm[9000:]
    net = DigitCNN()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for ep in range(epochs):
        order = tr[torch.randperm(len(tr))]
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x[te]).argmax(1) == y[te]).float().mean().item()
    log(f"[legibility] digit classifier held-out accuracy {acc:.3f}")
    return net, acc


def normalise_digit_crops(crops: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) grey in [0, 1] -> (N, 1, 28, 28): tight box, longest side scaled to 20 px, centred (MNIST style)."""
    out = torch.zeros(len(crops), 1, 28, 28)
    for i, c in enumerate(crops):
        ys, xs = torch.nonzero(c[0] > 0.2, as_tuple=True)
        if len(ys) == 0:
            continue
        c = c[:, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        h, w = c.shape[1:]
        s = 20.0 / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        c = F.interpolate(c[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        c = c / c.max().clamp_min(1e-6)
        top, left = (28 - nh) // 2, (28 - nw) // 2
        out[i, :, top:top + nh, left:left + nw] = c
    return out


def connected_components(mask: torch.Tensor, iters: int | None = None) -> torch.Tensor:
    """8-connected labels of a boolean (N, H, W) mask by max-label propagation (0 = background)."""
    n, h, w = mask.shape
    lab = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w).expand(n, h, w).clone() * mask
    for _ in range(iters or h + w):
        new = F.max_pool2d(lab[:, None], 3, 1, 1)[:, 0] * mask
        if torch.equal(new, lab):
            break
        lab = new
    return lab.long()


@torch.no_grad()
def find_digits(frames: np.ndarray, classifier: DigitCNN, threshold: int = 60, min_area: int = 6, max_per_frame: int = 16):
    """Per frame of uint8 (T, H, W, 3): list of (cy, cx, class, confidence, area), one per foreground component
    (the `max_per_frame` largest). Blobs that cannot be a digit (box over half the frame, or more than 60% of
    the box inked: digits are strokes) get class -1 and confidence 0: found, but not legible."""
    grey = torch.from_numpy(frames.max(-1).astype(np.float32) / 255.0)
    labels = connected_components(grey > threshold / 255.0)
    size = max(frames.shape[1:3])
    out = []
    for t in range(len(frames)):
        ids, areas = torch.unique(labels[t], return_counts=True)
        keep = [(int(a), int(i)) for i, a in zip(ids, areas) if i != 0 and a >= min_area]
        comps, crops = [], []
        for area, lab in sorted(keep, reverse=True)[:max_per_frame]:
            ys, xs = torch.nonzero(labels[t] == lab, as_tuple=True)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            h, w = int(y1 - y0), int(x1 - x0)
            digit_like = max(h, w) <= size / 2 and area <= 0.6 * h * w
            comps.append((ys.float().mean().item(), xs.float().mean().item(), area, digit_like))
            if digit_like:
                crops.append((grey[t, y0:y1, x0:x1] * (labels[t, y0:y1, x0:x1] == lab))[None])
        probs = iter(classifier(normalise_digit_crops(crops)).softmax(1)) if crops else iter(())
        dets = []
        for cy, cx, area, digit_like in comps:
            if digit_like:
                conf, cls = next(probs).max(0)
                dets.append((cy, cx, int(cls), float(conf), area))
            else:
                dets.append((cy, cx, -1, 0.0, area))
        out.append(dets)
    return out


def bounce_fit_residuals(track: np.ndarray, min_step: float = 0.5) -> np.ndarray:
    """Residuals (px, per point and axis) of a constant-velocity-with-bounce fit to a track (n, 2) of positions.

    Per axis the track is unfolded at its bounces -- a step whose direction reverses the last clear
    (|step| > min_step) direction; the unfolded step there keeps the previous step, as a bounce keeps the
    speed -- so that a bouncing digit moves on a straight line, and a least-squares line is fitted to it.
    A digit flying and bouncing as in the data has residuals near 0 (centroid noise); jitter or spurious
    reversals bend the unfolded path and grow them."""
    p = np.asarray(track, np.float64)
    t = np.arange(len(p), dtype=np.float64)
    out = np.empty_like(p)
    for ax in range(p.shape[1]):
        v = np.diff(p[:, ax])
        u = [p[0, ax]]
        direction, last = 1.0, 0.0  # unfolding sign; last clear step
        for step in v:
            if abs(step) > min_step and last and np.sign(step) != np.sign(last):
                u.append(u[-1] + direction * last)
                direction = -direction
            else:
                u.append(u[-1] + direction * step)
            if abs(step) > min_step:
                last = step
        u = np.asarray(u)
        slope, icpt = np.polyfit(t, u, 1)
        out[:, ax] = u - (icpt + slope * t)
    return out


def legibility_and_motion(videos: np.ndarray, classifier: DigitCNN, conf: float = 0.9, max_jump: float | None = None) -> dict:
    """Legibility, digits per frame, identity switches per tracked step, and the RMS residual (px) of a
    constant-velocity-with-bounce fit to every track of >= 4 frames (`bounce_fit_residuals`)."""
    n_comp = n_leg = switches = steps = 0
    residuals = []
    for v in videos:
        dets = find_digits(v, classifier)
        jump = max_jump or v.shape[1] / 6
        for d in dets:
            n_comp += len(d)
            n_leg += sum(c >= conf for *_, c, _ in d)
        dets = [[x for x in d if x[2] >= 0] for d in dets]  # track digit-like components only
        tracks = [[det] for det in dets[0]]
        for d in dets[1:]:
            free = list(d)
            for tr in tracks:
                if not free or tr[-1] is None:
                    continue
                cy, cx = tr[-1][0], tr[-1][1]
                j = min(range(len(free)), key=lambda k: (free[k][0] - cy) ** 2 + (free[k][1] - cx) ** 2)
                if math.dist((free[j][0], free[j][1]), (cy, cx)) <= jump:
                    steps += 1
                    switches += int(free[j][2] != tr[-1][2]) if min(free[j][3], tr[-1][3]) >= conf else 0
                    tr.append(free.pop(j))
                else:
                    tr.append(None)
            tracks += [[det] for det in free]
        for tr in tracks:
            pts = []
            for det in tr:
                if det is None:
                    break
                pts.append((det[0], det[1]))
            if len(pts) >= 4:
                residuals.append(bounce_fit_residuals(np.asarray(pts)).ravel())
    frames = sum(len(v) for v in videos)
    return {"legibility": n_leg / max(n_comp, 1), "digits_per_frame": n_comp / max(frames, 1),
            "identity_switch_rate": switches / max(steps, 1), "motion_residual_px": float(np.sqrt(np.mean(np.concatenate(residuals) ** 2))) if residuals else float("nan")}


# ------------------------------------------------------------------------------------------ FVD
@torch.no_grad()
def i3d_features(detector_path: str | Path, videos: torch.Tensor, batch: int = 8) -> np.ndarray:
    """Features of the StyleGAN-V I3D TorchScript detector (i3d_torchscript.pt): input (B, 3, T, H, W) in
    [-1, 1], called with rescale=False, resize=True, return_features=True, as StyleGAN-V's FVD does."""
    det = torch.jit.load(str(detector_path)).eval()
    feats = [det(videos[i:i + batch], rescale=False, resize=True, return_features=True) for i in range(0, len(videos), batch)]
    return torch.cat(feats).double().numpy()
