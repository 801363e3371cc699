"""Runs VBench in custom_input mode, in VBench's own Python environment; configuration (JSON) in sys.argv[1].

``VBenchScorer`` starts it as ``python -m xattn_video.eval.scorers.vbench_driver config.json`` with this package's
parent folder on PYTHONPATH. Standard library and vbench only: the VBench environment need not hold our
dependencies, and importing the packages above this module pulls in nothing heavier than numpy.
"""
import json
import os
import sys


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    import torch
    import vbench
    from vbench import VBench

    device = cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    # Unused in custom_input mode, but VBench's constructor takes it.
    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
    bench = VBench(torch.device(device), full_info, cfg["output_dir"])
    bench.evaluate(
        videos_path=cfg["videos_dir"],
        name=cfg["name"],
        prompt_list=cfg["prompts"],  # {file name in videos_dir: prompt}
        dimension_list=cfg["dimensions"],
        local=True,  # load every checkpoint from VBENCH_CACHE_DIR (checked beforehand)
        read_frame=False,
        mode="custom_input",
        imaging_quality_preprocessing_mode=cfg["imaging_quality_preprocessing_mode"],
    )


if __name__ == "__main__":
    main()
