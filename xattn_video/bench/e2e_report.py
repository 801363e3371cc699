"""The end-to-end benchmark's report: projected video times and speedups, the console line and the markdown table."""

from __future__ import annotations

from typing import Any


def setting_label(row: dict) -> str:
    return f"{row['setting']} +compile" if row.get("compiled") else row["setting"]


def row_line(row: dict) -> str:
    head = f"  {row['model']} {row['shape']} {setting_label(row):<22}"
    if "total_ms" not in row:
        return f"{head} skipped: {row['skipped']}"
    dens = "" if row["density"] is None else f" density {row['density']:.3f}"
    return (f"{head} {row['total_ms'] / 1e3:7.2f} s  (dense attn {row['dense_attention_ms'] / 1e3:.2f}, estimate "
            f"{row['estimate_ms'] / 1e3:.2f}, selection {row['selection_ms'] / 1e3:.2f}, sparse attn "
            f"{row['sparse_attention_ms'] / 1e3:.2f}, other {row['other_ms'] / 1e3:.2f}){dens}")


def project(rows: list[dict], steps: int, warmup: int, reuse: int) -> None:
    """Projected video seconds per row: warmup dense steps (ours: our dense path) + sparse steps.

    ``speedup_*``: against eager stock diffusers. Compiled rows also get ``speedup_*_same``, against stock compiled
    the same way, and their warmup steps use the compiled dense row."""
    by_key = {(r["model"], r["shape"], r["setting"], bool(r.get("compiled"))): r for r in rows if "total_ms" in r}
    for r in rows:
        if "total_ms" not in r:
            continue
        compiled = bool(r.get("compiled"))
        stock = by_key.get((r["model"], r["shape"], "stock", compiled))
        dense = by_key.get((r["model"], r["shape"], "dense", compiled))
        step_s = r["total_ms"] / 1e3
        if r["setting"] in ("stock", "dense"):
            video = steps * step_s
        elif r.get("reuse_every", 0) > 1:
            # measured reuse step; the estimating steps (one in N) run as the same setting without reuse
            warm_s = (dense or stock or r)["total_ms"] / 1e3
            fresh = by_key.get((r["model"], r["shape"], r["setting"].split("-reuse")[0], compiled))
            fresh_s = fresh["total_ms"] / 1e3 if fresh else step_s
            n_sparse = steps - warmup
            n_fresh = -(-n_sparse // r["reuse_every"])
            video = warmup * warm_s + n_fresh * fresh_s + (n_sparse - n_fresh) * step_s
        else:
            warm_s = (dense or stock or r)["total_ms"] / 1e3
            video = warmup * warm_s + (steps - warmup) * step_s
            if reuse > 1 and r["estimate_ms"] > 0:
                saved = (1 - 1 / reuse) * (r["estimate_ms"] + r["selection_ms"]) / 1e3
                r["video_s_reuse"] = warmup * warm_s + (steps - warmup) * (step_s - saved)
        r["video_s"] = video
        r["speedup_step"] = None
        eager_stock = by_key.get((r["model"], r["shape"], "stock", False))
        for suffix, ref in (("", eager_stock), ("_same", stock if compiled else None)):
            if ref is None:
                continue
            r["speedup_step" + suffix] = ref["total_ms"] / r["total_ms"]
            r["speedup_video" + suffix] = steps * ref["total_ms"] / 1e3 / video
            if "video_s_reuse" in r:
                r["speedup_video_reuse" + suffix] = steps * ref["total_ms"] / 1e3 / r["video_s_reuse"]


def markdown(res: dict) -> str:
    def f(x: Any, fmt: str) -> str:
        return "" if x is None else format(x, fmt)

    compiled = any(r.get("compiled") for r in res["rows"])

    lines = [f"# End-to-end speed: {res['gpu']}", "",
             f"torch {res['torch']}, triton {res['triton']}, sparse kernel {res.get('sparse_kernel', 'triton')}, "
             f"{res['date']}. One transformer forward per setting "
             f"(= one denoising step), B=1, random bf16 weights at diffusers' default config (outputs are noise). "
             f"Projected video: {res['warmup_steps']} dense warmup steps (ours: our dense path) + "
             f"{res['steps'] - res['warmup_steps']} steps of the setting, vs {res['steps']} stock steps."
             + (f" 'reuse {res['reuse']}' projects estimate + selection on one sparse step in {res['reuse']}."
                if res["reuse"] > 1 else ""), "",
             "| model | shape | tokens | setting | density | step s | vs stock | dense attn s | estimate s | "
             "selection s | sparse attn s | other s | video s | video vs stock |"
             + (f" video s (reuse {res['reuse']}) | vs stock |" if res["reuse"] > 1 else "")
             + (" step vs stock +compile | video vs stock +compile |" if compiled else ""),
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
             + ("---:|---:|" if res["reuse"] > 1 else "") + ("---:|---:|" if compiled else "")]
    for r in res["rows"]:
        if "total_ms" not in r:
            lines.append(f"| {r['model']} | {r['shape']} | {r['tokens']:,} | {setting_label(r)} | skipped: "
                         f"{r['skipped']} |")
            continue
        secs = " | ".join("–" if r.get("dense_attention_untimed") and k == "dense_attention_ms" else f"{r[k] / 1e3:.2f}"
                          for k in ("dense_attention_ms", "estimate_ms", "selection_ms", "sparse_attention_ms",
                                    "other_ms"))
        line = (f"| {r['model']} | {r['shape']} | {r['tokens']:,} | {setting_label(r)} | {f(r['density'], '.3f')} | "
                f"{r['total_ms'] / 1e3:.2f} | {f(r.get('speedup_step'), '.2f')}× | {secs} | "
                f"{r['video_s']:.0f} | {f(r.get('speedup_video'), '.2f')}× |")
        if res["reuse"] > 1:
            line += f" {f(r.get('video_s_reuse'), '.0f')} | {f(r.get('speedup_video_reuse'), '.2f')}× |"
        if compiled:
            line += (f" {f(r.get('speedup_step_same'), '.2f')}{'×' if r.get('compiled') else ''} |"
                     f" {f(r.get('speedup_video_same'), '.2f')}{'×' if r.get('compiled') else ''} |")
        lines.append(line)
    if any(not r.get("output_finite", True) for r in res["rows"]):
        lines += ["", "Some outputs were not finite (random weights); the timings are unaffected."]
    lines += [""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def print_table(res: dict) -> None:
    print(markdown(res))
