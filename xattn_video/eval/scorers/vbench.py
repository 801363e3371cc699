"""``vbench:<dim>,...``: VBench (custom_input mode) run in a separate Python environment.

This module holds the weights manifest (which checkpoints each dimension loads), the preflight checks, the
subprocess runner and :class:`VBenchScorer`; the code that runs inside VBench's environment is the
``vbench_driver`` module next to it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...video_io import write_json
from ..errors import Unavailable
from .registry import VideoItem, check_batch

__all__ = ["DRIVER_MODULE", "VBENCH_CUSTOM_INPUT_UNSUPPORTED", "VBENCH_DIMENSION_WEIGHTS", "VBenchScorer",
           "VBenchWeight", "make_vbench", "vbench_file_name"]

DRIVER_MODULE = "xattn_video.eval.scorers.vbench_driver"
_PACKAGE_PARENT = Path(__file__).resolve().parents[3]  # the folder holding xattn_video/


@dataclass(frozen=True)
class VBenchWeight:
    """A file VBench needs: ``relpath`` under VBench's cache dir (or, if ``torch_hub``, under the torch hub dir)."""

    relpath: str
    source: str
    torch_hub: bool = False


_CLIP_B32 = VBenchWeight(
    "clip_model/ViT-B-32.pt",
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
)
_CLIP_L14 = VBenchWeight(
    "clip_model/ViT-L-14.pt",
    "https://openaipublic.azureedge.net/clip/models/"
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
)
_DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
_VICLIP = (
    VBenchWeight(
        "ViCLIP/ViClip-InternVid-10M-FLT.pth",
        "https://huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main/ViClip-InternVid-10M-FLT.pth",
    ),
    # Read when vbench.third_party.ViCLIP.simple_tokenizer is imported (it runs wget there if the file is missing).
    VBenchWeight(
        "ViCLIP/bpe_simple_vocab_16e6.txt.gz",
        "https://raw.githubusercontent.com/openai/CLIP/main/clip/bpe_simple_vocab_16e6.txt.gz",
    ),
)

# Files each VBench dimension loads when run with local=True (VBench downloads any that are missing, so all must be
# present beforehand). From github.com/Vchitect/VBench: vbench/utils.py `init_submodules`, plus
# vbench/aesthetic_quality.py (`get_aesthetic_model`), vbench/temporal_style.py and vbench/overall_consistency.py
# (ViCLIP tokenizer), and facebookresearch/dino hubconf.py (`dino_vitb16` loads its weights through
# torch.hub.load_state_dict_from_url, i.e. from the torch hub cache of the VBench interpreter).
VBENCH_DIMENSION_WEIGHTS: dict[str, tuple[VBenchWeight, ...]] = {
    "subject_consistency": (
        VBenchWeight(
            "dino_model/facebookresearch_dino_main/hubconf.py",
            "git clone https://github.com/facebookresearch/dino "
            "<VBENCH_CACHE_DIR>/dino_model/facebookresearch_dino_main",
        ),
        VBenchWeight("dino_model/dino_vitbase16_pretrain.pth", _DINO_URL),
        VBenchWeight("checkpoints/dino_vitbase16_pretrain.pth", _DINO_URL, torch_hub=True),
    ),
    "background_consistency": (_CLIP_B32,),
    "aesthetic_quality": (
        _CLIP_L14,
        VBenchWeight(
            "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
            "https://raw.githubusercontent.com/LAION-AI/aesthetic-predictor/main/sa_0_4_vit_l_14_linear.pth",
        ),
    ),
    "imaging_quality": (
        VBenchWeight(
            "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
            "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth",
        ),
    ),
    "human_action": (
        VBenchWeight(
            "umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",
            "https://huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main/l16_ptk710_ftk710_ftk400_f16_res224.pth",
        ),
    ),
    "temporal_flickering": (),
    "motion_smoothness": (
        VBenchWeight("amt_model/amt-s.pth", "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth"),
    ),
    "dynamic_degree": (
        VBenchWeight(
            "raft_model/models/raft-things.pth",
            "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip "
            "(unzip into <VBENCH_CACHE_DIR>/raft_model/)",
        ),
    ),
    "temporal_style": _VICLIP,
    "overall_consistency": _VICLIP,
}

# Rejected by VBench in custom_input mode (vbench/__init__.py `check_dimension_requires_extra_info`): they need the
# auxiliary information of VBench's standard prompt suite.
VBENCH_CUSTOM_INPUT_UNSUPPORTED = frozenset(
    {"object_class", "multiple_objects", "scene", "appearance_style", "color", "spatial_relationship"}
)

_IMPORT_TIMEOUT_S = 60.0
_TAIL_CHARS = 3000


def _default_vbench_cache_dir() -> Path:
    """VBench's cache dir as vbench/utils.py computes it: $VBENCH_CACHE_DIR or ~/.cache/vbench."""
    return Path(os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench")


def _torch_hub_dir(env: dict[str, str]) -> Path:
    """torch.hub.get_dir() of an interpreter started with ``env``: $TORCH_HOME/hub or $XDG_CACHE_HOME/torch/hub."""
    torch_home = env.get("TORCH_HOME")
    if not torch_home:
        torch_home = os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "torch")
    return Path(torch_home).expanduser() / "hub"


def _tail(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def _run_process(cmd: list[str], env: dict[str, str], timeout_s: float, cwd: str | None = None) -> tuple[int, str, str]:
    """Run ``cmd``; returns (returncode, stdout, stderr). On timeout kills its process group, raises TimeoutExpired."""
    posix = os.name == "posix"
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        text=True,
        errors="replace",
        start_new_session=posix,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if posix:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group we started: VBench and anything it spawned
            except ProcessLookupError:
                pass
        else:  # pragma: no cover
            proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout_s, output=out, stderr=err) from None
    return proc.returncode, out, err


def _resolve_python(python: str) -> str | None:
    """Absolute path of the interpreter ``python`` (a path, or a name looked up on PATH), or None if not found."""
    if os.sep in python or (os.altsep and os.altsep in python):
        return python if os.path.isfile(python) and os.access(python, os.X_OK) else None
    return shutil.which(python)


def _vbench_import_problem(python: str, env: dict[str, str], timeout_s: float = _IMPORT_TIMEOUT_S) -> str | None:
    """Why ``import vbench`` fails in interpreter ``python`` (missing, not executable, error, timeout), or None."""
    exe = _resolve_python(python)
    if exe is None:
        return (
            f"the VBench Python interpreter {python!r} does not exist or is not executable "
            "(set XVID_VBENCH_PYTHON, or python=, to the interpreter of the environment where vbench is installed)"
        )
    try:
        code, _, err = _run_process([exe, "-c", "import vbench"], env, timeout_s)
    except subprocess.TimeoutExpired:
        return f"'import vbench' in {exe} did not finish within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot start the VBench Python interpreter {exe}: {exc}"
    if code != 0:
        last = _tail(err).splitlines()[-1:] or [f"exit code {code}"]
        return (
            f"vbench does not import in {exe}: {last[0]} (install VBench in that environment, e.g. pip install vbench; "
            "VBench pins old transformers/numpy, so use a separate environment and point XVID_VBENCH_PYTHON at it)"
        )
    return None


def vbench_file_name(prompt: str, index: int, suffix: str = ".mp4") -> str:
    """File name VBench's custom_input mode expects: ``<prompt>-<index><suffix>``.

    VBench takes the prompt from the name (``get_prompt_from_filename`` drops a trailing ``-<digits>``) and
    human_action reads its label from it; path separators and control characters become spaces and the prompt is cut
    to 180 bytes, so exact prompts are passed to VBench separately (its ``prompt_list`` mapping).
    """
    stem = re.sub(r"[\x00-\x1f/\\]+", " ", prompt).strip()
    encoded = stem.encode("utf-8")[:180]
    stem = encoded.decode("utf-8", errors="ignore").strip() or "video"
    return f"{stem}-{index}{suffix}"




def _parse_vbench_results(
    results: dict, file_names: list[str], dimensions: Sequence[str]
) -> dict[str, list[float]]:
    """VBench's ``<name>_eval_results.json`` -> ``{dimension: [score per video]}`` in the order of ``file_names``.

    Each dimension maps to ``[mean, [{"video_path": ..., "video_results": score}, ...]]``; booleans (dynamic_degree,
    human_action) become 1.0 / 0.0; videos VBench skipped get NaN.
    """
    index = {name: i for i, name in enumerate(file_names)}
    scores: dict[str, list[float]] = {}
    for dim in dimensions:
        entry = results.get(dim)
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], list)):
            raise Unavailable(f"VBench results have no per-video list for dimension {dim!r}: {str(entry)[:200]}")
        values = [math.nan] * len(file_names)
        for record in entry[1]:
            name = os.path.basename(str(record["video_path"]))
            if name not in index:
                raise Unavailable(f"VBench reported a video this scorer did not give it: {record['video_path']}")
            values[index[name]] = float(record["video_results"])
        scores[dim] = values
    return scores


class VBenchScorer:
    """``vbench:<dim>,...``: VBench (custom_input mode) in a separate Python environment, one score per video and dim.

    ``python``: interpreter with vbench installed (default $XVID_VBENCH_PYTHON, else this interpreter);
    ``cache_dir``: VBench's checkpoint dir (default $VBENCH_CACHE_DIR, else ~/.cache/vbench); ``timeout_s``: limit for
    the whole VBench run; ``device``: torch device for VBench (default cuda if available). Nothing is downloaded: the
    interpreter and every checkpoint the dimensions need (:data:`VBENCH_DIMENSION_WEIGHTS`) are checked first, and
    :class:`Unavailable` says what is missing. A dimension whose checkpoints are missing is skipped on its own
    (``self.skipped`` after ``score``: ``{"vbench:<dim>": reason}``); the others run. Scores the videos' mp4 files
    (``VideoItem.path``: 8-bit, lossy, ``reads = "mp4"``), sub-metrics named after the dimensions.
    """

    name = "vbench"
    reads = "mp4"  # VBench decodes the written files, so its scores include the encoding error

    def __init__(
        self,
        dimensions: list[str],
        python: str | None = None,
        cache_dir: Path | None = None,
        timeout_s: float = 3600,
        *,
        device: str | None = None,
        imaging_quality_preprocessing_mode: str = "longer",
    ) -> None:
        dims = list(dict.fromkeys(dimensions))
        if not dims:
            raise ValueError(
                "the vbench scorer needs at least one dimension, e.g. vbench:subject_consistency,motion_smoothness; "
                f"known: {sorted(VBENCH_DIMENSION_WEIGHTS)}"
            )
        for dim in dims:
            if dim in VBENCH_CUSTOM_INPUT_UNSUPPORTED:
                raise ValueError(
                    f"VBench dimension {dim!r} needs VBench's standard prompt suite and is not supported for custom "
                    f"videos (custom_input mode); supported: {sorted(VBENCH_DIMENSION_WEIGHTS)}"
                )
            if dim not in VBENCH_DIMENSION_WEIGHTS:
                raise ValueError(f"unknown VBench dimension {dim!r}; known: {sorted(VBENCH_DIMENSION_WEIGHTS)}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.dimensions = dims
        self.python = python or os.environ.get("XVID_VBENCH_PYTHON") or sys.executable
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _default_vbench_cache_dir()
        self.timeout_s = float(timeout_s)
        self.device = device
        self.imaging_quality_preprocessing_mode = imaging_quality_preprocessing_mode
        self._import_checked = False
        self.skipped: dict[str, str] = {}

    def provenance(self) -> dict:
        """What the scores depend on besides the videos: interpreter, cache dir, device, dimensions, options."""
        return {"python": _resolve_python(self.python) or self.python, "cache_dir": str(self.cache_dir),
                "device": self.device, "dimensions": list(self.dimensions),
                "imaging_quality_preprocessing_mode": self.imaging_quality_preprocessing_mode}

    def subprocess_env(self) -> dict[str, str]:
        """Environment of the VBench interpreter: ours, with VBench's cache dir pinned and the HF hub offline."""
        env = dict(os.environ)
        env["VBENCH_CACHE_DIR"] = str(self.cache_dir)
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        return env

    def driver_env(self) -> dict[str, str]:
        """``subprocess_env`` with this package importable, so that ``python -m DRIVER_MODULE`` finds the driver."""
        env = self.subprocess_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_PARENT), env.get("PYTHONPATH")]))
        return env

    def missing_weights(self) -> dict[str, list[tuple[Path, str]]]:
        """``{dimension: [(expected path, where to get it), ...]}`` for every checkpoint that is not on disk."""
        hub_dir = _torch_hub_dir(self.subprocess_env())
        missing: dict[str, list[tuple[Path, str]]] = {}
        for dim in self.dimensions:
            for weight in VBENCH_DIMENSION_WEIGHTS[dim]:
                path = (hub_dir if weight.torch_hub else self.cache_dir) / weight.relpath
                if not path.is_file():
                    source = weight.source.replace("<VBENCH_CACHE_DIR>", str(self.cache_dir))
                    missing.setdefault(dim, []).append((path, source))
        return missing

    def check_available(self) -> dict[str, str]:
        """Which requested dimensions cannot run here: ``{dimension: reason}`` (missing checkpoints).

        Raises Unavailable when none can: vbench does not import in ``self.python``, or every dimension misses
        checkpoints (the message lists every problem)."""
        problems: list[str] = []
        if not self._import_checked:
            import_problem = _vbench_import_problem(self.python, self.subprocess_env())
            if import_problem is not None:
                problems.append(import_problem)
        cannot: dict[str, str] = {}
        for dim, files in self.missing_weights().items():
            listed = "; ".join(f"{path} (from {source})" for path, source in files)
            cannot[dim] = f"VBench dimension {dim!r} needs checkpoint(s) that are missing: {listed}"
        if problems or len(cannot) == len(self.dimensions):
            raise Unavailable("VBench is unavailable: " + " | ".join(problems + list(cannot.values())))
        self._import_checked = True
        return cannot

    def score(self, videos: list[VideoItem], prompts: list[str]) -> dict[str, list[float]]:
        check_batch(videos, prompts)
        if not videos:
            return {dim: [] for dim in self.dimensions}
        cannot = self.check_available()
        self.skipped = {f"vbench:{dim}": reason for dim, reason in cannot.items()}
        dimensions = [dim for dim in self.dimensions if dim not in cannot]
        no_file = [i for i, item in enumerate(videos) if item.path is None or not Path(item.path).is_file()]
        if no_file:
            raise Unavailable(f"VBench scores the written video files, but video(s) {no_file} have no file on disk")
        bad_suffix = [str(item.path) for item in videos if Path(item.path).suffix.lower() not in (".mp4", ".gif")]
        if bad_suffix:
            raise Unavailable(f"VBench reads only .mp4/.gif files, got {bad_suffix}")

        with tempfile.TemporaryDirectory(prefix="xvid_vbench_") as tmp:
            tmp_dir = Path(tmp)
            videos_dir = tmp_dir / "videos"
            output_dir = tmp_dir / "results"
            videos_dir.mkdir()
            output_dir.mkdir()
            file_names: list[str] = []
            for i, (item, prompt) in enumerate(zip(videos, prompts)):
                source = Path(item.path).resolve()
                file_name = vbench_file_name(prompt, i, source.suffix.lower())
                try:
                    (videos_dir / file_name).symlink_to(source)
                except OSError:
                    shutil.copyfile(source, videos_dir / file_name)
                file_names.append(file_name)
            config = {
                "videos_dir": str(videos_dir),
                "output_dir": str(output_dir),
                "name": "xvid",
                "prompts": dict(zip(file_names, prompts)),
                "dimensions": dimensions,
                "device": self.device,
                "imaging_quality_preprocessing_mode": self.imaging_quality_preprocessing_mode,
            }
            write_json(config, tmp_dir / "config.json")
            python = _resolve_python(self.python) or self.python
            cmd = [python, "-m", DRIVER_MODULE, str(tmp_dir / "config.json")]
            try:
                code, out, err = _run_process(cmd, self.driver_env(), self.timeout_s, cwd=str(tmp_dir))
            except subprocess.TimeoutExpired as exc:
                raise Unavailable(
                    f"VBench did not finish within {self.timeout_s:g} s (raise timeout_s); stderr: {_tail(exc.stderr)}"
                ) from None
            if code != 0:
                raise Unavailable(f"VBench failed (exit code {code}); stderr: {_tail(err) or _tail(out)}")
            results_path = output_dir / "xvid_eval_results.json"
            if not results_path.is_file():
                raise Unavailable(f"VBench wrote no {results_path.name}; output: {_tail(out)} {_tail(err)}")
            results = json.loads(results_path.read_text(encoding="utf-8"))
        return _parse_vbench_results(results, file_names, dimensions)


def make_vbench(args: list[str]) -> VBenchScorer:
    """Factory for ``vbench:<dim>,...``."""
    return VBenchScorer(args)
