"""Write the colour photographs bundled with scikit-image as PNG files (a small Kodak-like test set).

Usage::

    python -m pip install scikit-image        # only for this script; functa does not depend on it
    python bench/natural_images.py runs/natural       # then: functa codec-bench runs/natural -m CODEC ...

Images (H x W): astronaut 512x512, chelsea 300x451, coffee 400x600, rocket 427x640,
hubble_deep_field 872x1000, immunohistochemistry 512x512 (from ``skimage.data``, public domain or
CC licensed, see the scikit-image documentation). Nothing is downloaded: these files ship in the
scikit-image wheel.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    try:
        import skimage.data
    except ImportError:
        print("this script needs scikit-image: python -m pip install scikit-image", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        img = getattr(skimage.data, name)()
        Image.fromarray(img).save(out / f"{name}.png")
        print(f"{name}: {img.shape[0]}x{img.shape[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
