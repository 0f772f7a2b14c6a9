"""The quality benchmark's PNG, drawn with Pillow (no plotting library needed): probe accuracy of the random
student, the teacher and each distilled student (left), and the distillation loss curves (right)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, PAD = 1200, 520, 50
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip


def write_png(path: Path, random_probes: dict[int, dict], teacher_top1: float, runs: list[dict]) -> None:
    """``random_probes``: image size -> the random-init student's probe metrics at that size."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    bars = [(f"random-init student, {size} px", p["linear_top1"], (150, 150, 150)) for size, p in random_probes.items()]
    bars.append(("teacher (labels)", teacher_top1, (0, 0, 0)))
    bars += [(_label(r), r["probe"]["linear_top1"], COLOURS[i % len(COLOURS)])
             for i, r in enumerate(runs)]  # fmt: skip
    _bars(draw, (PAD, PAD, WIDTH // 2 - PAD // 2, HEIGHT - PAD), bars)
    curves = [(_label(r), r["loss_curve"], COLOURS[i % len(COLOURS)])
              for i, r in enumerate(runs)]  # fmt: skip
    _curves(draw, (WIDTH // 2 + PAD, PAD, WIDTH - PAD, HEIGHT - PAD), curves)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _label(run: dict) -> str:
    budget = f"{run['steps']} steps" if run.get("fixed_steps") else f"{run['minutes']:g} min"
    return f"{run['name']} @ {budget}"


def _bars(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], bars: list) -> None:
    left, top, right, bottom = box
    draw.text((left, top - 30), "probe linear top-1 on the test renders", fill="black")
    label_w = 170
    row = min(40, (bottom - top) / max(1, len(bars)))
    for i, (label, value, colour) in enumerate(bars):
        y = top + i * row
        draw.text((left, y + row / 2 - 6), label[:28], fill="black")
        x1 = left + label_w + (right - left - label_w - 40) * max(0.0, min(1.0, value))
        draw.rectangle((left + label_w, y + 3, x1, y + row - 3), fill=colour)
        draw.text((x1 + 4, y + row / 2 - 6), f"{value:.3f}", fill="black")


def _curves(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], curves: list) -> None:
    left, top, right, bottom = box
    draw.text((left, top - 30), "distillation loss (KL) per step", fill="black")
    draw.rectangle(box, outline="black")
    points = [p for _, curve, _ in curves for p in curve]
    if not points:
        return
    max_step = max(s for s, _ in points)
    low, high = min(v for _, v in points), max(v for _, v in points)
    high = high if high > low else low + 1
    draw.text((left - 45, top - 6), f"{high:.3g}", fill="black")
    draw.text((left - 45, bottom - 6), f"{low:.3g}", fill="black")
    draw.text((right - 40, bottom + 5), f"{max_step}", fill="black")
    for i, (label, curve, colour) in enumerate(curves):
        xy = [(left + (right - left) * s / max_step, bottom - (bottom - top) * (v - low) / (high - low))
              for s, v in curve]  # fmt: skip
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        draw.text((right - 220, top + 8 + 14 * i), label[:34], fill=colour)
