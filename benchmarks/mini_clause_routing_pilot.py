"""Pilot (not a product path): clause composition + cross-attention routed by the model's own colours.

    ROUTE=4,9 python benchmarks/mini_clause_routing_pilot.py <mini_prompt_match.py arguments>

In steps first ≤ k < last of a two-clause prompt's generation, the whole prompt's row of the transformer call gets a
cross-attention bias: the video tokens where the previous step's clean-video prediction x̂0 shows clause i's colour
(the mini VAE's first three latent channels are the RGB thumbnail) may not read clause j's text.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import xattn_video.generate as generate_mod  # noqa: E402
import xattn_video.pipelines.clauses as clauses_mod  # noqa: E402
from xattn_video.eval.scorers.prompt_match import colour_labels  # noqa: E402
from xattn_video.mini.grammar import COLOURS, parse_prompt  # noqa: E402
from xattn_video.mini.grounding import clause_spans  # noqa: E402
from xattn_video.warmup.schedule import calling_pipeline  # noqa: E402

FIRST, LAST = (int(x) for x in os.environ.get("ROUTE", "4,9").split(","))
COVER = float(os.environ.get("ROUTE_COVER", "0.25"))
STATE: dict[str, Any] = {"bias": None, "prompt": None, "regions": None}


class RoutedCrossAttention:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *a, **kw):
        if STATE["bias"] is not None and STATE["bias"].shape[0] == hidden_states.shape[0]:
            attention_mask = STATE["bias"].to(hidden_states.dtype)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *a, **kw)


def colour_regions(x0: torch.Tensor, vae_config: Any, colours: list[str]) -> torch.Tensor | None:
    """x̂0 [1, C, F, H, W] (normalised latents) -> [2, N] bool token regions of each clause's colour, or None."""
    mean = torch.tensor(vae_config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae_config.latents_std).view(1, -1, 1, 1, 1)
    raw = x0.float().cpu() * std + mean
    rgb = ((raw[0, :3].clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).numpy()  # [F, H, W, 3] in [0, 1]
    labels = colour_labels(rgb)
    names = list(COLOURS)
    masks = torch.stack([torch.from_numpy(labels == names.index(c)).float() for c in colours])[None]  # [1,2,F,H,W]
    cover = F.avg_pool3d(masks, (1, 2, 2)).reshape(2, -1)
    regions = cover > COVER
    both = regions.all(0)
    regions[:, both] = False
    return regions if regions.any() else None


class RoutingHook(clauses_mod.ClauseCompositionHook):
    def new_forward(self, module, *args, **kwargs):
        text = kwargs.get("encoder_hidden_states")
        if args or not self._is_prompt(text):
            return super().new_forward(module, *args, **kwargs)
        for block in module.blocks:
            if not isinstance(block.attn2.processor, RoutedCrossAttention):
                block.attn2.set_processor(RoutedCrossAttention(block.attn2.processor))
        step = self.tracker.current()
        prompt = STATE["prompt"]
        objects = parse_prompt(prompt)
        colours = [o.colour for o in objects]
        spans = clause_spans(prompt)
        routed = (step is not None and FIRST <= step < LAST and STATE["regions"] is not None
                  and len(spans) >= 2 and len(set(colours)) == 2)
        if routed:
            regions = STATE["regions"]
            L = text.shape[1]
            bias = torch.zeros(regions.shape[1], L)
            for i in range(2):
                for j, (s, e) in enumerate(spans[:2]):
                    if j != i:
                        bias[regions[i], s:e] = -1e4
            batch = kwargs["hidden_states"].shape[0]
            wide_rows = batch * (1 + self.part_embeds.shape[0])
            in_window = self.steady_batch or not (self.steps is not None and step >= self.steps) and step >= self.start
            rows = wide_rows if in_window else batch
            full = torch.zeros(rows, 1, regions.shape[1], L)
            full[:batch, 0] = bias
            STATE["bias"] = full.to(kwargs["hidden_states"].device)
        try:
            out = super().new_forward(module, *args, **kwargs)
        finally:
            STATE["bias"] = None
        v = out[0] if isinstance(out, tuple) else out.sample
        if len(set(colours)) == 2:
            sigma = float(kwargs["timestep"].flatten()[0]) / 1000.0
            x0 = kwargs["hidden_states"] - sigma * v
            pipe = calling_pipeline()
            STATE["regions"] = colour_regions(x0[:1], pipe.vae.config, colours)
        return out


_orig = generate_mod.clause_composition


def clause_composition(pipe, prompt, *a, **kw):
    STATE["prompt"], STATE["regions"] = prompt, None
    return _orig(pipe, prompt, *a, **kw)


clauses_mod.ClauseCompositionHook = RoutingHook
generate_mod.clause_composition = clause_composition



# --- KEEP=first,last: in those plain steps, the prediction inside each clause's colour region (dilated) is the
# refereed composition's, the prompt's elsewhere (the call is widened as in the composed steps).
KEEP = tuple(int(x) for x in os.environ["KEEP"].split(",")) if os.environ.get("KEEP") else None
DILATE = int(os.environ.get("KEEP_DILATE", "1"))


def colour_cells(x0: torch.Tensor, vae_config: Any, colours: list[str]) -> torch.Tensor:
    """x̂0 [1, C, F, H, W] -> [1, 1, F, H, W] float: cells of any clause's colour, dilated by DILATE cells."""
    mean = torch.tensor(vae_config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae_config.latents_std).view(1, -1, 1, 1, 1)
    raw = x0.float().cpu() * std + mean
    rgb = ((raw[0, :3].clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).numpy()
    labels = colour_labels(rgb)
    names = list(COLOURS)
    cells = torch.from_numpy(np.isin(labels, [names.index(c) for c in colours])).float()[None, None]
    if DILATE:
        cells = F.max_pool3d(cells, (1, 2 * DILATE + 1, 2 * DILATE + 1), stride=1, padding=(0, DILATE, DILATE))
    return cells


class KeepHook(clauses_mod.ClauseCompositionHook):
    def new_forward(self, module, *args, **kwargs):
        text = kwargs.get("encoder_hidden_states")
        if args or not self._is_prompt(text):
            return super().new_forward(module, *args, **kwargs)
        step = self.tracker.current()
        colours = [o.colour for o in parse_prompt(STATE["prompt"])]
        keep = (KEEP is not None and step is not None and KEEP[0] <= step < KEEP[1]
                and STATE.get("cells") is not None)
        if keep:
            batch = kwargs["hidden_states"].shape[0]
            copies = 1 + self.part_embeds.shape[0]
            parts = self.part_embeds.repeat_interleave(batch, dim=0)
            wide = {k: (torch.cat([v] * copies) if isinstance(v, torch.Tensor) and v.ndim > 0
                        and v.shape[0] == batch else v) for k, v in kwargs.items()}
            wide["encoder_hidden_states"] = torch.cat([text, parts])
            out = self.fn_ref.original_forward(**wide)
            sample = out[0] if isinstance(out, tuple) else out.sample
            prompt, empty, *clauses = sample.split(batch)
            composed = (clauses_mod.refereed_composition(prompt, empty, clauses) if self.referee
                        else clauses_mod.composition(empty, clauses))
            mask = STATE["cells"].to(prompt.device, prompt.dtype)
            blended = prompt + mask * (composed - prompt)
            if isinstance(out, tuple):
                out = (blended, *out[1:])
            else:
                out.sample = blended
        else:
            out = super().new_forward(module, *args, **kwargs)
        v = out[0] if isinstance(out, tuple) else out.sample
        if len(set(colours)) == len(colours):
            sigma = float(kwargs["timestep"].flatten()[0]) / 1000.0
            x0 = kwargs["hidden_states"][:1] - sigma * v[:1]
            STATE["cells"] = colour_cells(x0, calling_pipeline().vae.config, colours)
        return out


def _reset(pipe, prompt, *a, **kw):
    STATE["prompt"], STATE["regions"], STATE["cells"] = prompt, None, None
    return _orig(pipe, prompt, *a, **kw)


if KEEP is not None:
    clauses_mod.ClauseCompositionHook = KeepHook
    generate_mod.clause_composition = _reset


if __name__ == "__main__":
    import mini_prompt_match

    sys.exit(mini_prompt_match.main(sys.argv[1:]))
