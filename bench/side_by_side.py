"""Put sample grids side by side with a caption above each (for comparisons in docs/benchmarks.md).

    python bench/side_by_side.py runs/gasp_samples/sample_grid.png runs/ddpm_samples/sample_grid.png \\
        --labels "GASP" "functa + DDPM" -o docs/images/gasp_vs_ddpm_fmnist.png [--crop-rows 4]

``--crop-rows R`` keeps the top ``R`` rows of cells of each grid (cells are square, as the grids of
``contact_sheet``: cell size = grid width / columns, ``--columns``).
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grids", nargs="+")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--crop-rows", type=int)
    p.add_argument("--columns", type=int, default=8)
    p.add_argument("--height", type=int, help="scale every grid to this height in pixels")
    args = p.parse_args(argv)
    if len(args.labels) != len(args.grids):
        raise SystemExit("give one label per grid")
    images = []
    for path in args.grids:
        im = Image.open(path).convert("RGB")
        if args.crop_rows:
            cell = im.width / args.columns
            im = im.crop((0, 0, im.width, min(im.height, round(cell * args.crop_rows))))
        if args.height:
            im = im.resize((round(im.width * args.height / im.height), args.height), Image.NEAREST)
        images.append(im)
    caption, gap = 18, 12
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    sheet = Image.new("RGB", (width, caption + max(im.height for im in images)), "white")
    draw = ImageDraw.Draw(sheet)
    x = 0
    for im, label in zip(images, args.labels):
        draw.text((x + 2, 3), label, fill="black")
        sheet.paste(im, (x, caption))
        x += im.width + gap
    sheet.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
