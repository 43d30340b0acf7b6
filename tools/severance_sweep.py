"""The severed-blocks sweep of the lab book (docs/experiments.md, "Where CAL earns its place"): baseline+ w/ PS and
DeOP (PS + CAL) trained with GPS α = 1 in the last K blocks of the toy CLIP, for several K and training lengths.
Runs what is missing (resumable: each run is an ordinary `python -m deop_lite.stages train deop`, in runs/sweep/), then
writes every run's final evaluation (200 validation scenes, the shipped refined proposals) and in-training curve
(48 scenes) to data/deop/severance_sweep.json, which notebook 04 plots. Each DeOP run also gets CAL's gain over the
PS run of the same CLIP, K and length, with its 95 % paired bootstrap interval over the 200 scenes (`cal_gain`).

    python tools/severance_sweep.py                       # the shipped grid: ps, deop x K = 1..4 x 500, 1000 steps
    python tools/severance_sweep.py --clip like_vit_b16 --blocks 1 2 --steps 500  # the toy CLIP pre-trained like ViT-B/16
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from paired_gain import paired_gain

from deop_lite import checks
from deop_lite.clip import TOY_CLIP_LIKE_VIT_B16
from deop_lite.runtime import PROJECT_ROOT
from deop_lite.stages import DEOP_DIR
from deop_lite.train import read_log, read_metadata

RUNS = Path("runs/sweep")
OUT = DEOP_DIR / "severance_sweep.json"


CLIPS = {"shipped": None, "like_vit_b16": str(TOY_CLIP_LIKE_VIT_B16.relative_to(PROJECT_ROOT))}
"""The toy CLIPs a run can use: the shipped one, or the one pre-trained like ViT-B/16 (notebook 03 §4)."""


def command(clip: str, variant: str, blocks: int, steps: int) -> list[str]:
    name = f"{variant}_k{blocks}_s{steps}" + ("" if clip == "shipped" else f"_{clip}")
    return ["python", "-m", "deop_lite.stages", "train", "deop", "--variant", variant, "--severed-blocks", str(blocks),
            "--steps", str(steps), *(["--clip", CLIPS[clip]] if CLIPS[clip] else []),
            "--run-dir", str(RUNS / name), "--out", str(RUNS / f"{name}.safetensors")]


def run(clip: str, variant: str, blocks: int, steps: int, threads: int) -> None:
    args = command(clip, variant, blocks, steps)
    if Path(args[-1]).exists():
        return
    print("running", " ".join(args), flush=True)
    with open(Path(args[-1]).with_suffix(".log"), "w") as out:
        subprocess.run([sys.executable, *args[1:]], stdout=out, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def collect(clip: str, variant: str, blocks: int, steps: int) -> dict:
    args = command(clip, variant, blocks, steps)
    out = Path(args[-1])
    final = read_metadata(out)["summary"]["metrics"]
    curve = [{k: r[k] for k in ("step", "pAcc", "seen", "unseen", "hIoU")} for r in read_log(out.with_name(
        out.stem + "_train.log")) if "hIoU" in r]
    return {"clip": clip, "variant": variant, "blocks": blocks, "steps": steps, "final": final, "curve": curve,
            "command": " ".join(args)}


def cal_gain(clip: str, blocks: int, steps: int) -> dict[str, list[float]]:
    """DeOP's hIoU, seen and unseen minus PS's, each as [difference, low, high] (95 % paired interval, 200 scenes)."""
    deop, ps = (command(clip, variant, blocks, steps)[-1] for variant in ("deop", "ps"))
    return paired_gain(deop, ps, scenes=200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", choices=list(CLIPS), default="shipped")
    parser.add_argument("--variants", nargs="+", default=["ps", "deop"])
    parser.add_argument("--blocks", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--steps", nargs="+", type=int, default=[500, 1000])
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, each on cores / jobs threads")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    grid = [(args.clip, v, k, n) for k in args.blocks for n in args.steps for v in args.variants]
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run(*job, threads), grid))
    existing = json.loads(Path(args.out).read_text())["runs"] if Path(args.out).exists() else []
    runs = {(r["clip"], r["variant"], r["blocks"], r["steps"]): r for r in existing}
    for job in grid:  # a DeOP run's CAL gain is kept while neither its weights nor its PS partner's have changed
        fresh = collect(*job)
        clip, _, blocks, steps = job
        if job not in runs or runs[job]["final"] != fresh["final"]:
            runs.get((clip, "deop", blocks, steps), {}).pop("cal_gain", None)
        runs[job] = {**runs.get(job, {}), **fresh}
    for (clip, variant, blocks, steps), record in runs.items():
        if variant == "deop" and "cal_gain" not in record and (clip, "ps", blocks, steps) in runs:
            print(f"CAL's gain, {clip} CLIP, K = {blocks}, {steps} steps", flush=True)
            record["cal_gain"] = cal_gain(clip, blocks, steps)
    order = lambda r: (list(CLIPS).index(r["clip"]), r["blocks"], r["steps"], r["variant"])
    with checks.atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps({"runs": sorted(runs.values(), key=order)}, indent=1))
    print(f"wrote {args.out}: {len(runs)} runs")


if __name__ == "__main__":
    main()
