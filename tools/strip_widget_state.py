"""Strip saved widget state (and execution-count noise) from notebooks before committing.

    python tools/strip_widget_state.py notebooks/*.ipynb
"""
import json
import sys


def strip(path: str) -> None:
    with open(path) as f:
        nb = json.load(f)
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:  # widget outputs (e.g. progress bars) are dropped whole
        if cell["cell_type"] == "code":  # only code cells have outputs (nbformat rejects them elsewhere)
            cell["outputs"] = [o for o in cell["outputs"]
                               if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    with open(path, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        strip(p)
