"""The method-card table, generated from the registry: every registered method's ``card``.

A method added to ``sslzoo/methods/`` appears here without any change to this file.
"""

from __future__ import annotations

import dataclasses
import textwrap

from matplotlib.figure import Figure

from sslzoo.methods import METHODS, MethodCard

COLUMNS = {
    "family": "family",
    "target": "target network",
    "predictor": "predictor",
    "negatives": "negatives",
    "loss": "loss",
    "anti_collapse": "what prevents collapse",
    "crops": "crops",
}
FAMILIES = (
    "contrastive",
    "clustering",
    "self-distillation",
    "redundancy reduction",
    "masked modelling",
)  # table order; others after them
WRAP = 26  # characters per line in the PNG table's cells


def method_cards() -> list[tuple[str, MethodCard]]:
    """(name, card) of every registered method, grouped by family."""
    cards = [(name, METHODS.get(name).card) for name in METHODS.names()]

    def order(item: tuple[str, MethodCard]) -> tuple[int, str]:
        family = item[1].family
        return (FAMILIES.index(family) if family in FAMILIES else len(FAMILIES), item[0])

    return sorted(cards, key=order)


def cards_markdown(cards: list[tuple[str, MethodCard]]) -> str:
    assert list(COLUMNS) == [f.name for f in dataclasses.fields(MethodCard)], "COLUMNS must follow MethodCard"
    header = ["method", *COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, card in cards:
        cells = [name, *(str(getattr(card, field)).replace("|", "\\|") for field in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cards_figure(cards: list[tuple[str, MethodCard]]) -> Figure:
    header = ["method", *COLUMNS.values()]
    rows = [[name, *(textwrap.fill(str(getattr(card, field)), WRAP) for field in COLUMNS)] for name, card in cards]
    heights = [max(cell.count("\n") + 1 for cell in row) for row in rows]
    line = 0.17  # inches per text line
    fig = Figure(figsize=(2.0 * len(header), line * (sum(heights) + 2 * len(rows) + 3)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, bbox=(0, 0, 1, 1), cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    total = sum(heights) + 2 * len(rows) + 2
    for (row, _col), cell in table.get_celld().items():
        lines = 2 if row == 0 else heights[row - 1] + 2
        cell.set_height(lines / total)
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
    return fig
