"""Install hints name the smallest extra, and each extra installs exactly what its hint names (no torchvision for
PSNR/SSIM, so a CPU torch stays CPU). Extras are read from pyproject.toml and from the installed metadata."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

from xattn_video.cli import main
from xattn_video.config import ConfigError, load_config
from xattn_video.eval import compare as compare_module
from xattn_video.eval import extras

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
FEATURE_SETS = [["psnr"], ["ssim"], ["psnr", "ssim"], ["lpips"], ["psnr", "lpips"], ["plots"],
                ["psnr", "ssim", "lpips", "plots"]]
# one pip command of a hint: the extras it installs and, in parentheses, the distributions it says they bring
COMMAND = re.compile(r"pip install 'xattn-video\[([a-z,]+)\]' \(([a-z, ]+)\)")


def _name(requirement: str) -> str:
    """The distribution name of a requirement string (``"torchmetrics>=1.4; extra == 'x'"`` -> torchmetrics)."""
    return re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0).lower()


def pyproject_extras() -> dict[str, set[str]]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="Python 3.10 without tomli cannot read pyproject.toml")
    table = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    return {extra: {_name(r) for r in reqs} for extra, reqs in table.items()}


def metadata_extras() -> dict[str, set[str]]:
    """Extras of the installed xattn-video; skips when that install predates these extras (reinstall it)."""
    try:
        meta = importlib.metadata.metadata("xattn-video")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("xattn-video is not installed: pip install -e '.[test]'")
    provided = set(meta.get_all("Provides-Extra") or [])
    if not set(extras.EXTRA_PACKAGES) <= provided:
        pytest.skip(f"the installed xattn-video metadata is stale (extras {sorted(provided)}, no "
                    f"{sorted(set(extras.EXTRA_PACKAGES) - provided)}): pip install -e '.[test]' refreshes it")
    out: dict[str, set[str]] = {extra: set() for extra in provided}
    for req in meta.get_all("Requires-Dist") or []:
        found = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        if found:
            out[found.group(1)].add(_name(req))
    return out


@pytest.fixture(params=["pyproject", "metadata"])
def declared(request) -> dict[str, set[str]]:
    return pyproject_extras() if request.param == "pyproject" else metadata_extras()


def test_extras_are_what_the_module_says(declared):
    for extra, packages in extras.EXTRA_PACKAGES.items():
        assert declared[extra] == set(packages), extra
    assert "torchvision" not in declared["metrics"] | declared["plots"] | declared["test"]
    assert "lpips" not in set().union(*declared.values())  # LPIPS is torchmetrics' own, on torchvision's AlexNet
    assert declared["eval"] == declared["metrics"] | declared["lpips"] | declared["plots"]
    assert {"pytest", "torchmetrics", "matplotlib", "triton"} <= declared["test"]


@pytest.mark.parametrize("cpu", [True, False], ids=["cpu-torch", "cuda-torch"])
@pytest.mark.parametrize("features", FEATURE_SETS, ids=",".join)
def test_each_hint_installs_exactly_what_it_names(declared, monkeypatch, features, cpu):
    monkeypatch.setattr(extras, "torch_is_cpu_build", lambda: cpu)
    hint = extras.install_hint(features)
    commands = COMMAND.findall(hint)
    assert commands, hint
    for names, packages in commands:
        installs = set().union(*(declared[e] for e in names.split(",")))
        assert installs == set(packages.split(", ")), hint
    assert set(extras.needed_packages(features)) <= set(COMMAND.findall(hint)[-1][1].split(", "))
    if "lpips" in features:
        assert ("--index-url https://download.pytorch.org/whl/cpu" in hint) == cpu, hint
    else:
        assert "torchvision" not in hint, hint  # PSNR/SSIM/plots never bring torchvision


def test_smallest_extras():
    assert extras.smallest_extras(["psnr", "ssim"]) == ["metrics"]
    assert extras.smallest_extras(["psnr", "lpips"]) == ["lpips"]  # [metrics] is inside [lpips]
    assert extras.smallest_extras(["plots", "ssim"]) == ["plots", "metrics"]
    with pytest.raises(ValueError, match="unknown feature 'fid'"):
        extras.needed_packages(["fid"])


def test_cpu_torchvision_pin():
    assert extras.torchvision_for_torch("2.13.0+cpu") == "torchvision==0.28.*"
    assert extras.torchvision_for_torch("2.14.1") == "torchvision==0.29.*"
    assert extras.torchvision_for_torch("3.0.0") == "torchvision"


@pytest.fixture
def without(monkeypatch):
    """``without("torchmetrics")``: that distribution counts as not installed."""
    def hide(*packages):
        real = extras.importable
        monkeypatch.setattr(extras, "importable", lambda p: p not in packages and real(p))
    return hide


def test_missing_message_names_the_smallest_install(without, monkeypatch):
    monkeypatch.setattr(extras, "torch_is_cpu_build", lambda: True)
    without("torchmetrics", "torchvision")
    assert extras.missing_message(["psnr", "ssim"]) == (
        "metrics psnr, ssim need torchmetrics: pip install 'xattn-video[metrics]' (torchmetrics)")
    message = extras.missing_message(["psnr", "ssim", "lpips"])
    assert message.startswith("metrics psnr, ssim, lpips need torchmetrics and torchvision: for psnr, ssim: "
                              "pip install 'xattn-video[metrics]' (torchmetrics); with lpips: ")
    assert extras.missing_message(["psnr"]).startswith("metric psnr needs torchmetrics: ")


def test_nothing_missing_is_no_message(monkeypatch):
    monkeypatch.setattr(extras, "importable", lambda p: True)
    assert extras.missing_message(["psnr", "lpips", "plots"]) is None


def test_compare_without_torchmetrics_is_one_line_exit_2_naming_the_metrics_extra(tmp_path, capsys, without,
                                                                                   monkeypatch):
    from xattn_video.pipelines import loading

    without("torchmetrics")
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("model loaded before the check"))
    rc = main(["compare", "--model", "tiny", "--prompt", "a cat", "--metrics", "psnr,ssim,flicker",
               "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "metrics psnr, ssim need torchmetrics: pip install 'xattn-video[metrics]' (torchmetrics)" in err
    assert "torchvision" not in err and "[eval]" not in err
    with pytest.raises(ConfigError, match=r"with lpips: .*xattn-video\[lpips\]"):
        compare_module.compare(load_config(overrides=["model.path=tiny"]), ["a"], [0], "psnr,lpips",
                               tmp_path / "o2", pipe=object(), show_progress=False)
