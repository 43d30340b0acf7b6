"""The gain of one toy DeOP variant over another, with its 95 % paired bootstrap interval (the lab book's CAL gains).

Both models segment the same validation scenes with the shipped refined proposals; each bootstrap resample draws the
same scenes for both (`stages.compare_deop`), so what the scenes share cancels.

    python tools/paired_gain.py data/deop/deop.safetensors data/deop/ps.safetensors
    python tools/paired_gain.py runs/sweep/deop_k1_s500_like_vit_b16.safetensors runs/sweep/ps_k1_s500_like_vit_b16.safetensors
"""
import argparse

from deop_lite.stages import compare_deop, load_deop, load_proposals
from deop_lite.train import read_metadata


def paired_gain(model: str, reference: str, scenes: int = 200) -> dict[str, list[float]]:
    """hIoU, seen and unseen of the variant in file ``model`` minus the one in ``reference``: metric ->
    [difference, low, high], the 95 % paired bootstrap interval over the first ``scenes`` validation scenes."""
    proposals = load_proposals()[0]
    ours, theirs = (load_deop(read_metadata(path)["variant"], path=path, proposals=proposals) for path in (model, reference))
    gain = compare_deop(ours, theirs, scenes, progress=True)
    return {key: gain[key] for key in ("hIoU", "seen", "unseen")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a DeOP variant's .safetensors file")
    parser.add_argument("reference", help="the variant it is compared with")
    parser.add_argument("--scenes", type=int, default=200)
    args = parser.parse_args()
    for key, (difference, low, high) in paired_gain(args.model, args.reference, args.scenes).items():
        print(f"{key:>6}: {difference:+.1f}, 95 % paired interval over {args.scenes} scenes [{low:+.1f}, {high:+.1f}]")


if __name__ == "__main__":
    main()
