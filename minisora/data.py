"""Video datasets shared by every stage.

`VideoDataset` reads clips from data/<name>/<split>/*.mp4 (also .avi/.webm/...), in sorted file
order (row i of any stage file made from a split is video i), and returns float tensors
(C, T, H, W), RGB, in [-1, 1] (x = uint8 / 127.5 - 1), resized (shorter side, antialiased) and
centre-cropped to `resolution`.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate, get_worker_info

from minisora.video_io import BadVideosError, VideoReadError, list_videos, probe_videos, read_video, video_info

GENERATE_HINT = (
    "Generate Flying MNIST with `python generate_flying_mnist.py --name {name}` (add e.g. --resolution 64 "
    "--num_frames 16 --max_digits 2 --num_train 512 --num_val 64 for a CPU-small set), or download the "
    "published videos with `python generate_flying_mnist.py --download 11k`."
)


NUM_DIGITS = 10  # label classes of Flying MNIST: the multi-hot `labels` width


def split_dir(dataset: str, split: str, data_dir: str | os.PathLike = "data") -> Path:
    """data/<dataset>/<split>, or <dataset>/<split> when `dataset` is itself a path to a folder."""
    d = Path(dataset)
    root = d if d.is_dir() and (d / split).is_dir() else Path(data_dir) / dataset
    return root / split


def frames_to_tensor(frames: np.ndarray, resolution: int | None = None, as_uint8: bool = False) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (3, T, R, R): float in [-1, 1], or uint8 0..255 with as_uint8 (then
    normalise on the training device with `to_model_range`). Resizes the shorter side to R
    (bilinear, antialiased when shrinking) and centre-crops."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)  # C, T, H, W (a view)
    if resolution is not None and x.shape[-2:] != (resolution, resolution):
        h, w = x.shape[-2:]
        s = resolution / min(h, w)
        size = (max(resolution, round(h * s)), max(resolution, round(w * s)))
        if size != (h, w):
            x = F.interpolate(x.float().transpose(0, 1), size=size, mode="bilinear", align_corners=False,
                              antialias=s < 1).transpose(0, 1).round_().clamp_(0, 255)
        top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        x = x[..., top:top + resolution, left:left + resolution]
    if as_uint8:
        return x.to(torch.uint8)  # a (C, T, H, W) view of (T, H, W, C) frames: see collate_videos
    return x.float().div_(127.5).sub_(1.0) if x.dtype != torch.uint8 else to_model_range(x)


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 video -> contiguous float32 in [-1, 1] (a new tensor). Cheap on a GPU: training scripts load
    uint8 clips (4x less to move, frames still interleaved, see `collate_videos`) and call this on the device."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects uint8 pixels, got {x.dtype} (already normalised?)")
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def hold_last_frame(x, given: int, time_axis: int):
    """A video batch (numpy or torch) with frames >= `given` replaced by frame given - 1, held still: the
    continuation baseline (evaluation) and what a continuation's encoder may see (generate.continue_videos)."""
    idx = list(range(given)) + [given - 1] * (x.shape[time_axis] - given)
    return x[(slice(None),) * time_axis + (idx,)]


def collate_videos(batch: list[dict]) -> dict:
    """`default_collate` for VideoDataset items, except that "video" clips keep the decoder's interleaved
    (T, H, W, C) memory order: the batch is a (B, C, T, H, W)-shaped view of a (B, T, H, W, C) buffer
    (torch.channels_last_3d), filled by plain copies. Re-ordering 6 MB clips to planar on 2 cores costs
    a third of the decode time; `to_model_range` (on the training device) does it for free in its one pass.
    Pass it as DataLoader(collate_fn=collate_videos); other datasets' items go through default_collate."""
    if not batch or "video" not in batch[0]:
        return default_collate(batch)
    videos = [item["video"] for item in batch]
    interleaved = [v.permute(1, 2, 3, 0) for v in videos]  # (T, H, W, C) views
    if not all(v.is_contiguous() and v.shape == interleaved[0].shape and v.dtype == interleaved[0].dtype
               for v in interleaved):
        return default_collate(batch)
    out = default_collate([{k: v for k, v in item.items() if k != "video"} for item in batch])
    first = interleaved[0]
    shape = (len(batch), *first.shape)
    if get_worker_info() is not None:  # in a DataLoader worker: build the batch in shared memory (no copy on send)
        storage = first.untyped_storage()._new_shared(first.numel() * first.element_size() * len(batch))
        buf = first.new_empty(0).set_(storage).view(shape)
    else:
        buf = first.new_empty(shape)
    torch.stack(interleaved, out=buf)
    out["video"] = buf.permute(0, 4, 1, 2, 3)
    return out


class VideoDataset(Dataset):
    """Clips of `sequence_length` frames (every `frame_stride`-th frame) from each video.

    num_clips_per_video=k gives k items per video with evenly spaced starts (item i -> video i // k).
    random_clip=True draws each clip's start uniformly instead (for training; all valid starts,
    the last one included). return_metadata=True adds `labels` (10-dim multi-hot of digits present)
    and `num_digits` from the split's metadata.jsonl.

    as_uint8=True returns uint8 0..255 clips instead (normalise on the device with `to_model_range`):
    a float32 clip is 4x bigger, and producing it costs more than decoding it.

    Bad videos (empty, not a video, truncated, shorter than a clip) are found up front by
    `video_io.probe_videos`, all at once: on_error="raise" stops with a BadVideosError listing each with its
    reason; on_error="skip" warns once per file and leaves them out of `files` (so item i is still
    `files[i]`), recorded in `skipped` ({path: reason}). A file that passes the probe but fails to decode
    later is skipped at read time (the next good video is returned instead) or raised, the same way.
    """

    def __init__(self, dataset: str = "flying_mnist", split: str = "train", resolution: int | None = 64,
                 sequence_length: int = 16, frame_stride: int = 1, num_clips_per_video: int = 1,
                 random_clip: bool = False, return_metadata: bool = False, on_error: str = "skip",
                 data_dir: str | os.PathLike = "data", max_videos: int | None = None, backend: str | None = None,
                 as_uint8: bool = False):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.dir = split_dir(dataset, split, data_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"no data directory {self.dir}. " + GENERATE_HINT.format(name=dataset))
        self.files = list_videos(self.dir)[:max_videos]
        if not self.files:
            raise FileNotFoundError(f"no videos (*.mp4, *.avi, *.webm) in {self.dir}. " + GENERATE_HINT.format(name=dataset))
        self.resolution, self.sequence_length, self.frame_stride = resolution, sequence_length, frame_stride
        self.num_clips_per_video, self.random_clip = num_clips_per_video, random_clip
        self.return_metadata, self.on_error, self.backend = return_metadata, on_error, backend
        self.as_uint8 = as_uint8
        self.skipped: dict[str, str] = {}
        self._leave_out_bad_videos()
        self._num_frames: dict[int, int] = {}
        info = self.dir.parent / "info.json"  # written by generate_flying_mnist.py: every video has the same length
        if info.exists():
            n = json.loads(info.read_text()).get("generator", {}).get("num_frames")
            self._num_frames = dict.fromkeys(range(len(self.files)), n) if n else {}
        self.labels = load_labels(self.dir, [p.relative_to(self.dir).as_posix() for p in self.files]) \
            if return_metadata else None

    def _leave_out_bad_videos(self) -> None:
        bad = probe_videos(self.files, self.span)
        if not bad:
            return
        listing = "\n".join(f"  {p}: {reason}" for p, reason in bad)
        if len(bad) == len(self.files):
            raise BadVideosError(f"no usable video in {self.dir}: all {len(bad)} are bad:\n{listing}", bad)
        if self.on_error == "raise":
            raise BadVideosError(f"{len(bad)} of {len(self.files)} videos in {self.dir} cannot be used "
                                 f"(--on_bad_video skip leaves them out):\n{listing}", bad)
        for p, reason in bad:
            warnings.warn(f"skipping bad video {p}: {reason}", stacklevel=3)
        self.skipped = {str(p): reason for p, reason in bad}
        self.files = [f for f in self.files if str(f) not in self.skipped]

    @property
    def span(self) -> int:
        return (self.sequence_length - 1) * self.frame_stride + 1

    def __len__(self) -> int:
        return len(self.files) * self.num_clips_per_video

    def num_frames(self, vi: int) -> int:
        if vi not in self._num_frames:
            self._num_frames[vi] = video_info(self.files[vi]).num_frames
        return self._num_frames[vi]

    def clip_start(self, vi: int, clip: int) -> int:
        if not self.random_clip and self.num_clips_per_video == 1:
            return 0  # no need to know the length (read_video reports a too-short video)
        room = self.num_frames(vi) - self.span
        if room < 0:
            raise VideoReadError(f"video {self.files[vi]} is too short: {self.num_frames(vi)} frames, "
                                 f"need {self.span} (sequence_length={self.sequence_length}, stride={self.frame_stride})")
        if self.random_clip:
            return int(torch.randint(0, room + 1, ()).item())
        k = self.num_clips_per_video
        return round(clip * room / (k - 1)) if k > 1 else 0

    def load(self, vi: int, clip: int = 0) -> dict:
        start = self.clip_start(vi, clip)
        frames = read_video(self.files[vi], start, self.sequence_length, self.frame_stride, backend=self.backend)
        item = {"video": frames_to_tensor(frames, self.resolution, self.as_uint8), "index": vi, "start": start}
        if self.labels is not None:
            item["labels"], item["num_digits"] = multi_hot(self.labels[vi]), len(self.labels[vi])
        return item

    def __getitem__(self, i: int) -> dict:
        vi, clip = divmod(i, self.num_clips_per_video)
        for attempt in range(len(self.files)):
            v = (vi + attempt) % len(self.files)
            try:
                return self.load(v, clip)
            except VideoReadError as e:
                if self.on_error == "raise":
                    raise
                if str(self.files[v]) not in self.skipped:
                    self.skipped[str(self.files[v])] = str(e)
                    warnings.warn(f"skipping bad video ({len(self.skipped)} so far): {e}", stacklevel=2)
        raise VideoReadError(f"no readable video in {self.dir}")


class LatentDataset(Dataset):
    """Rows of a latents/tokens stage file (memory-mapped, never copied whole into RAM) as normalised
    float latents (C, frames, h, w): a random temporal crop of `frames` latent frames (all valid starts),
    tokens mapped to vectors through `codebook` (K, E), then (z - mean) / std per channel.
    return_metadata adds `labels` (multi-hot digits) from the source split's metadata.jsonl."""

    def __init__(self, array: np.ndarray, mean, std, frames: int | None = None, codebook: np.ndarray | None = None,
                 random_crop: bool = True, labels: list[list[int]] | None = None):
        self.array, self.codebook, self.labels = array, codebook, labels
        self.tokens = np.issubdtype(array.dtype, np.integer)
        if self.tokens and codebook is None:
            raise ValueError("a tokens file needs the VAE codebook to turn codes into vectors")
        t = array.shape[1] if self.tokens else array.shape[2]
        self.frames = frames or t
        if self.frames > t:
            raise ValueError(f"cannot crop {self.frames} latent frames from rows of {t}")
        self.t, self.random_crop = t, random_crop
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> dict:
        s = int(torch.randint(0, self.t - self.frames + 1, ()).item()) if self.random_crop else 0
        if self.tokens:
            codes = np.asarray(self.array[i, s:s + self.frames]).astype(np.int64)
            z = torch.from_numpy(self.codebook[codes]).permute(3, 0, 1, 2)  # (t, h, w, E) -> (E, t, h, w)
        else:
            z = torch.from_numpy(np.array(self.array[i, :, s:s + self.frames], np.float32))  # a copy: the memmap is read-only
        item = {"latents": (z.float() - self.mean) / self.std, "index": i}
        if self.labels is not None:
            item["labels"] = multi_hot(self.labels[i])
        return item


def load_labels(split_directory: str | os.PathLike, files: list[str]) -> list[list[int]]:
    """Digit labels per file (in the given order) from a split's metadata.jsonl."""
    meta = Path(split_directory) / "metadata.jsonl"
    if not meta.exists():
        raise FileNotFoundError(f"digit labels need {meta} (written by generate_flying_mnist.py)")
    by_file = {}
    with open(meta) as f:
        for line in f:
            r = json.loads(line)
            by_file[r["file"]] = r["labels"]
    missing = [name for name in files if name not in by_file]
    if missing:
        raise ValueError(f"{meta} has no entry for {len(missing)} video(s), e.g. {missing[:3]}")
    return [by_file[name] for name in files]


def stage_labels(meta: dict) -> list[list[int]]:
    """Digit labels of a stage file's rows (row i: its sidecar's source.files[i]), for class conditioning."""
    src = meta.get("source") or {}
    if not src.get("files"):
        raise ValueError("class conditioning needs the stage file's sidecar (source dataset and files) to find labels")
    return load_labels(Path(src["dataset"]) / src["split"], src["files"])


def label_prior(label_sets: list[list[int]] | None) -> dict | None:
    """The digit sets of a training set and how often each occurs, {"sets": [[3], [3, 7], ...], "counts": [...]}
    (JSON-like: kept in class-conditional checkpoints as `label_prior`), what draw_label_sets samples prompts from;
    None without labels (an unconditional run)."""
    if not label_sets:
        return None
    counts: dict[tuple, int] = {}
    for s in label_sets:
        key = tuple(sorted(set(int(d) for d in s)))  # a prompt is a multi-hot set: repeats and order do not count
        counts[key] = counts.get(key, 0) + 1
    keys = sorted(counts)
    return {"sets": [list(k) for k in keys], "counts": [counts[k] for k in keys]}


def draw_label_sets(prior: dict, n: int, seed: int = 0) -> list[list[int]]:
    """n digit sets drawn from a label_prior (each set as often as in the training data), reproducibly by seed."""
    p = np.asarray(prior["counts"], dtype=np.float64)
    picks = np.random.default_rng(seed).choice(len(p), size=n, p=p / p.sum())
    return [list(prior["sets"][i]) for i in picks]


def multi_hot(labels: list[int], classes: int = NUM_DIGITS) -> torch.Tensor:
    """A digit set as a float multi-hot (classes,) vector (the `labels` of every dataset and prompt)."""
    y = torch.zeros(classes)
    y[list(labels)] = 1
    return y


class TokenWindows(Dataset):
    """Training windows over videos of VQ codes: each row of a tokens file (N, t, h, w) is one video,
    flattened to the sequence [BOS, c_0, c_1, ...]; an item is a random window of block_size + 1 tokens of
    one video (windows never cross videos): x = window[:-1], y = window[1:], `start` = x's sequence position,
    with_history: also `seq` = the whole sequence (what a GPT with prev_frames reads of frames before the window).
    context: sparse windows, a function length -> the block_size positions a window ending there sees (e.g.
    functools.partial(models.gpt.context_positions, block_size=..., stride=..., dense=...)): x = the tokens
    at those positions, y = each one's next token, `start` = the positions (block_size,).
    `samples_per_epoch` items are drawn per epoch (videos uniformly, offsets by window_start: every token as
    often as a middle one or more). first_frame_windows p: that fraction of items is the start of the clip cut at
    a random latent frame k ([BOS, frame k, ...]; Flying MNIST's motion is stationary, so that is a clip too):
    the model practises the first frame, the one drawn from nothing, more often and on every frame of the data.
    motion_tokens (tokenize_videos.py --motion_tokens): only the first latent frame holds codes, every later one
    motion tokens; a first-frame window then always starts the clip at frame 0 (a later frame cut to the front
    would teach the first frame's positions motion tokens).
    ink (N, t h w) 0/1 per cell of each clip's decoded frames (models.motion.ink_maps): item `ink`, the row's
    map (cut like the codes for a first-frame window), what a GPT with read_ink reads."""

    def __init__(self, array: np.ndarray, rows: range, block_size: int, bos: int, samples_per_epoch: int = 10000,
                 only_predict_last: bool = False, context=None, labels: list[list[int]] | None = None,
                 with_history: bool = False, first_frame_windows: float = 0.0,
                 motion_tokens: bool = False, ink: np.ndarray | None = None):
        self.array, self.rows, self.block_size, self.bos, self.labels = array, rows, block_size, bos, labels
        self.ink = ink
        if ink is not None and tuple(ink.shape) != (len(array), int(np.prod(array.shape[1:]))):
            raise ValueError(f"ink maps of shape {tuple(ink.shape)} for {len(array)} clips of {array.shape[1:]} cells")
        self.motion_tokens = motion_tokens
        self.only_predict_last, self.context, self.with_history = only_predict_last, context, with_history
        self.first_frame_windows = first_frame_windows
        if not 0 <= first_frame_windows <= 1:
            raise ValueError(f"first_frame_windows {first_frame_windows} is a fraction of windows: 0..1")
        self.seq_len = int(np.prod(array.shape[1:])) + 1
        if block_size + 1 > self.seq_len:
            raise ValueError(f"block_size {block_size} + 1 > tokens per video + BOS ({self.seq_len})")
        self.samples_per_epoch = samples_per_epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        row = self.rows[int(torch.randint(0, len(self.rows), (), generator=g).item())]
        start = self.window_start(g)
        codes = np.asarray(self.array[row]).reshape(-1).astype(np.int64)
        if self.first_frame_windows and torch.rand((), generator=g).item() < self.first_frame_windows:
            # the clip as if it began at latent frame k: [BOS, frame k, k + 1, ...], window at its start
            frame = int(np.prod(self.array.shape[2:]))
            last = self.array.shape[1] - -(-self.block_size // frame)  # the crop keeps >= block_size codes
            k = 0 if self.motion_tokens else int(torch.randint(0, last + 1, (), generator=g).item())
            codes, start = codes[k * frame:], 0
        cut = self.seq_len - 1 - len(codes)  # the cells cut from the clip's front (a first-frame window)
        full = np.concatenate([[self.bos], codes])
        if self.context is not None:  # sparse window predicting the token after position q = start + block_size - 1
            pos = np.asarray(self.context(start + self.block_size))
            x, y = torch.from_numpy(full[pos]), torch.from_numpy(full[pos + 1])
            return self._extras({"x": x, "y": y, "start": torch.from_numpy(pos), "row": row}, full, cut)
        x = torch.from_numpy(full[start:start + self.block_size])
        y = torch.from_numpy(full[start + 1:start + self.block_size + 1].copy())
        if self.only_predict_last:  # a growing prefix predicts one next token: loss on a random position only
            k = int(torch.randint(0, self.block_size, (), generator=g).item())
            y[:k] = -1
            y[k + 1:] = -1
        return self._extras({"x": x, "y": y, "start": start, "row": row}, full, cut)

    def window_start(self, g: torch.Generator) -> int:
        """A window's first position: uniform over block_size - 1 more starts on each side than fit, clipped to
        the valid ones. With starts uniform over the valid ones only, a token p < block_size is in a window with
        probability (p + 1) / (valid starts) -- at block 512 of a 16-frame clip the first latent frame was trained
        ~4x less often than a middle one, its first rows and the BOS-led window that every sample begins with
        almost never. Clipped, every token is in at least as many windows as a middle one, the ends in up to 2x."""
        n = self.seq_len - self.block_size  # valid starts 0 .. n - 1
        raw = int(torch.randint(1 - self.block_size, n + self.block_size - 1, (), generator=g).item())
        return min(max(raw, 0), n - 1)

    def _extras(self, item: dict, full: np.ndarray, cut: int = 0) -> dict:
        """`full`: the item's sequence [BOS, codes...]; `cut`: the cells cut from the clip's front (a first-frame
        window)."""
        if self.ink is not None:  # padded at its end like `seq` (a token reads only frames before its own)
            ink = np.asarray(self.ink[item["row"]])[cut:]
            item["ink"] = torch.from_numpy(np.pad(ink, (0, self.seq_len - 1 - len(ink))))
        if self.with_history:  # a cut clip's is padded at its end (never read: a token reads only positions before it)
            item["seq"] = torch.from_numpy(np.pad(full, (0, self.seq_len - len(full)), constant_values=self.bos))
        if self.labels is not None:  # the multi-hot digit set of the item's video
            item["labels"] = multi_hot(self.labels[item["row"]])
        return item


def held_out_rows(n: int, val_fraction: float) -> tuple[range, range]:
    """(train rows, val rows) of an n-row tokens file: the last val_fraction of the rows (at least one, when there
    are two or more) are held out; a one-row file holds out none."""
    n_val = max(1, int(n * val_fraction)) if n > 1 else 0
    return range(0, n - n_val), range(n - n_val, n)


def token_splits(array: np.ndarray, val_fraction: float, block_size: int, bos: int, train_items: int, val_items: int,
                 only_predict_last: bool = False, context=None, labels=None,
                 with_history: bool = False, first_frame_windows: float = 0.0, motion_tokens: bool = False,
                 ink: np.ndarray | None = None) -> tuple[TokenWindows, TokenWindows]:
    """Train and val TokenWindows of a tokens array: the last val_fraction of its rows (at least one, when
    there are two or more) are held out for val/loss; a one-video file validates on its training row.
    first_frame_windows applies to training only (val/loss stays the loss of whole clips' windows)."""
    train_rows, val_rows = held_out_rows(len(array), val_fraction)
    train = TokenWindows(array, train_rows, block_size, bos, train_items, only_predict_last, context, labels, with_history,
                         first_frame_windows, motion_tokens, ink)
    val = TokenWindows(array, val_rows or train_rows, block_size, bos, val_items, only_predict_last, context, labels,
                       with_history, motion_tokens=motion_tokens, ink=ink)
    return train, val
