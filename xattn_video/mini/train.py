"""Train the mini model and write its diffusers pipeline folder: ``python -m xattn_video.mini.train --out DIR``.

Two stages, both on procedural videos drawn on the fly (:mod:`xattn_video.mini.data`):

1. the VAE (``AutoencoderKLWan``, 4x4 pixels and 4 frames per latent) on 64x64 crops: L1 + MSE reconstruction
   (object pixels weighted up) and a small KL term; then the per-channel latent mean and std are measured and stored in its config, as Wan's VAE has them;
2. the transformer and the text encoder together, with rectified flow matching (x_t = (1-σ)·z + σ·ε, target ε - z,
   timestep σ·1000 as ``WanPipeline`` passes it), prompts encoded as ``WanPipeline.encode_prompt`` encodes them
   (``model.encode_prompts``, tested equal; so training sees exactly what generation sees), 10% empty prompts for classifier-free guidance, at the ``mini``
   shape and every ``--large-every``-th step at the ``mini-large`` shape. The saved weights are an EMA. With
   ``--recipe`` (:mod:`xattn_video.mini.recipe`; ``segments`` is the shipped weights' schedule) this stage is a
   sequence of phases (shape, shift, learning-rate schedule, loss weights) in one process.

Seeded and step-based (the learning-rate schedule depends on the step count, not on time), so the same command
gives the same model up to GPU nondeterminism. ``--time-limit`` stops early and saves a resumable checkpoint
(``--checkpoint``); ``--resume`` continues from it (in the transformer stage from the EMA weights with fresh Adam
moments, the learning rate warmed up again: the checkpoint, 41 MB, stays small enough to carry to the next device
call). Logs the loss every ``--log-every`` steps. Weights are saved in
float16, the rest in float32 (the folder stays under 30 MB); ``training.json`` in the folder records the command, the GPU, the time and
the final loss.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..video_io import atomic_write
from . import compile_cache
from .data import PARTIAL_MARKER, caption, random_clips, render
from .grammar import MAX_OBJECTS, ObjectSpec, format_prompt, sample_objects, swap_clip
from .grounding import CrossAttentionMaps, grounding_loss, prompts_in_window, token_regions
from .grow import load_deepened
from .model import (SCHEDULER_CONFIG, TEXT_LEN, build_components, build_pipeline, encode_prompts, latent_norm,
                    tokens_per_call)
from .recipe import LARGE_SHAPE, MINI_SHAPE, Phase, load_recipe
from .train_attention import use_training_attention

FLOW_SHIFT = SCHEDULER_CONFIG["flow_shift"]  # the default shift of training σ and of the sampler; --flow-shift
SIGMA_SAMPLINGS = ("uniform", "logit-normal")
POOL_BATCHES = 8  # --latent-reuse keeps this many batches of clips per shape


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m xattn_video.mini.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="pipeline folder to write (save_pretrained)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=None, help="VAE steps (default 1500; with --init: 0)")
    p.add_argument("--vae-batch", type=int, default=24)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-thumb", type=float, default=1.0,
                   help="weight of the loss tying latent channels 0-2 to the clip's RGB thumbnail (0: off); "
                        "keeps colour linear in the latent (vae_loss)")
    p.add_argument("--steps", type=int, default=6000, help="transformer steps")
    p.add_argument("--batch", type=int, default=32, help="clips per step at the mini shape")
    p.add_argument("--large-batch", type=int, default=4, help="clips per step at the mini-large shape")
    p.add_argument("--large-every", type=int, default=4, help="every N-th step at the mini-large shape (0: never)")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--warmup", type=int, default=300, help="learning-rate warm-up steps")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--uncond", type=float, default=0.1, help="share of empty prompts (for guidance)")
    p.add_argument("--sigma-sampling", choices=SIGMA_SAMPLINGS, default="uniform",
                   help="training σ: 'uniform' in the sampler's time, shifted as its steps are (every sampling step "
                        "as often as the others); 'logit-normal' (the shipped weights' first segments) gave σ > 0.96, "
                        "where a sample's first steps decide layout and colour, 2%% of the steps")
    p.add_argument("--flow-shift", type=float, default=FLOW_SHIFT,
                   help="shift of the training σ at the mini shape, and of the sampler the folder ships with: larger "
                        "trains (and samples) more near σ 1, where a clip's layout and motion are decided; the more "
                        "tokens, the nearer to 1 the data shows through the noise (at 33x128x128 the motion is "
                        "decided between σ 0.99 and 0.97)")
    p.add_argument("--large-flow-shift", type=float, default=None,
                   help="the same at the mini-large shape (default: --flow-shift); recorded in training.json, "
                        "which the mini-large preset reads")
    p.add_argument("--shape-weight", type=float, default=0.0,
                   help="extra loss weight on the latent cells where the shape word decides the clip (those that "
                        "would differ had every object the other shape: a square's corners); the grown weights "
                        "ignored the shape word (benchmarks/mini_word_gap.py), whose pixels are a few percent of an "
                        "object's. 0: plain MSE (the shipped recipe); with it the logged loss is the weighted one")
    p.add_argument("--direction-weight", type=float, default=0.0,
                   help="extra loss weight on the latent cells that would differ had every object the opposite "
                        "direction (both tracks); adds to --shape-weight's. The shipped weights move a third of the "
                        "objects a wrong way (benchmarks/mini_prompt_match.py --why). 0: off")
    p.add_argument("--binding-weight", type=float, default=0.0,
                   help="extra loss weight on the latent cells that would differ had a two-object clip's objects "
                        "each other's direction; adds to the others. The shipped weights move 15 of 16 lone objects "
                        "the prompt's way but 13 of 32 objects of two-object prompts: they bind the direction words "
                        "to the wrong object. 0: off")
    p.add_argument("--grounding-weight", type=float, default=0.0,
                   help="weight of the cross-attention grounding loss (mini.grounding: the tokens of object i should "
                        "read the prompt's i-th clause), added to the flow loss; trains eager (no --compile). The "
                        "shipped weights bind direction words to the wrong object. 0: off")
    p.add_argument("--grounding-sigma-min", type=float, default=0.0,
                   help="apply the grounding loss only to clips trained at σ ≥ this (0: all); where colour and "
                        "motion are decided, σ 0.98-0.95, is where the routing matters (benchmarks/NOTES.md)")
    p.add_argument("--two-prob", type=float, default=0.5,
                   help="share of the training clips with two objects (the shipped recipe: 0.5; a recipe "
                        "phase's two_prob overrides it)")
    p.add_argument("--cross-prob", type=float, default=0.0,
                   help="share of the two-object clips whose objects' paths cross (apart in the first and last "
                        "frames, one passing over the other between; data.render). 0: they never overlap (the "
                        "shipped weights' data), and a sample whose clauses start on crossing paths fades one")
    p.add_argument("--partial-prob", type=float, default=0.0,
                   help="share of the two-object clips whose prompt names only one of their objects, followed by "
                        "data.PARTIAL_MARKER (', among others'): the meaning clause composition gives a clause, "
                        "while lone prompts keep theirs; the folder's training.json then sets generation."
                        "clause_suffix. 0: every prompt names every object (the shipped weights' data)")
    p.add_argument("--latent-reuse", type=int, default=1,
                   help="each clip's latents serve this many steps on average (fresh noise and σ each time): a step "
                        "renders and encodes 1/N of its batch and draws the rest from the recent clips (1: no reuse)")
    p.add_argument("--encode-every", type=int, default=1, metavar="K",
                   help="with --latent-reuse: encode the new clips of K steps together every K-th step (the VAE "
                        "encoder's time per call barely depends on its batch); at most %d x --latent-reuse"
                        % (POOL_BATCHES // 2))
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile(transformer) (one graph per shape; the EMA copy, the probes "
                        "and the saved weights stay plain modules); on CUDA the text encoder and the VAE encoder of "
                        "the fresh clips compile too (EXTRA_COMPILED)")
    p.add_argument("--layers", type=int, default=None,
                   help="transformer blocks (default: mini.model.TRANSFORMER_CONFIG's, or the --init folder's); each "
                        "adds ~1.05M parameters, 2.1 MB to the folder; more than the --init folder's appends blocks "
                        "that start as the identity (mini.grow)")
    p.add_argument("--text-layers", type=int, default=None,
                   help="text-encoder blocks (default: mini.model.TEXT_ENCODER_CONFIG's, or the --init folder's); each "
                        "adds ~0.2M parameters; more than the --init folder's appends identity blocks (mini.grow)")
    p.add_argument("--training-attention", action="store_true",
                   help="the transformer's attention through mini.train_attention's processor while training (the "
                        "same math; the rotary embedding without strided writes, cheaper compiled)")
    p.add_argument("--text-len", type=int, default=TEXT_LEN,
                   help="text positions per prompt (zero-padded); generation must pass the same max_sequence_length")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--text-probe-clips", type=int, default=TEXT_PROBE,
                   help="clips in the fixed batch of the logged text gap (each log step predicts it 4 times)")
    p.add_argument("--mini-shape", type=int, nargs=3, default=list(MINI_SHAPE), metavar=("F", "H", "W"),
                   help="frames, height, width of the mini shape")
    p.add_argument("--large-shape", type=int, nargs=3, default=list(LARGE_SHAPE), metavar=("F", "H", "W"),
                   help="frames, height, width of the mini-large shape")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vae-seconds", type=float, default=None,
                   help="instead of --vae-steps: time the first steps and set --vae-steps to fill this many seconds "
                        "(printed, so --vae-steps reproduces the run: the schedule before then does not depend on it)")
    p.add_argument("--seconds", type=float, default=None, help="the same for --steps (the transformer stage)")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; stop and write --checkpoint")
    p.add_argument("--checkpoint", type=Path, default=None, help="where a stopped run saves its state")
    p.add_argument("--resume", type=Path, default=None, help="a --checkpoint file to continue from")
    p.add_argument("--compile-cache", type=Path, default=None,
                   help="with --compile: torch.compile's caches, loaded before training when the file exists and "
                        "written when the time limit stops the run, so that a resume on a fresh machine (same GPU, "
                        "torch, Triton) skips most compiling (xattn_video/mini/compile_cache.py)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from the weights of a pipeline folder (a second training segment) with fresh "
                        "optimizers: the VAE stage runs only when --vae-steps or --vae-seconds asks for it (then the "
                        "latent statistics are measured again), the transformer and text encoder continue")
    p.add_argument("--recipe", default=None,
                   help="run the transformer stage as the phases of a recipe (mini.recipe: a name, 'segments' (the "
                        "shipped weights' schedule) or 'grow' (shorter), or a JSON file), one after the other in this "
                        "process; each phase sets --seconds/--steps, --mini-shape, --batch, --large-every, "
                        "--large-batch, --flow-shift, --large-flow-shift, --lr, --warmup and --shape-weight (those "
                        "flags are then ignored), and its VAE budget applies unless --vae-steps/--vae-seconds/--init/"
                        "--init-vae say otherwise")
    p.add_argument("--init-vae", type=Path, default=None,
                   help="start from the VAE (with its latent statistics) of this pipeline folder and train the "
                        "transformer and text encoder from scratch: the VAE stage runs only when --vae-steps or "
                        "--vae-seconds asks for it")
    args = p.parse_args(argv)
    if args.init is not None and args.init_vae is not None:
        p.error("--init and --init-vae: --init already takes the VAE")
    if args.text_probe_clips < 2:  # the gap gives each clip another clip's prompt
        p.error(f"--text-probe-clips must be >= 2, got {args.text_probe_clips}")
    for flag in ("layers", "text_layers"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.init is not None:  # the folder's depths unless deeper ones are asked for (grown from the folder's)
        for flag, sub, key in (("layers", "transformer", "num_layers"), ("text_layers", "text_encoder", "num_layers")):
            config = args.init / sub / "config.json"
            if not config.is_file():
                p.error(f"--init {args.init}: no {sub}/config.json (not a mini pipeline folder)")
            depth = json.loads(config.read_text())[key]
            if getattr(args, flag) is None:
                setattr(args, flag, depth)
            elif getattr(args, flag) < depth:
                p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: the --init folder's {sub} has {depth} "
                        "blocks; a model can be deepened from it, not made shallower")
    args.command_two_prob = args.two_prob  # a recipe phase without its own two_prob goes back to it
    args.phases = None
    if args.recipe is not None:
        try:
            recipe = load_recipe(args.recipe)
        except ValueError as error:
            p.error(str(error))
        args.phases = list(recipe.phases)
        starts_from_folder = args.init is not None or args.init_vae is not None
        if not starts_from_folder and args.vae_steps is None and args.vae_seconds is None:
            args.vae_steps, args.vae_seconds = recipe.vae_steps, recipe.vae_seconds
    if args.vae_steps is None:
        starts_with_vae = args.init is not None or args.init_vae is not None
        args.vae_steps = 0 if starts_with_vae and args.vae_seconds is None else 1500
    if args.large_flow_shift is None:
        args.large_flow_shift = args.flow_shift
    if not 0 <= args.grounding_sigma_min <= 1:
        p.error(f"--grounding-sigma-min must be in [0, 1], got {args.grounding_sigma_min}")
    if args.encode_every < 1 or (args.encode_every > 1 and args.latent_reuse <= 1):
        p.error(f"--encode-every must be >= 1, and > 1 only with --latent-reuse > 1; got {args.encode_every}")
    if args.encode_every > POOL_BATCHES // 2 * max(args.latent_reuse, 1):  # one encoding: at most half the pool
        p.error(f"--encode-every {args.encode_every} with --latent-reuse {args.latent_reuse} would replace more than "
                f"half the pool ({POOL_BATCHES} batches) at once: at most {POOL_BATCHES // 2 * args.latent_reuse}")
    if not 0 <= args.two_prob <= 1:
        p.error(f"--two-prob must be in [0, 1], got {args.two_prob}")
    if not 0 <= args.cross_prob <= 1:
        p.error(f"--cross-prob must be in [0, 1], got {args.cross_prob}")
    if not 0 <= args.partial_prob <= 1:
        p.error(f"--partial-prob must be in [0, 1], got {args.partial_prob}")
    if args.partial_prob > 0 and args.grounding_weight > 0:  # grounding reads object i as the prompt's i-th clause
        p.error("--partial-prob and --grounding-weight cannot be combined: a partial prompt has fewer clauses than "
                "its clip has objects")
    for flag in ("shape_weight", "direction_weight", "binding_weight", "grounding_weight"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if min(args.flow_shift, args.large_flow_shift) <= 0:
        p.error(f"--flow-shift and --large-flow-shift must be > 0, got {args.flow_shift} and {args.large_flow_shift}")
    return args


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% (a factor of the base learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


TIMED_STEPS = (10, 40)  # steps between which --seconds / --vae-seconds time a step (after start-up costs)


def fit_steps(step: int, stage_started: list[float], seconds: float | None, warmup: int, name: str) -> int | None:
    """With a time budget, the step count that fills it, decided once at ``TIMED_STEPS[1]`` (before the
    learning-rate warm-up ends, so the schedule so far does not depend on it); ``None`` otherwise."""
    if seconds is None:
        return None
    if step == TIMED_STEPS[0]:
        stage_started.append(time.time())
    if step != TIMED_STEPS[1]:
        return None
    per_step = (time.time() - stage_started[-1]) / (TIMED_STEPS[1] - TIMED_STEPS[0])
    total = max(warmup + 50, int((seconds - (time.time() - stage_started[0])) / per_step) + step) // 50 * 50
    log(f"{name}: {per_step * 1000:.0f} ms per step -> {total} steps for {seconds:.0f} s")
    return total


def log(msg: str) -> None:
    print(msg, flush=True)


class PhaseClock:
    """Seconds per phase of a training step (render, VAE encode, transformer step, EMA) over the timed steps,
    split into mini and mini-large steps, so a log says where a step's time goes. Synchronizes the GPU at each
    phase boundary, only inside ``TIMED_STEPS``."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.totals: dict[tuple[str, str], float] = {}
        self.counts: dict[str, int] = {}
        self.active, self.kind, self.mark = False, "", 0.0

    def start(self, step: int, kind: str) -> None:
        self.active = TIMED_STEPS[0] <= step < TIMED_STEPS[1]
        if self.active:
            self.kind = kind
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.mark = self._now()

    def phase(self, name: str) -> None:
        if self.active:
            now = self._now()
            key = (self.kind, name)
            self.totals[key] = self.totals.get(key, 0.0) + now - self.mark
            self.mark = now

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def summary(self) -> str:
        parts = []
        for kind, n in self.counts.items():
            phases = ", ".join(f"{name} {1e3 * t / n:.0f}" for (k, name), t in self.totals.items() if k == kind)
            parts.append(f"{kind} ({n} steps): {phases} ms")
        return "step time by phase: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------------- VAE
THUMB_CHANNELS = 3  # latent channels pulled toward the clip's RGB thumbnail by --vae-thumb


def latent_thumbnail(video: torch.Tensor) -> torch.Tensor:
    """The clip's colour on the latent grid: frame 0 alone, then each group of 4 frames (the causal VAE's latent
    frames), averaged over each 4×4 pixel cell. video [B, C, 4k+1, H, W] -> [B, C, k+1, H/4, W/4] (any C: also
    the loss weights and the objects' masks)."""
    first, rest = video[:, :, :1], video[:, :, 1:]
    B, C, T, H, W = rest.shape
    rest = rest.reshape(B, C, T // 4, 4, H, W).mean(3)
    return F.avg_pool3d(torch.cat([first, rest], 2), (1, 4, 4))


def vae_loss(vae: Any, video: torch.Tensor, thumb_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction (L1 + MSE, object pixels weighted 5x: they are a few percent of the frame but are what the
    prompt asks for), a small KL term and, with ``thumb_weight``, the MSE between the posterior mean's first
    three channels and :func:`latent_thumbnail`; returns (loss, unweighted L1 + MSE).

    Why the thumbnail: without it the first VAE trained put 96% of the latent variance on one direction and told
    the five colours apart by their magnitude along it (red and blue codes nearly parallel, 1.9 normalised units
    apart), so a small error of the transformer swapped colours and the sampled objects changed colour from frame to
    frame. Tied to the RGB thumbnail, colour is linear in three latent channels and the colours lie far apart."""
    posterior = vae.encode(video).latent_dist
    recon = vae.decode(posterior.sample()).sample.float()
    err = (recon - video).abs() + (recon - video) ** 2
    weight = 1 + 4 * (video.amax(1, keepdim=True) > -0.5).float()  # objects: a channel near 1; background ≤ 0.1
    kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1 - posterior.logvar).mean()  # per latent element
    loss = (err * weight).mean() / weight.mean() + 1e-5 * kl
    if thumb_weight:
        thumb = F.mse_loss(posterior.mean[:, :THUMB_CHANNELS].float(), latent_thumbnail(video.float()))
        loss = loss + thumb_weight * thumb
    return loss, err.mean()


VAE_CROP = 64  # the VAE is convolutional: it trains on 64x64 crops (4x cheaper than whole mini frames)


def vae_batch(step: int, args: argparse.Namespace, rng: random.Random) -> torch.Tensor:
    """17 frames (5 latent frames), a random 64x64 crop of clips at the mini and, every other batch, the
    mini-large resolution, so that both scales of objects and edges are seen."""
    _, height, width = args.large_shape if step % 2 else args.mini_shape
    video = random_clips(args.vae_batch, 17, height, width, rng, args.device).video
    crop_h, crop_w = min(VAE_CROP, height), min(VAE_CROP, width)
    top, left = rng.randrange(height - crop_h + 1), rng.randrange(width - crop_w + 1)
    return video[..., top:top + crop_h, left:left + crop_w]


@torch.no_grad()
def latent_stats(vae: Any, args: argparse.Namespace, rng: random.Random) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means of fresh clips (both shapes)."""
    zs = []
    device = args.device
    for shape, n in ((args.mini_shape, args.batch), (args.large_shape, args.large_batch)):
        for _ in range(2):
            z = vae.encode(random_clips(n, *shape, rng, device).video).latent_dist.mode()
            zs.append(z.transpose(0, 1).reshape(z.shape[1], -1))
    z = torch.cat(zs, dim=1)
    return z.mean(1).tolist(), z.std(1).tolist()


# ----------------------------------------------------------------------------------------- transformer
def shifted_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The σ a flow-matching sampler shifted by ``shift`` steps to at sampler time ``u`` in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def flow_sigmas(n: int, generator: torch.Generator, device: str, sampling: str = "uniform",
                shift: float = FLOW_SHIFT) -> torch.Tensor:
    """σ in (0, 1), shifted as the sampler shifts its schedule (σ = shift·u / (1 + (shift-1)·u)), from u in (0, 1):
    uniform (each of the sampler's steps as likely as the others) or logit-normal (concentrated mid-way: at shift 3,
    σ > 0.96 in 2% of the draws)."""
    if sampling == "uniform":
        u = torch.rand(n, generator=generator, device=device).clamp_min(1e-4)
    elif sampling == "logit-normal":
        u = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    else:
        raise ValueError(f"sigma sampling must be one of {SIGMA_SAMPLINGS}, got {sampling!r}")
    return shifted_sigma(u, shift)


def swap_loss_weight(objects: list[list[ObjectSpec]], video: torch.Tensor, rng_before: random.Random,
                     weights: dict[str, float], cross_prob: float = 0.0) -> torch.Tensor:
    """The flow-matching loss weight of ``--shape-weight`` / ``--direction-weight``: 1 + Σ ``weights[a]`` × the share
    of each latent cell's pixels that would differ in the clip with ``a`` swapped (``grammar.swap_clip``:
    ``"shape"`` the other shape, ``"direction"`` the opposite motion, ``"binding"`` a two-object clip's objects
    with each other's direction); each twin clip drawn again from
    ``rng_before``, the generator's state before ``video`` was drawn (same sizes, travel and background).
    video [B, 3, 4k+1, H, W] -> [B, 1, k+1, H/4, W/4] (the latent grid). Why: a ball's missing corners are ~21% of a
    square's area and a moving object a few percent of the frame, small shares of the loss, so an unweighted model
    learns colour first and draws the average of the shapes and the motion the noise suggests."""
    weight = torch.ones_like(latent_thumbnail(video[:, :1]))
    for attribute, w in weights.items():
        if w <= 0:
            continue
        twin = render([swap_clip(objs, attribute) for objs in objects], video.shape[2], video.shape[3],
                      video.shape[4], copy.deepcopy(rng_before), video.device, cross_prob).video
        differs = ((twin - video).abs().amax(1, keepdim=True) > 1e-3).float()
        weight = weight + w * latent_thumbnail(differs)
    return weight


def shape_loss_weight(objects: list[list[ObjectSpec]], video: torch.Tensor, rng_before: random.Random,
                      weight: float) -> torch.Tensor:
    """``swap_loss_weight`` for the shape word alone (``--shape-weight``)."""
    return swap_loss_weight(objects, video, rng_before, {"shape": weight})


def flow_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """MSE of the velocity; with ``weight`` [B, 1, F, H, W] (broadcast over channels) its weighted mean."""
    if weight is None:
        return F.mse_loss(pred, target)
    return ((pred - target) ** 2 * weight).sum() / (weight.sum() * pred.shape[1])


class LatentPool:
    """The last clips' normalised latents and prompts at one shape, for ``--latent-reuse``: a step encodes
    ``fresh(batch)`` new clips and fills the batch with earlier ones drawn at random, so encoding is paid once per
    ``reuse`` uses. With ``encode_every`` K > 1 the new clips of K steps are encoded together every K-th step and
    the steps between draw only from the pool: the encoder's time per call hardly depends on its batch (74 ms for 8
    clips, 63 ms for 16 at 33x128x128 on an H100: launch-bound), so one call per K steps saves most of it. Holds
    ``capacity`` clips, oldest dropped first."""

    def __init__(self, reuse: int, capacity: int, encode_every: int = 1) -> None:
        self.reuse, self.capacity, self.encode_every = reuse, capacity, encode_every
        self.latents: torch.Tensor | None = None  # [N, C, F, H, W]
        self.prompts: list[str] = []
        self.calls = 0  # warm steps so far: which of them encode

    def filling(self, batch: int) -> bool:
        """True while a reusing pool holds less than a batch: its first fill, once per phase and shape."""
        return self.reuse > 1 and len(self.prompts) < batch

    def fresh(self, batch: int) -> int:
        """How many clips to render and encode now (all of the batch until the pool has a batch's worth; then
        ``batch / reuse`` per step, K steps' worth every K-th step)."""
        if self.reuse <= 1 or self.filling(batch):
            return batch
        due = self.calls % self.encode_every == 0
        self.calls += 1
        return max(1, math.ceil(batch / self.reuse)) * self.encode_every if due else 0

    def fill(self, latents: torch.Tensor | None, prompts: list[str], batch: int,
             rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        """The batch: the first of the new clips ``latents`` [n, ...] (None: n = 0), then earlier ones drawn
        without repeats; all new ones join the pool."""
        n = 0 if latents is None else latents.shape[0]
        if n < batch:
            picks = rng.sample(range(len(self.prompts)), batch - n)
            index = torch.tensor(picks, device=self.latents.device)
            earlier = self.latents[index]
            out = (earlier if latents is None else torch.cat([latents, earlier]),
                   list(prompts) + [self.prompts[i] for i in picks])
        else:
            out = latents[:batch], list(prompts[:batch])
        if self.reuse > 1 and n:
            self.latents = latents if self.latents is None else torch.cat([self.latents, latents])[-self.capacity:]
            self.prompts = (self.prompts + list(prompts))[-self.capacity:]
        return out


def encode_video(vae: Any, video: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 encoder: Any = None) -> torch.Tensor:
    """The normalised latents [B, C, F', H', W'] of ``video`` [B, 3, F, H, W] in [-1, 1]; ``encoder``: a stand-in for
    ``vae.encoder``'s forward for this call (the compiled one of :func:`compile_extras`), None: the module's own."""
    if encoder is not None:  # an instance attribute for the call: the module and its state dict stay as they are
        vae.encoder.forward = encoder
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=video.is_cuda):
            z = vae.encode(video).latent_dist.mode().float()
    finally:
        if encoder is not None:
            del vae.encoder.forward
    return (z - mean) / std  # the normalised latents the pipeline denoises


def draw_batch(pool: LatentPool, batch: int, shape: list[int], vae: Any, mean: torch.Tensor, std: torch.Tensor,
               args: argparse.Namespace, rng: random.Random, clock: PhaseClock, grounding: bool,
               encoder: Any = None) -> tuple[torch.Tensor, list[str], torch.Tensor | None, torch.Tensor | None]:
    """One training batch at ``shape`` (frames, height, width): fresh clips rendered and encoded (``pool.fresh``),
    the rest drawn from ``pool``. Returns the normalised latents [B, C, F', H', W'], the prompts (``args.uncond``
    of them emptied), the loss weight [B, 1, F', H', W'] when a swap weight is on (else None) and, with
    ``grounding``, the objects' regions [B, MAX_OBJECTS, F', H', W'] (else None). ``encoder``: as in
    :func:`encode_video`."""
    if pool.filling(batch):
        encoder = None  # a pool's first fill (once per phase and shape) runs eager: one batch size fewer to compile
    objects = [sample_objects(rng, args.two_prob) for _ in range(pool.fresh(batch))]
    if args.latent_reuse <= 1:  # the shipped weights' draw order
        prompts = ["" if rng.random() < args.uncond
                   else caption(o, rng, args.partial_prob) for o in objects]
    else:  # the pool keeps full prompts; each use drops one for guidance on its own
        prompts = [caption(o, rng, args.partial_prob) for o in objects]
    swap_weights = {"shape": args.shape_weight, "direction": args.direction_weight, "binding": args.binding_weight}
    weighted = any(w > 0 for w in swap_weights.values())
    z0 = None  # no new clips on the steps between --encode-every's encodings
    if objects:
        rng_before = copy.deepcopy(rng) if weighted else None
        clip = render(objects, *shape, rng, args.device, args.cross_prob)
        video = clip.video
        clock.phase("render")
        z0 = encode_video(vae, video, mean, std, encoder)
        if weighted:  # the weight travels with its clip through the pool, as one more channel
            z0 = torch.cat([z0, swap_loss_weight(objects, video, rng_before, swap_weights, args.cross_prob)], 1)
        if grounding:  # so do the objects' regions, as MAX_OBJECTS more channels
            z0 = torch.cat([z0, latent_thumbnail(clip.masks)], 1)
    z0, prompts = pool.fill(z0, prompts, batch, rng)
    regions, z0 = (z0[:, -MAX_OBJECTS:], z0[:, :-MAX_OBJECTS]) if grounding else (None, z0)
    weight, z0 = (z0[:, -1:], z0[:, :-1]) if weighted else (None, z0)
    if args.latent_reuse > 1:
        prompts = ["" if rng.random() < args.uncond else p for p in prompts]
    clock.phase("encode")
    return z0, prompts, weight, regions


TEXT_PROBE = 16  # clips in the fixed batch on which the log measures how much the prediction uses the prompt
# σ of the two text-gap probes: 0.75 (the running measure since the first run) and 0.97, among the sampler's first
# steps (σ 1 -> 0.94 at shift 3), where layout and colour are decided and the first weights barely used the prompt
TEXT_PROBE_SIGMAS = (0.75, 0.97)


def text_probe_batches(vae: Any, args: argparse.Namespace, mean: torch.Tensor, std: torch.Tensor,
                       sigmas: tuple[float, ...] = TEXT_PROBE_SIGMAS) -> list[dict[str, Any]]:
    """A fixed batch (its own seed: training draws nothing from it) at the mini shape, rendered and encoded once
    and noised to each of ``sigmas`` with the same noise: one probe per σ."""
    rng = random.Random(args.seed + 7919)
    objects = [sample_objects(rng) for _ in range(args.text_probe_clips)]
    z0 = encode_video(vae, render(objects, *args.mini_shape, rng, args.device).video, mean, std)
    noise = torch.randn(z0.shape, generator=torch.Generator(device=args.device).manual_seed(args.seed + 7919),
                        device=args.device)
    prompts = [format_prompt(o) for o in objects]
    return [{"zt": (1 - sigma) * z0 + sigma * noise, "target": noise - z0,
             "sigma": torch.full((len(objects),), sigma, device=args.device), "prompts": prompts}
            for sigma in sigmas]


@torch.no_grad()
def text_gap(transformer: Any, text_encoder: Any, probe: dict[str, Any], args: argparse.Namespace) -> float:
    """How much worse the prediction gets when each clip gets another clip's prompt: (loss with the prompts
    rotated by one - loss with the right prompts) / loss with the right prompts. Near 0: the prompt is ignored."""
    losses = []
    for prompts in (probe["prompts"], probe["prompts"][1:] + probe["prompts"][:1]):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):
            text = encode_prompts(text_encoder, prompts, args.device, args.text_len)
            pred = transformer(probe["zt"], timestep=probe["sigma"] * 1000, encoder_hidden_states=text,
                               return_dict=False)[0]
        losses.append(F.mse_loss(pred.float(), probe["target"]))
    return ((losses[1] - losses[0]) / losses[0]).item()


def ema_decay(step: int, decay: float) -> float:
    """The EMA's decay at ``step``: warmed up as (1 + step) / (10 + step), so that the average covers the last
    ~10% of a short run instead of keeping ``decay ** steps`` of the random initial weights (a quarter of them
    after 1,400 steps at 0.999)."""
    return min(decay, (1 + step) / (10 + step))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():  # one fused call over all tensors: a per-tensor loop costs a launch each
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


def transformer_optimizer(params: list[torch.nn.Parameter], lr: float,
                          fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW of the transformer stage (the transformer's and the text encoder's parameters together); ``fused``
    None is torch's default implementation (training uses it; benchmarks/mini_train_step.py times fused=True)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99), fused=fused)


def error_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters: an error as one log line."""
    message = str(error)
    return f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"[:limit]


def compiled_forward(module: Any, dynamic: bool | None = False, what: str = "transformer") -> Any:
    """``torch.compile(module)`` for the training steps (it shares the module's parameters, so the optimizer and the
    EMA see every update). A run on the device machine is time-boxed: if a compiled call fails (compile errors
    surface at a shape's first call), that is logged and training goes on eager rather than losing the run; an error
    that is not the compiler's recurs in the eager call and stops the run as it would have. ``dynamic`` None lets a
    dimension that changes between calls (the text encoder's prompt length) compile once as dynamic."""
    compiled: Any = torch.compile(module, dynamic=dynamic)

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(*args, **kwargs)
            except Exception as error:
                log(f"torch.compile of the {what} failed ({error_line(error)}): training goes on without it")
                compiled = None
        return module(*args, **kwargs)

    return forward


# Under --compile, what else compiles besides the transformer, by device. On an H100 (benchmarks/results/
# mini-train-step-* and mini-encode-*): the text encoder 76.1 -> 62.1 ms a mini step, 120.8 -> 117.4 at mini-large;
# the VAE encoder's fresh clips 1.9x (64 mini clips 135.6 -> 71.1 ms, 8 mini-large clips 129.3 -> 69.6). On the CPU
# Inductor's C++ build of the encoder's ~50 graphs would cost minutes for nothing a CPU run needs.
EXTRA_COMPILED = {"cuda": ("text_encoder", "vae_encoder"), "cpu": ()}
VAE_ENCODER_RECOMPILES = 256  # each causal conv runs one code object at its own shapes, with and without cached frames


def compile_extras(device: str, vae: Any, text_encoder: torch.nn.Module) -> tuple[Any, Any]:
    """``--compile``'s other parts on ``device`` (:data:`EXTRA_COMPILED`), for the compiled phases' steps: the text
    encoder's callable (compiled, else the module) and a compiled stand-in for the VAE encoder's forward to pass to
    :func:`encode_video` (else None). Only the steps' fresh clips use it, at two shapes (``mini`` and
    ``mini-large``'s encode-every batches): each new batch shape compiles the encoder's graphs again (~35 s on an
    H100), so the once-per-phase text probes and the pools' first fills stay eager. The VAE is frozen by then, so
    the compiled encoder's latents are the eager ones up to bf16 rounding."""
    extras = EXTRA_COMPILED.get(torch.device(device).type, ())
    encoder = compiled_vae_encoder(vae) if "vae_encoder" in extras else None
    text = compiled_forward(text_encoder, None, "text encoder") if "text_encoder" in extras else text_encoder
    return text, encoder


def compiled_vae_encoder(vae: Any) -> Any:
    """A compiled stand-in for ``vae.encoder``'s forward, for :func:`encode_video`'s ``encoder``, with dynamo's
    recompile limits raised to :data:`VAE_ENCODER_RECOMPILES` (at its default of 8 the encoder falls back to eager
    part-way: 1.6x instead of 1.9x at ``mini``, nothing at ``mini-large``)."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, VAE_ENCODER_RECOMPILES)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 16 * VAE_ENCODER_RECOMPILES)
    return compiled_forward(vae.encoder.forward, what="VAE encoder")


def init_from(folder: Path, components: dict, names: tuple[str, ...] = ("vae", "transformer", "text_encoder")) -> None:
    """Copy the weights of ``names`` (the VAE with its latent statistics, transformer, text encoder) from a pipeline
    folder."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    classes = {"vae": AutoencoderKLWan, "transformer": WanTransformer3DModel, "text_encoder": UMT5EncoderModel}
    for name in names:
        loaded = classes[name].from_pretrained(folder / name, dtype=torch.float32)
        if name == "vae":
            components[name].load_state_dict(loaded.state_dict())
            components[name].register_to_config(latents_mean=list(loaded.config.latents_mean),
                                                latents_std=list(loaded.config.latents_std))
        else:  # deeper than the folder's (--layers / --text-layers): the added blocks start as the identity
            load_deepened(components[name], loaded.state_dict())


def restore_weights(saved: dict, components: dict) -> None:
    """Load a checkpoint's VAE (with its latent statistics, once measured), transformer and text encoder into
    ``components``. A transformer-stage checkpoint keeps only the EMA (80 MB with the raw weights, past what a device
    call carries): the resumed run continues from it, as each of the shipped weights' segments began from the last."""
    components["vae"].load_state_dict(saved["vae"])
    if "latents_mean" in saved:
        components["vae"].register_to_config(latents_mean=saved["latents_mean"], latents_std=saved["latents_std"])
    for name in ("transformer", "text_encoder"):
        components[name].load_state_dict(saved[name] if name in saved else saved[f"ema_{name}"])


RESUME_WARMUP = 50  # steps over which a resumed transformer stage (fresh Adam moments) ramps its learning rate


def phases_of(args: argparse.Namespace) -> list[Phase]:
    """The transformer phases: the recipe's, or one phase made of the command's flags."""
    if args.phases is not None:
        return args.phases
    budget = {"seconds": args.seconds} if args.seconds is not None else {"steps": args.steps}
    return [Phase("main", **budget, mini_shape=tuple(args.mini_shape), batch=args.batch, large_every=args.large_every,
                  large_batch=args.large_batch, flow_shift=args.flow_shift, large_flow_shift=args.large_flow_shift,
                  lr=args.lr, warmup=args.warmup, shape_weight=args.shape_weight)]


def apply_phase(args: argparse.Namespace, phase: Phase) -> None:
    """Set the flags a phase decides (the training loop reads ``args``)."""
    args.seconds, args.steps = phase.seconds, phase.steps
    args.mini_shape, args.batch = list(phase.mini_shape), phase.batch
    args.large_every, args.large_batch = phase.large_every, phase.large_batch
    args.flow_shift = phase.flow_shift
    args.large_flow_shift = phase.flow_shift if phase.large_flow_shift is None else phase.large_flow_shift
    args.lr, args.warmup, args.shape_weight = phase.lr, phase.warmup, phase.shape_weight
    args.two_prob = args.command_two_prob if phase.two_prob is None else phase.two_prob


def finish_phase(state: dict, phase: Phase, args: argparse.Namespace, elapsed: float) -> None:
    """Record a finished phase (its step count and when it ended, seconds since the run began) and move on."""
    state["phases"].append({"name": phase.name, "steps": args.steps, "ended_at_s": round(elapsed, 1)})
    log(f"phase {phase.name}: {args.steps} steps, done at {elapsed:.0f} s")
    state.pop("phase_total", None)
    state["phase"] += 1
    state["step"] = 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    if args.compile and args.compile_cache is not None:  # first: before anything compiles, and a bad file costs nothing
        try:
            held = compile_cache.load(args.compile_cache)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if held is not None:
            log(f"compile cache: {held} artifacts from {args.compile_cache}")
    device = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rng = random.Random(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    # the folder's sampler: the mini shape's shift
    components = build_components(args.seed, args.flow_shift, args.layers, args.text_layers)
    vae, transformer, text_encoder = components["vae"], components["transformer"], components["text_encoder"]
    for module in (vae, transformer, text_encoder):
        module.to(device)
    state: dict[str, Any] = {"stage": "vae", "step": 0, "losses": []}
    opt_state = None
    saved: dict[str, Any] = {}
    if args.resume is not None:
        saved = torch.load(args.resume, map_location=device, weights_only=False)
        state = saved["state"]
        restore_weights(saved, components)
        opt_state = saved.get("optimizer")
        rng.setstate(saved["rng"])
        gen.set_state(saved["gen"].cpu())
        log(f"resumed at stage {state['stage']}, phase {state.get('phase', 0)}, step {state['step']}")
    elif args.init is not None or args.init_vae is not None:
        if args.init is not None:
            init_from(args.init, components)
        else:
            init_from(args.init_vae, components, names=("vae",))
        if args.vae_steps == 0 and args.vae_seconds is None:
            state["stage"] = "transformer"
        log(f"initialised from {args.init or args.init_vae}" + (" (the VAE only)" if args.init is None else ""))
    resumed_in_transformer = args.resume is not None and state["stage"] == "transformer"
    # every command of a run split by --time-limit/--resume, for the record
    state.setdefault("commands", []).append("python -m xattn_video.mini.train " + " ".join(
        sys.argv[1:] if argv is None else argv))
    state.setdefault("devices", []).append(torch.cuda.get_device_name() if device.startswith("cuda") else device)
    deadline = None if args.time_limit is None else started + args.time_limit

    def stop_now() -> bool:
        return deadline is not None and time.time() > deadline

    def elapsed() -> float:
        """Seconds of training so far, over every command of a run split by --time-limit."""
        return state.get("seconds", 0.0) + time.time() - started

    def checkpoint(optimizer: Any | None, extra: dict) -> int:
        if args.checkpoint is None:
            log("time limit reached and no --checkpoint given: nothing saved")
            return 1
        state["seconds"] = elapsed()
        payload = {"state": state, "vae": vae.state_dict(), "rng": rng.getstate(), "gen": gen.get_state(),
                   "args": vars(args) | {"out": str(args.out)}, **extra}
        if "ema_transformer" not in extra:  # in the transformer stage the EMA stands for the raw weights too
            payload.update(transformer=transformer.state_dict(), text_encoder=text_encoder.state_dict())
        if optimizer is not None:
            payload["optimizer"] = optimizer.state_dict()
        with atomic_write(args.checkpoint) as tmp:
            torch.save(payload, tmp)
        if args.compile and args.compile_cache is not None:
            try:  # the checkpoint is what the next call needs; a cache that cannot be written only costs compiling
                log(f"compile cache: {compile_cache.save(args.compile_cache) / 2**20:.1f} MB to {args.compile_cache}")
            except Exception as error:
                log(f"compile cache not written ({error_line(error)})")
        log(f"time limit: stopped at stage {state['stage']} step {state['step']}; resume with --resume {args.checkpoint}")
        return 3

    # ---- stage 1: VAE
    if state["stage"] == "vae":
        vae.train()
        opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        window = torch.zeros(2, device=device)  # summed recon and count since the last log (no per-step sync)
        vae_seconds = args.vae_seconds
        if "vae_total" in state:  # resumed after the budget was turned into a step count
            args.vae_steps, vae_seconds = state["vae_total"], None
        elif vae_seconds is not None:
            args.vae_steps = max(args.vae_steps, TIMED_STEPS[1] + 1)  # the budget decides at TIMED_STEPS[1]
        vae_started = [time.time()]
        while state["step"] < args.vae_steps:
            step = state["step"]
            decided = fit_steps(step, vae_started, vae_seconds, 100, "vae")
            if decided is not None:
                args.vae_steps = state["vae_total"] = decided
            for group in opt.param_groups:
                group["lr"] = args.vae_lr * lr_at(step, args.vae_steps, 100)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                loss, rec = vae_loss(vae, vae_batch(step, args, rng), args.vae_thumb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            window += torch.stack([rec.detach().float(), torch.ones((), device=device)])
            state["step"] += 1
            if state["step"] % args.log_every == 0 or state["step"] == args.vae_steps:
                state["vae_recon"] = (window[0] / window[1]).item()
                log(f"vae step {state['step']}/{args.vae_steps} recon {state['vae_recon']:.4f} "
                    f"({time.time() - started:.0f} s)")
                window.zero_()
            if stop_now() and state["step"] < args.vae_steps:
                return checkpoint(opt, {})
        state["vae_steps"] = args.vae_steps
        vae.eval()
        mean, std = latent_stats(vae, args, rng)
        vae.register_to_config(latents_mean=mean, latents_std=std)
        log(f"latent mean {[round(m, 3) for m in mean]} std {[round(s, 3) for s in std]}")
        state.update(stage="transformer", step=0)
        opt_state = None
    args.vae_steps = state.get("vae_steps", args.vae_steps)
    vae.eval().requires_grad_(False)
    mean, std = latent_norm(vae, device)

    # ---- stage 2: transformer + text encoder, phase by phase (one phase without --recipe)
    transformer.train()
    text_encoder.train()
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = transformer_optimizer(params, args.lr)
    # a transformer checkpoint holds no optimizer (its moments would double the file, past what a device call
    # carries) and no raw weights (the EMA's stand in): a resumed run starts Adam afresh and warms the learning rate
    # up again over RESUME_WARMUP steps (a checkpoint written before that, with its moments, continues as it was)
    resumed_at = state.get("global_step", state["step"]) if resumed_in_transformer else None
    if opt_state is not None:
        opt.load_state_dict(opt_state)
        resumed_at = None
    ema_t, ema_e = copy.deepcopy(transformer).eval(), copy.deepcopy(text_encoder).eval()
    if "ema_transformer" in saved:
        ema_t.load_state_dict(saved["ema_transformer"])
        ema_e.load_state_dict(saved["ema_text_encoder"])
    grounding = args.grounding_weight > 0
    if args.compile and grounding:
        log("--grounding-weight records the cross-attention in Python: training runs eager (--compile ignored)")
    if args.training_attention and not grounding:  # grounding installs its own recording processors
        use_training_attention(transformer)
    compiling = args.compile and not grounding
    forward = compiled_forward(transformer) if compiling else transformer
    text_forward, vae_encoder = compile_extras(device, vae, text_encoder) if compiling else (text_encoder, None)
    window = torch.zeros(2, device=device)
    phases = phases_of(args)
    for key, value in (("phase", 0), ("global_step", state["step"]), ("phases", [])):  # older checkpoints: one phase
        state.setdefault(key, value)
    while state["phase"] < len(phases):
        phase = phases[state["phase"]]
        apply_phase(args, phase)
        seconds = args.seconds
        if "phase_total" in state:  # resumed inside a phase whose budget was turned into steps
            args.steps, seconds = state["phase_total"], None
        elif seconds is not None:
            args.steps = max(args.warmup + 1, TIMED_STEPS[1] + 1)  # until fit_steps decides, at TIMED_STEPS[1]
        if phase.restart and state["step"] == 0 and state["global_step"] > 0:
            # as each of the shipped weights' segments began from the previous folder: the EMA weights, fresh Adam
            # moments (the phase's own warm-up ramps the learning rate) and the EMA's warm-up begun again
            transformer.load_state_dict(ema_t.state_dict())
            text_encoder.load_state_dict(ema_e.state_dict())
            opt = transformer_optimizer(params, args.lr)
            state["ema_from"], resumed_at = state["global_step"], None
        model = forward if phase.compile else transformer  # the phase's own choice under --compile
        text_model, encoder = (text_forward, vae_encoder) if phase.compile else (text_encoder, None)
        if len(phases) > 1:
            log(f"phase {phase.name} ({state['phase'] + 1}/{len(phases)}): {tokens_per_call(*args.mini_shape)} "
                f"tokens x {args.batch}, shift {args.flow_shift:g}, every {args.large_every or '-'} step mini-large "
                f"(shift {args.large_flow_shift:g}), lr {args.lr:.0e}, shape weight {args.shape_weight:g}, "
                + (f"{args.seconds:.0f} s" if args.seconds is not None else f"{args.steps} steps")
                + (", eager" if model is not forward else "") + (", from the EMA" if phase.restart else ""))
        probe, probe_high = text_probe_batches(vae, args, mean, std)
        stage_started = [time.time()]
        clock = PhaseClock(device)
        pools = {"mini": LatentPool(args.latent_reuse, POOL_BATCHES * args.batch, args.encode_every),
                 "large": LatentPool(args.latent_reuse, POOL_BATCHES * args.large_batch, args.encode_every)}
        while state["step"] < args.steps:
            step = state["step"]
            decided = fit_steps(step, stage_started, seconds, args.warmup, phase.name)
            if decided is not None:  # a resumed run keeps the count the budget was turned into
                args.steps = state["phase_total"] = decided
            if step == TIMED_STEPS[1] and clock.counts:
                log(clock.summary())
            restart = 1.0 if resumed_at is None else min(1.0, (state["global_step"] - resumed_at + 1) / RESUME_WARMUP)
            for group in opt.param_groups:
                group["lr"] = args.lr * lr_at(step, args.steps, args.warmup) * restart
            large = args.large_every > 0 and step % args.large_every == args.large_every - 1
            shape, batch = (args.large_shape, args.large_batch) if large else (args.mini_shape, args.batch)
            clock.start(step, "mini-large" if large else "mini")
            z0, prompts, weight, regions = draw_batch(pools["large" if large else "mini"], batch, shape, vae, mean,
                                                      std, args, rng, clock, grounding, encoder)
            noise = torch.randn(z0.shape, generator=gen, device=device)
            shift = args.large_flow_shift if large else args.flow_shift
            sigma = flow_sigmas(batch, gen, device, args.sigma_sampling, shift).view(-1, 1, 1, 1, 1)
            zt = (1 - sigma) * z0 + sigma * noise
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")), \
                    (CrossAttentionMaps(transformer) if grounding else contextlib.nullcontext()) as maps:
                text = encode_prompts(text_model, prompts, device, args.text_len)  # = pipe.encode_prompt, faster
                pred = model(zt, timestep=sigma.view(-1) * 1000, encoder_hidden_states=text, return_dict=False)[0]
            loss = flow_loss(pred.float(), noise - z0, weight)
            if grounding:
                patch = tuple(transformer.config.patch_size[1:])
                in_window = prompts_in_window(prompts, sigma, args.grounding_sigma_min)
                loss = loss + args.grounding_weight * grounding_loss(maps.layers, token_regions(regions, patch),
                                                                     in_window)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            clock.phase("train")
            ema_step = state["global_step"] - state.get("ema_from", 0)
            ema_update(ema_t, transformer, ema_decay(ema_step, args.ema))
            ema_update(ema_e, text_encoder, ema_decay(ema_step, args.ema))
            clock.phase("ema")
            window += torch.stack([loss.detach(), torch.ones((), device=device)])
            state["step"] += 1
            state["global_step"] += 1
            if state["step"] % args.log_every == 0 or state["step"] == args.steps:
                at = state["global_step"]
                state["losses"].append((at, round((window[0] / window[1]).item(), 5)))
                state.setdefault("text_gaps", []).append((at, round(text_gap(transformer, text_encoder, probe, args),
                                                                    4)))
                state.setdefault("text_gaps_high", []).append(
                    (at, round(text_gap(transformer, text_encoder, probe_high, args), 4)))
                log(f"step {state['step']}/{args.steps} loss {state['losses'][-1][1]:.4f} text gap "
                    f"{state['text_gaps'][-1][1]:+.3f} (σ {TEXT_PROBE_SIGMAS[1]}: {state['text_gaps_high'][-1][1]:+.3f}) "
                    f"lr {opt.param_groups[0]['lr']:.2e} ({time.time() - started:.0f} s)")
                window.zero_()
            if stop_now() and (state["step"] < args.steps or state["phase"] + 1 < len(phases)):
                if state["step"] == args.steps:  # stopped between phases: the next one starts on resume
                    finish_phase(state, phase, args, elapsed())
                return checkpoint(None, {"latents_mean": vae.config.latents_mean,
                                         "latents_std": vae.config.latents_std,
                                         "ema_transformer": ema_t.state_dict(),
                                         "ema_text_encoder": ema_e.state_dict()})
        finish_phase(state, phase, args, elapsed())

    save(args, components, ema_t, ema_e, state, elapsed())
    return 0


def _training_record(folder: Path | None) -> dict | None:
    """The ``training.json`` of a folder training started from, or None (no folder, or a folder without one)."""
    record = None if folder is None else folder / "training.json"
    return json.loads(record.read_text()) if record is not None and record.exists() else None


def save(args: argparse.Namespace, components: dict, ema_t: Any, ema_e: Any, state: dict, seconds: float) -> None:
    """Write the pipeline folder (EMA weights, float16) and its ``training.json``, atomically (temp, rename)."""
    import shutil

    import diffusers
    import transformers

    final = {**components, "transformer": ema_t, "text_encoder": ema_e}
    scheduler = components["scheduler"]  # the sampler the folder ships with: the last phase's shift
    final["scheduler"] = type(scheduler).from_config(scheduler.config, flow_shift=args.flow_shift)
    final["transformer"] = final["transformer"].to("cpu", torch.float16)  # 18 MB; the text encoder and VAE
    for name in ("text_encoder", "vae"):  # stay float32 (5 MB), so a plain from_pretrained runs them anywhere
        final[name] = final[name].to("cpu", torch.float32)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_pipeline(final).save_pretrained(tmp, safe_serialization=True)
    losses = state["losses"]
    init = _training_record(args.init)
    record = {
        "command": state["commands"][0],
        "commands": state["commands"],  # more than one when --time-limit split the run
        "devices": state["devices"],  # the device each command ran on
        "steps": {"vae": args.vae_steps, "transformer": state["global_step"]},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "phases"},
        "recipe": None if args.phases is None else [dataclasses.asdict(phase) for phase in args.phases],
        "phases": state["phases"],  # each phase's step count (decided from its seconds) and when it ended
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "seconds": round(seconds, 1),
        "final_loss": losses[-1][1] if losses else None,
        "vae_recon": state.get("vae_recon"),
        "loss_curve": losses,
        "text_len": args.text_len,
        "flow_shift": {"mini": args.flow_shift, "mini-large": args.large_flow_shift},  # generation.flow_shift
        # generation.clause_suffix: what the composition appends to each clause (a fine-tune keeps its init's)
        "clause_suffix": PARTIAL_MARKER if args.partial_prob > 0 else (init or {}).get("clause_suffix", ""),
        "text_gap_curve": state.get("text_gaps", []),  # (step, relative loss increase with mismatched prompts)
        "text_gap_high_curve": state.get("text_gaps_high", []),  # the same at σ TEXT_PROBE_SIGMAS[1]
        "tokens_per_call": {"mini": tokens_per_call(*args.mini_shape),
                            "mini-large": tokens_per_call(*args.large_shape)},
        # a second segment (--init) records the segment it started from, so the chain of commands is kept
        "init": init,
        "init_vae": _training_record(args.init_vae),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
    }
    (tmp / "training.json").write_text(json.dumps(record, indent=1))
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.replace(args.out)
    log(f"wrote {args.out} ({seconds:.0f} s, final loss {record['final_loss']})")


if __name__ == "__main__":
    raise SystemExit(main())
