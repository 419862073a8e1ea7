"""How good are generated Flying MNIST videos, in numbers that follow what a viewer sees.

* FMD  -- Fréchet distance between features of generated and real videos -- a small spatio-temporal network
  trained here on real Flying MNIST (supervised by the generator's metadata: which digits are present, how
  many, how fast they move, where, and whether the frames are in order), plus how coherently frames change
  (`motion_coherence`) -- against a fixed reference of real videos, with its real-vs-real floor at the same
  sample size (`FMD`) and a bootstrap interval.
* legibility -- digits found per frame (connected components of the foreground) and classified by an MNIST
  CNN trained on the bundled digits rendered as in the frames: the fraction (and number per frame) read with
  confidence >= 0.9.
* motion -- digits tracked across frames: mean speed, the residual of a constant-velocity-with-bounce fit,
  identity switches (class changes along a track).
* colour -- chroma of the foreground, hue consistency along tracks, hue spread across digits; for
  reconstructions, the colour error of each digit (`colour_error`).
* prompt accuracy -- for class-conditional samples: the digits read in a video are exactly the prompted ones.
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
FG_THRESHOLD = 60         # foreground: a pixel whose brightest channel is above this (0-255)


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
    """Small 3D CNN -> 256-d embedding; heads: digits present (10), digit count, mean speed, frames-in-order,
    and where the digits move (WHERE_T time quarters x WHERE_G² cells: is a digit centre there).
    `features` (what FMD compares) adds the clip's `motion_coherence`: in its few hundred CPU steps of training
    the network does not learn the order of frames (its in-order head stays at chance, and shuffled frames
    scored 2.5x the real-vs-real floor at 256 videos a side)."""

    def __init__(self, width: int = 32, dim: int = 256):
        super().__init__()
        w = width

        def block(i, o, s):
            return nn.Sequential(nn.Conv3d(i, o, 3, s, 1), nn.GroupNorm(8, o), nn.SiLU())
        self.body = nn.Sequential(block(3, w, (1, 2, 2)), block(w, 2 * w, (2, 2, 2)), block(2 * w, 4 * w, (2, 2, 2)),
                                  block(4 * w, 4 * w, (2, 2, 2)), block(4 * w, dim, (1, 2, 2)))
        self.heads = nn.Linear(dim, 10 + 1 + 1 + 1 + WHERE_T * WHERE_G * WHERE_G)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(fit_clip(x)).mean((2, 3, 4))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embed(x), motion_coherence(fit_clip(x))], 1)

    def forward(self, x):
        return self.heads(self.embed(x))


def motion_coherence(x: torch.Tensor, cell: int = 8, eps: float = 1e-4) -> torch.Tensor:
    """(N, 3, T, H, W) in [-1, 1] -> (N, 2): how frames change, on a grid of cell² px means (about a digit
    stroke's motion blurred away): log(change over 1 frame / change over 2 frames) -- ~-0.6 for digits moving
    smoothly, ~0 for shuffled frames, flicker, noise or still frames -- and log(change over 1 frame / ink)."""
    g = F.avg_pool3d(x.add(1).mean(1, keepdim=True), (1, cell, cell))[:, 0]
    d1, d2 = [(g[:, k:] - g[:, :-k]).abs().mean((1, 2, 3)) for k in (1, 2)]
    return torch.stack([((d1 + eps) / (d2 + eps)).log(), ((d1 + eps) / (g.mean((1, 2, 3)) + eps)).log()], 1)


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


class FMD:
    """Fréchet distance of the FeatureNet features of a set of uint8 videos to a fixed `reference` set of real
    videos, standardised by the reference, with its floor: the same distance for as many `held_out` real videos
    (disjoint from the reference), so that a set and its floor always have the same size (the estimate's bias
    grows as the sets shrink: at 32-64 videos a side real-vs-real and models overlap; use >= 256)."""

    def __init__(self, net: FeatureNet, reference: np.ndarray, held_out: np.ndarray):
        self.net = net
        raw = self.features(reference)
        self.z = standardizer(raw)
        self.ref, self.held, self.floors = self.z(raw), self.z(self.features(held_out)), {}

    def features(self, videos: np.ndarray, chunk: int = 64) -> np.ndarray:
        return np.concatenate([extract_features(self.net, to_float(videos[i:i + chunk])) for i in range(0, len(videos), chunk)])

    def floor(self, n: int) -> float:
        if n > len(self.held):
            raise ValueError(f"a floor for {n} videos needs as many held-out real videos (have {len(self.held)})")
        if n not in self.floors:
            self.floors[n] = frechet_distance(self.held[:n], self.ref)
        return self.floors[n]

    def __call__(self, videos: np.ndarray) -> dict:
        fd, lo, hi = fd_with_ci(self.z(self.features(videos)), self.ref)
        return {"FMD": fd, "FMD_90ci": [lo, hi], "FMD_floor": self.floor(len(videos)), "FMD_n": len(videos)}


# ------------------------------------------------------------------------------------ legibility
class DigitCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(32 * 49, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


def render_digits(images: torch.Tensor, generator: torch.Generator, sizes: tuple[int, int] = (14, 28),
                  mask_threshold: int = 150) -> torch.Tensor:
    """(N, 1, 28, 28) grey MNIST digits in [0, 1] -> crops as `find_digits` cuts them out of Flying MNIST frames
    (`normalise_digit_crops`d): resized to a random size (one per 256 digits), ink kept where the resized grey is
    >= the generator's mask threshold, dimmed by a random colour's brightness, cut at the foreground threshold."""
    out = []
    for i in range(0, len(images), 256):
        s = int(torch.randint(sizes[0], sizes[1] + 1, (), generator=generator))
        x = F.interpolate(images[i:i + 256], size=(s, s), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        x = x * (x >= mask_threshold / 255) * torch.empty(len(x), 1, 1, 1).uniform_(0.24, 1, generator=generator)
        out.append(normalise_digit_crops(x * (x > FG_THRESHOLD / 255)))
    return torch.cat(out)


def train_digit_classifier(epochs: int = 8, seed: int = 0, log=print) -> tuple[DigitCNN, float]:
    """MNIST CNN on the bundled 10k digits (9k train / 1k held out), each epoch freshly rendered as in the
    frames (`render_digits`: plain MNIST crops are thicker and softer, and the frames' digits were read with low
    confidence). Returns (model, held-out accuracy on rendered digits)."""
    from minisora.flying_mnist import load_digits

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, labels = load_digits("bundled")
    x, y = torch.from_numpy(images).float().div(255).unsqueeze(1), torch.from_numpy(labels).long()
    perm = torch.randperm(len(x))
    tr, te = perm[:9000], perm[9000:]
    net = DigitCNN()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * math.ceil(len(tr) / 128))
    for ep in range(epochs):
        order = torch.randperm(len(tr))
        crops = render_digits(x[tr[order]], g)
        for i in range(0, len(order), 128):
            loss = F.cross_entropy(net(crops[i:i + 128]), y[tr[order[i:i + 128]]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = (net(render_digits(x[te], g)).argmax(1) == y[te]).float().mean().item()
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
def find_digits(frames: np.ndarray, classifier: DigitCNN, threshold: int = FG_THRESHOLD, min_area: int = 6,
                max_per_frame: int = 16):
    """Per frame of uint8 (T, H, W, 3): list of (cy, cx, class, confidence, area, mean RGB), one per blob of
    foreground pixels (brightest channel > threshold; pieces within 2 px of each other are one blob), the
    `max_per_frame` largest. Blobs that cannot be a digit (box side over half the frame, or more than 60% of
    the box inked unless its short side is at most a third of its long side: digits are strokes, a 1 is narrow)
    get class -1 and confidence 0: found, but not legible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of small ops: threads only add overhead (and stall on a busy machine)
    try:
        return _find_digits(frames, classifier, threshold, min_area, max_per_frame)
    finally:
        torch.set_num_threads(threads)


def _find_digits(frames, classifier, threshold, min_area, max_per_frame):
    grey = torch.from_numpy(frames.max(-1).astype(np.float32) / 255.0)
    ink = grey > threshold / 255.0
    near = F.max_pool2d(ink[:, None].float(), 3, 1, 1)[:, 0] > 0  # ink within 2 px is one digit: thin or dim
    labels = connected_components(near) * ink                      # strokes break into pieces at small sizes
    size = max(frames.shape[1:3])
    comps, crops = [], []
    for t in range(len(frames)):
        ids, areas = torch.unique(labels[t], return_counts=True)
        keep = [(int(a), int(i)) for i, a in zip(ids, areas) if i != 0 and a >= min_area]
        comps.append([])
        for area, lab in sorted(keep, reverse=True)[:max_per_frame]:
            ys, xs = torch.nonzero(labels[t] == lab, as_tuple=True)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            h, w = int(y1 - y0), int(x1 - x0)
            digit_like = max(h, w) <= size / 2 and (area <= 0.6 * h * w or 3 * min(h, w) <= max(h, w))  # a 1 is narrow
            rgb = tuple(frames[t, ys.numpy(), xs.numpy()].mean(0).tolist())
            comps[-1].append((ys.float().mean().item(), xs.float().mean().item(), area, rgb, digit_like))
            if digit_like:
                crops.append((grey[t, y0:y1, x0:x1] * (labels[t, y0:y1, x0:x1] == lab))[None])
    probs = iter(classifier(normalise_digit_crops(crops)).softmax(1).tolist() if crops else [])  # one call per video
    out = []
    for frame in comps:
        out.append([])
        for cy, cx, area, rgb, digit_like in frame:
            p = next(probs) if digit_like else None
            cls = int(np.argmax(p)) if p else -1
            out[-1].append((cy, cx, cls, max(p) if p else 0.0, area, rgb))
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


def link_tracks(dets: list[list[tuple]], max_jump: float) -> list[list[tuple]]:
    """Tracks (lists of detections in consecutive frames) from per-frame detections (cy, cx, ...): each frame,
    the closest (track end, detection) pairs within `max_jump` px are linked first. A track that finds no
    detection in a frame ends there: a later detection starts a new track, gaps are never bridged."""
    done, active = [], []
    for d in dets:
        pairs = sorted((math.dist(tr[-1][:2], x[:2]), i, j) for i, tr in enumerate(active) for j, x in enumerate(d))
        linked, used = {}, set()
        for dist, i, j in pairs:
            if dist <= max_jump and i not in linked and j not in used:
                linked[i] = j
                used.add(j)
        done += [tr for i, tr in enumerate(active) if i not in linked]
        active = [active[i] + [d[j]] for i, j in linked.items()] + [[x] for j, x in enumerate(d) if j not in used]
    return done + active


def digit_tracks(dets: list[list[tuple]], size: int) -> list[list[tuple]]:
    """Tracks of the digit-like detections (class >= 0) of a video of `size` px: at most size / 6 px per frame."""
    return link_tracks([[x for x in d if x[2] >= 0] for d in dets], size / 6)


def hue_vector(rgb) -> np.ndarray:
    """(..., 3) RGB -> (..., 2) chroma-plane vector: angle = hue, length ~ chroma (max - min) in RGB units.
    Linear in RGB, so the vector of a mean colour is the chroma-weighted mean of its pixels' hue vectors:
    near-grey pixels, whose hue means nothing, weigh nothing."""
    rgb = np.asarray(rgb, np.float64)
    return np.stack([rgb[..., 0] - (rgb[..., 1] + rgb[..., 2]) / 2, math.sqrt(3) / 2 * (rgb[..., 1] - rgb[..., 2])], -1)


def chroma(videos: np.ndarray, threshold: int = FG_THRESHOLD) -> float:
    """Mean colourfulness (max - min over RGB, 0-255) of the foreground pixels (max channel > threshold)."""
    total = count = 0
    for v in videos:
        hi, lo = v.max(-1), v.min(-1)
        fg = hi > threshold
        total += float((hi[fg].astype(np.int64) - lo[fg]).sum())
        count += int(fg.sum())
    return total / max(count, 1)


def ink_kept(videos: np.ndarray, threshold: int = FG_THRESHOLD) -> float:
    """Foreground pixels (max channel > threshold) of the last quarter of the frames over those of the first
    quarter, summed over the videos: ~1 when digits keep their size (real data: they only leave through the
    borders), < 1 when they fade or erode (a too-cool sampler), > 1 when strokes grow into scribbles."""
    q = max(1, videos.shape[1] // 4)
    fg = videos.max(-1) > threshold
    return float(fg[:, -q:].sum()) / max(float(fg[:, :q].sum()), 1.0)


def detection_metrics(videos_dets: list[list[list[tuple]]], size: int, conf: float = 0.9, min_track: int = 4,
                      min_chroma: float = 20.0, max_hue_dev: float = 30.0) -> dict:
    """Digit metrics from `find_digits` output of each video (frames of `size` px): see `video_metrics`."""
    n_det = n_leg = frames = switches = long_tracks = consistent = 0
    speeds, residuals, hues = [], [], []
    length = max((len(d) for d in videos_dets), default=0)
    by_frame = np.zeros(length)  # legible digits at each frame index, summed over videos
    for dets in videos_dets:
        by_frame[:len(dets)] += [sum(x[3] >= conf for x in d) for d in dets]
        frames += len(dets)
        n_det += sum(len(d) for d in dets)
        n_leg += sum(x[3] >= conf for d in dets for x in d)
        for tr in digit_tracks(dets, size):
            p = np.array([x[:2] for x in tr], np.float64)
            speeds += np.linalg.norm(np.diff(p, axis=0), axis=1).tolist()
            switches += sum(a[2] != b[2] for a, b in zip(tr, tr[1:]) if min(a[3], b[3]) >= conf)
            if len(tr) < min_track:
                continue
            residuals.append(bounce_fit_residuals(p).ravel())
            long_tracks += 1
            vec = hue_vector([x[5] for x in tr])  # per frame, from the digit's own pixels
            mean = vec.mean(0)
            if np.hypot(*mean) < min_chroma:
                continue  # a grey digit: not coloured, so not hue-consistent, and no hue to spread
            hues.append(math.atan2(mean[1], mean[0]))
            dev = np.degrees(np.abs(np.angle(np.exp(1j * (np.arctan2(vec[:, 1], vec[:, 0]) - hues[-1])))))
            consistent += bool((dev <= max_hue_dev).all() and (np.hypot(vec[:, 0], vec[:, 1]) >= min_chroma / 2).all())
    return {"legibility": n_leg / max(n_det, 1), "legible_per_frame": n_leg / max(frames, 1),
            "digits_per_frame": n_det / max(frames, 1),
            "legible_by_frame": (by_frame / max(len(videos_dets), 1)).round(3).tolist(),
            "mean_speed_px": float(np.mean(speeds)) if speeds else 0.0,
            "motion_residual_px": float(np.sqrt(np.mean(np.concatenate(residuals) ** 2))) if residuals else float("nan"),
            "identity_switch_rate": switches / max(len(speeds), 1),
            "hue_consistency": consistent / max(long_tracks, 1),
            "hue_spread": float(1 - abs(np.exp(1j * np.asarray(hues)).mean())) if hues else 0.0}


def video_metrics(videos: np.ndarray, classifier: DigitCNN, conf: float = 0.9) -> dict:
    """What a viewer sees in uint8 (N, T, H, W, 3) videos. Digits are the foreground components of each frame
    (`find_digits`), linked frame to frame into tracks (`link_tracks`: a missed frame ends a track).

    * legibility: fraction of the components classified with confidence >= `conf`; legible_per_frame and
      digits_per_frame: legible / all components per frame (so that few, or no, digits do not score well);
      legible_by_frame: legible digits per video at each frame index (where a sampler loses its digits).
    * mean_speed_px: mean displacement per tracked step (px/frame): frozen digits have ~0.
    * motion_residual_px: RMS residual of a constant-velocity-with-bounce fit to every track of >= 4 frames
      (`bounce_fit_residuals`); identity_switch_rate: class changes per tracked step (both ends legible).
    * chroma: mean max-min over RGB of the foreground pixels (0 for grey videos); ink_kept: foreground in
      the last quarter of the frames over the first (`ink_kept`: digits that fade score < 1).
    * hue_consistency: fraction of the tracks of >= 4 frames whose hue (of the mean colour of the digit's
      pixels) stays within 30 degrees of the track's mean hue, and coloured (chroma >= 10), in every frame;
      grey tracks (chroma < 20) fail.
    * hue_spread: 1 - mean resultant length of the tracks' mean hues: ~1 for the data's random colours,
      0 when every digit has the same hue (or none is coloured)."""
    return {**detection_metrics([find_digits(v, classifier) for v in videos], max(videos.shape[2:4]), conf),
            "chroma": chroma(videos), "ink_kept": ink_kept(videos)}


def track_classes(frames: np.ndarray, classifier: DigitCNN, conf: float = 0.9, min_legible: int = 3) -> set[int]:
    """The digits a viewer reads in a uint8 (T, H, W, 3) video: the majority class of the confident
    (>= `conf`) detections of each track with at least `min_legible` of them."""
    classes = set()
    for tr in digit_tracks(find_digits(frames, classifier), max(frames.shape[1:3])):
        votes = [x[2] for x in tr if x[3] >= conf]
        if len(votes) >= min_legible:
            classes.add(max(set(votes), key=votes.count))
    return classes


def prompt_accuracy(videos: np.ndarray, prompts, classifier: DigitCNN, conf: float = 0.9) -> float:
    """Fraction of the videos whose legible digits (`track_classes`) are exactly the prompted set of labels."""
    return prompt_scores(videos, prompts, classifier, conf)["prompt_accuracy"]


def prompt_scores(videos: np.ndarray, prompts, classifier: DigitCNN, conf: float = 0.9) -> dict:
    """prompt_accuracy (the legible digits are exactly the prompted set) and why a video misses it, as fractions of
    the videos (not exclusive): prompt_missed, a prompted digit is not read legibly (drawn illegibly or not at all);
    prompt_unprompted, a digit that was not prompted is read (a wrong digit drawn, or a fragment read as one)."""
    read = [track_classes(v, classifier, conf) for v in videos]
    want = [set(map(int, p)) for p in prompts]
    return {"prompt_accuracy": float(np.mean([r == w for r, w in zip(read, want)])),
            "prompt_missed": float(np.mean([bool(w - r) for r, w in zip(read, want)])),
            "prompt_unprompted": float(np.mean([bool(r - w) for r, w in zip(read, want)]))}


def given_classes(video: np.ndarray, given: int, classifier: DigitCNN, conf: float = 0.9) -> set[int]:
    """The digits read in the first `given` frames of a uint8 (T, H, W, 3) video (tracks with >= 2 legible
    detections): what a continuation should keep (`continuation_metrics`' class_kept)."""
    return track_classes(video[:given], classifier, conf, min_legible=min(2, given))


def continuation_metrics(real: np.ndarray, continued: np.ndarray, given: int, classifier: DigitCNN,
                         conf: float = 0.9) -> dict:
    """Scores of continuations: `continued` (N, T, H, W, 3) uint8 holds the first `given` real frames, then a
    model's. Only frames >= given count: PSNR / SSIM against the real continuation (averaged, and per frame
    in `psnr_per_frame`), what video_metrics reads in them (legibility, digit speed, ...), and class_kept: the
    fraction of videos whose legible digits in the given frames (>= 2 legible detections a track) are exactly
    the legible digits of the continuation (videos with none legible in the given frames are left out)."""
    from minisora.metrics import psnr, ssim

    r, c = to_float(real[:, given:]), to_float(continued[:, given:])
    per_frame = [float(psnr(c[:, :, t], r[:, :, t]).mean()) for t in range(r.shape[2])]
    before = [given_classes(v, given, classifier, conf) for v in real]
    keep = [i for i, b in enumerate(before) if b]
    out = {"PSNR": float(psnr(c, r).mean()), "SSIM": float(ssim(c, r).mean()), "psnr_per_frame": per_frame,
           **video_metrics(continued[:, given:], classifier, conf),
           "class_kept": prompt_accuracy(continued[keep, given:], [before[i] for i in keep], classifier, conf)
           if keep else float("nan")}
    return out


def colour_error(real: np.ndarray, recon: np.ndarray, threshold: int = FG_THRESHOLD, min_area: int = 6) -> float:
    """Mean over digits (foreground components of >= min_area px of each real frame) of the Euclidean distance
    between the mean RGB (0-255) of the reconstruction and of the real video over the digit's pixels."""
    errors = []
    for v, w in zip(real, recon):
        lab = connected_components(torch.from_numpy(v.max(-1) > threshold)).numpy()
        lab = np.where(lab > 0, lab + np.arange(len(v))[:, None, None] * (lab[0].size + 1), 0)  # unique per frame
        fg = lab > 0
        _, comp, area = np.unique(lab[fg], return_inverse=True, return_counts=True)
        mean = [np.stack([np.bincount(comp, x[fg][:, c].astype(np.float64)) for c in range(3)], 1) / area[:, None]
                for x in (v, w)]
        errors += np.linalg.norm(mean[1] - mean[0], axis=1)[area >= min_area].tolist()
    return float(np.mean(errors)) if errors else float("nan")


# ------------------------------------------------------------------------------------------ FVD
@torch.no_grad()
def i3d_features(detector_path: str | Path, videos: torch.Tensor, batch: int = 8) -> np.ndarray:
    """Features of the StyleGAN-V I3D TorchScript detector (i3d_torchscript.pt): input (B, 3, T, H, W) in
    [-1, 1], called with rescale=False, resize=True, return_features=True, as StyleGAN-V's FVD does."""
    det = torch.jit.load(str(detector_path)).eval()
    feats = [det(videos[i:i + batch], rescale=False, resize=True, return_features=True) for i in range(0, len(videos), batch)]
    return torch.cat(feats).double().numpy()
