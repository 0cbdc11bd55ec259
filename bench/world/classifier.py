"""Reads a world latent: each of the five attributes and the background.

It works on raw VAE latents [B, 16, 1, h, w] (what ``VAE.encode`` and ComfyUI's sampler return), so
the benchmark judges the model's own output, not a decoder's rendering of it. It is trained on
encodings of all 30 characters' pictures with seeds below ``FRESH_SEEDS`` (noise added, as samples are
never exactly clean) and checked on fresh ones. A sample *is* a character when all five attributes
read as that character's.

A context's samples often blend two scenes: the reference's trees above the asked classroom's floor.
A classifier trained on pure scenes reads such a blend as either one, at random. So part of each
batch joins the top rows of one picture to the bottom rows of the same character, pose and seed on
another background, with the background label split by rows: the background head then gives each
scene's share of the picture, and the benchmark counts a sample as the asked background only when
that share is large (``benchmark.score``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .characters import ATTRIBUTES, BACKGROUNDS

CLASSIFIER_FILE = "classifier.pt"
HEAD_SIZES = [len(values) for values in ATTRIBUTES.values()] + [len(BACKGROUNDS)]


class GlobalPool(nn.Module):
    """[B, C, h, w] -> [B, 2C]: the mean and the maximum over positions, so a feature reads the same wherever
    the figure stands."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class LatentClassifier(nn.Module):
    """``pooled`` False: three convolutions and a linear layer over every position (issue 10's reader, 93.5% on
    the scene world's shared poses). True: four convolutions pooled over positions, which reads figures in
    poses it never met (the tag world draws every picture in a pose of its own)."""

    def __init__(self, latent_side: int, channels: int = 16, width: int = 96, pooled: bool = False):
        super().__init__()
        self.latent_side, self.width, self.pooled = latent_side, width, pooled
        if pooled:
            self.body = nn.Sequential(
                nn.Conv2d(channels, width, 3, padding=1), nn.GELU(),
                *[layer for _ in range(3) for layer in (nn.Conv2d(width, width, 3, padding=1), nn.GELU())],
                GlobalPool(), nn.Dropout(0.2), nn.Linear(2 * width, 256), nn.GELU(), nn.Dropout(0.2),
            )
        else:
            self.body = nn.Sequential(
                nn.Conv2d(channels, width, 3, padding=1), nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GELU(),
                nn.Flatten(), nn.Dropout(0.2), nn.Linear(width * ((latent_side + 1) // 2) ** 2, 256), nn.GELU(),
                nn.Dropout(0.2),
            )
        self.heads = nn.Linear(256, sum(HEAD_SIZES))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, raw_latents: torch.Tensor) -> list[torch.Tensor]:
        x = raw_latents[:, :, 0] if raw_latents.ndim == 5 else raw_latents
        x = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        return list(self.heads(self.body(x)).split(HEAD_SIZES, dim=1))

    @torch.no_grad()
    def classify(self, raw_latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"attributes": [B, 5] value indices in ``ATTRIBUTES`` order, "background": [B], and
        "background_shares": [B, backgrounds], each scene's share of the picture as the head reads it}."""
        self.eval()
        logits = self(raw_latents.float().to(next(self.parameters()).device))  # samples may be on another device
        predictions = [part.argmax(dim=1) for part in logits]
        return {"attributes": torch.stack(predictions[:-1], dim=1), "background": predictions[-1],
                "background_shares": logits[-1].softmax(dim=1)}


def same_pose_partners(characters: int, backgrounds: int, seeds: int, offset: int = 0) -> torch.Tensor:
    """[N, backgrounds]: for each picture of a set rendered character by background by seed (``render_set``'s
    order), the index of the same character and seed (so the same pose) on each background."""
    index = torch.arange(characters * backgrounds * seeds).view(characters, backgrounds, seeds)
    partners = index.unsqueeze(1).expand(characters, backgrounds, backgrounds, seeds)  # [c, own b, other b, s]
    return partners.permute(0, 1, 3, 2).reshape(-1, backgrounds) + offset


def split_backgrounds(x: torch.Tensor, background: torch.Tensor, partners: torch.Tensor, flat: torch.Tensor,
                      share: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Join a ``share`` of the batch to a same-pose picture on another background along a random row (either
    one on top); returns the latents and soft background targets [B, backgrounds] (each scene's rows)."""
    count, side = len(BACKGROUNDS), x.shape[-2]
    soft = nn.functional.one_hot(background, count).float()
    chosen = torch.rand(len(x), generator=generator) < share
    other_background = (background + torch.randint(1, count, (len(x),), generator=generator)) % count
    other = flat[partners.gather(1, other_background[:, None])[:, 0]]
    cut = torch.randint(1, side, (len(x),), generator=generator)
    own_on_top = torch.rand(len(x), generator=generator) < 0.5
    rows = torch.arange(side)[None, :]
    own_rows = torch.where(own_on_top[:, None], rows < cut[:, None], rows >= cut[:, None])  # [B, side]
    own_share = own_rows.float().mean(dim=1)
    keep = own_rows | ~chosen[:, None]
    joined = torch.where(keep[:, None, :, None], x, other)
    mixed = soft * own_share[:, None] + nn.functional.one_hot(other_background, count).float() * (1 - own_share)[:, None]
    return joined, torch.where(chosen[:, None], mixed, soft)


def train_classifier(latents: torch.Tensor, targets: torch.Tensor, steps: int, seed: int, log=print,
                     batch: int = 128, lr: float = 2e-3, noise: float = 0.3, width: int = 96,
                     partners: torch.Tensor | None = None, split_share: float = 0.5,
                     pooled: bool = False) -> LatentClassifier:
    """``targets`` [N, 6]: the five attribute indices and the background index. ``partners``
    (``same_pose_partners``) turns on the split-background pictures for ``split_share`` of each batch."""
    torch.manual_seed(seed)
    model = LatentClassifier(latents.shape[-1], width=width, pooled=pooled)
    model.train()
    flat = latents[:, :, 0]
    model.mean.copy_(flat.mean(dim=(0, 2, 3)))
    model.std.copy_(flat.std(dim=(0, 2, 3)).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for step in range(steps):
        index = torch.randint(0, len(flat), (batch,), generator=generator)
        x, background = flat[index], nn.functional.one_hot(targets[index, 5], len(BACKGROUNDS)).float()
        if partners is not None:
            x, background = split_backgrounds(x, targets[index, 5], partners[index], flat, split_share, generator)
        # mirrored pictures keep their labels (one-sided styles and bows are drawn either way round)
        x = torch.where(torch.rand(batch, 1, 1, 1, generator=generator) < 0.5, x.flip(-1), x)
        # noise in the DiT's normalised units, scaled back to raw latents: samples are a little off
        level = torch.rand(batch, 1, 1, 1, generator=generator) * noise
        x = x + level * model.std.view(1, -1, 1, 1) * torch.randn(x.shape, generator=generator)
        *attribute_logits, background_logits = model(x)
        loss = sum(nn.functional.cross_entropy(part, targets[index, i]) for i, part in enumerate(attribute_logits))
        loss = loss - (background * background_logits.log_softmax(dim=1)).sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"  classifier step {step + 1}/{steps}: loss {float(loss.detach()):.4f} ({time.perf_counter() - started:.0f} s)")
    return model.eval()


def accuracy(model: LatentClassifier, latents: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Per head, all five attributes at once (identity) and the background, on fresh pictures."""
    out = model.classify(latents)
    hits = torch.cat([out["attributes"], out["background"][:, None]], dim=1) == targets
    names = list(ATTRIBUTES) + ["background"]
    result = {name: float(hits[:, i].float().mean()) for i, name in enumerate(names)}
    result["identity"] = float(hits[:, :5].all(dim=1).float().mean())
    return result


def save_classifier(model: LatentClassifier, world: Path, checked: dict) -> None:
    torch.save({"state": model.state_dict(), "latent_side": model.latent_side, "width": model.width,
                "pooled": model.pooled, "fresh_accuracy": checked},
               Path(world) / CLASSIFIER_FILE)


def load_classifier(world: str | Path) -> LatentClassifier:
    saved = torch.load(Path(world) / CLASSIFIER_FILE, map_location="cpu", weights_only=True)
    model = LatentClassifier(saved["latent_side"], width=saved.get("width", 96), pooled=saved.get("pooled", False))
    model.load_state_dict(saved["state"])
    return model.eval()
