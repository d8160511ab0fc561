"""Regenerate docs/images/presets.png: every relevance preset on the demo's cat, side by side.

    python docs/images/make_presets_figure.py

Uses the demo's model (exported once into the cache, like ``lrpir demo``) and its photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import lrpir
from lrpir import demo

PRESETS = ["epsilon", "epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1",
           "epsilon-alpha2-beta1-flat", "epsilon-gamma-box"]


def main() -> None:
    model = demo.export_efficientnet()
    hwc, x = demo.load_chelsea()
    explainer = lrpir.compile(model, x)
    maps, titles = [], []
    for preset in PRESETS:
        rules = lrpir.Rules(preset, low=demo.LOW, high=demo.HIGH) if preset.endswith("box") else preset
        exp = explainer.with_rules(rules)(x, target=285)
        maps.append(exp.relevance[0][0])
        titles.append(f"{preset} (inputs/start {exp.conservation.ratio[0]:.3f})")
    out = Path(__file__).with_name("presets.png")
    lrpir.save_heatmap(out, np.stack(maps), image=np.stack([hwc] * len(maps)), titles=titles,
                       title="EfficientNet-Lite0, class 285 (Egyptian Mau), per preset", max_rows=3)
    print(f"written {out}")


if __name__ == "__main__":
    main()
