"""``python -m sslzoo.viz COMMAND key=value ...``: the teaching lab's figures as PNG files."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslzoo.arguments import REQUIRED, Option, Parser, asks_for_help, command_of
from sslzoo.errors import UserError, cli_entry


@dataclass(frozen=True)
class Command:
    summary: str
    options: dict[str, Option]
    make: Callable[[dict[str, Any]], Path]


def save(fig, out: str) -> Path:
    """Write ``fig`` as a PNG at ``out`` (folders created)."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise UserError(f"out={out} must name a .png file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror}); choose another out=") from None
    return path


def default_out(options: dict[str, Any], run_key: str, name: str) -> str:
    """``out=`` if given, else ``name`` inside the (first) run folder."""
    if options["out"]:
        return options["out"]
    run = options[run_key]
    return str(Path(run[0] if isinstance(run, list) else run) / name)


def images_option(value: str | None) -> int | Path | None:
    """``images=``: a number of test images, or a picture / folder of pictures."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    path = Path(value)
    if not path.exists():
        raise UserError(f"images={value!r} must be an int (how many test images) or a picture or folder: none there")
    return path


def source_of(options: dict[str, Any], command: str):
    from sslzoo.viz.images import open_source

    return open_source(options["run"], options["ckpt"], options["backbone"], options["part"], command)


def out_path(options: dict[str, Any], folder: Path, name: str) -> str:
    return options["out"] or str(folder / name)


def attention(options: dict[str, Any]) -> Path:
    from sslzoo.viz.attention import attention_figure

    images = images_option(options["images"])
    source = source_of(options, "attention")
    fig = attention_figure(source, images, options["threshold"], options["size"])
    return save(fig, out_path(options, source.out_dir, "attention.png"))


def embeddings(options: dict[str, Any]) -> Path:
    from sslzoo.viz.embeddings import embedding_figure
    from sslzoo.viz.images import Source, open_source
    from sslzoo.viz.runs import run_labels

    images = images_option(options["images"])
    if isinstance(images, int):
        raise UserError("embeddings: images= names a picture folder (points= sets how many test images)")
    if options["ckpt"] is not None:
        if options["runs"] is not None:
            raise UserError("embeddings takes runs= or ckpt=, not both")
        sources = [open_source(None, options["ckpt"], options["backbone"], options["part"], "embeddings")]
    else:
        if options["runs"] is None:
            raise UserError("embeddings needs runs= (run folders) or ckpt= (a checkpoint or released weights)")
        if options["backbone"] is not None or options["part"] is not None:
            raise UserError("backbone= and part= apply to ckpt= weights; a run names its own")
        sources: list[Source] = [open_source(run, None, None, None, "embeddings") for run in options["runs"]]
    labels = run_labels(sources, options["labels"])
    fig = embedding_figure(sources, labels, options["points"], options["projection"], options["seed"], images)
    return save(fig, out_path(options, sources[0].out_dir, "embeddings.png"))


def dynamics(options: dict[str, Any]) -> Path:
    from sslzoo.viz.dynamics import dynamics_figure
    from sslzoo.viz.runs import open_runs, run_labels

    runs = open_runs(options["runs"])
    fig = dynamics_figure(runs, run_labels(runs, options["labels"]), options["keys"])
    return save(fig, default_out(options, "runs", "dynamics.png"))


def reconstructions(options: dict[str, Any]) -> Path:
    from sslzoo.viz.reconstructions import reconstruction_figure

    fig, run = reconstruction_figure(options["run"], options["images"], options["seed"])
    return save(fig, out_path(options, run, "reconstructions.png"))


def cards(options: dict[str, Any]) -> Path:
    from sslzoo.viz.cards import cards_figure, cards_markdown, method_cards

    out = Path(options["out"])
    if out.suffix.lower() == ".md":
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(cards_markdown(method_cards()))
        except OSError as err:
            raise UserError(f"cannot write {out} ({err.strerror}); choose another out=") from None
        return out
    return save(cards_figure(method_cards()), str(out))


RUNS_HELP = "run folders (trainer.out_dir), comma-separated"
CKPT_HELP = (
    "instead of a run: an sslzoo checkpoint, released weights (DINO, iBOT, MoCo v3, MAE, torchvision) or timm:TAG"
)
BACKBONE_HELP = "with ckpt= of released weights: our backbone they load into, unless the file names it"
PART_HELP = "with ckpt=: teacher | student (DINO, iBOT), base_encoder | momentum_encoder (MoCo v3)"
LABELS_HELP = "one legend label per run, comma-separated (default: the folder names)"
COMMANDS = {
    "attention": Command(
        "last-block [CLS] self-attention per head and thresholded masks of a ViT (DINO Figure 1), on any pictures",
        {
            "run": Option(str | None, None, "the run folder (trainer.out_dir) of a ViT run"),
            "ckpt": Option(str | None, None, CKPT_HELP),
            "backbone": Option(str | None, None, BACKBONE_HELP),
            "part": Option(str | None, None, PART_HELP),
            "images": Option(str, "10", "N test images (one per class first), or a picture or folder of pictures"),
            "size": Option(int, 0, "pictures' shorter side in pixels (0: the backbone's own; DINO's demo: 480)"),
            "threshold": Option(float, 0.6, "masks keep this fraction of the attention mass (DINO: 0.6)"),
            "out": Option(str | None, None, "PNG path (default: RUN/attention.png, or beside the weights)"),
        },
        attention,
    ),
    "embeddings": Command(
        "t-SNE (or PCA) of the backbone features of the test set (or a picture folder), coloured by class",
        {
            "runs": Option(list[str] | None, None, RUNS_HELP),
            "ckpt": Option(str | None, None, CKPT_HELP),
            "backbone": Option(str | None, None, BACKBONE_HELP),
            "part": Option(str | None, None, PART_HELP),
            "images": Option(
                str | None, None, "a folder of pictures to embed instead of the test set (subfolders: classes)"
            ),
            "labels": Option(list[str] | None, None, LABELS_HELP),
            "points": Option(int, 2000, "test images (or pictures) to embed"),
            "projection": Option(str, "tsne", "tsne or pca"),
            "seed": Option(int, 0, "random state of the projection"),
            "out": Option(str | None, None, "PNG path (default: FIRST_RUN/embeddings.png, or beside the weights)"),
        },
        embeddings,
    ),
    "dynamics": Command(
        "loss, lr, EMA momentum, teacher temperature and collapse diagnostics from metrics.jsonl",
        {
            "runs": Option(list[str], REQUIRED, RUNS_HELP),
            "labels": Option(list[str] | None, None, LABELS_HELP),
            "keys": Option(
                list[str] | None, None, "logged keys to plot, comma-separated, or 'all' (default: the standard set)"
            ),
            "out": Option(str | None, None, "PNG path (default: FIRST_RUN/dynamics.png)"),
        },
        dynamics,
    ),
    "reconstructions": Command(
        "MAE: masked input, reconstruction and original, side by side, for test images (MAE Figure 2)",
        {
            "run": Option(
                str, REQUIRED, "the run folder (trainer.out_dir) of an mae run (its checkpoint holds the decoder)"
            ),
            "images": Option(int, 8, "test images (one per class first)"),
            "seed": Option(int, 0, "seed of the random masks"),
            "out": Option(str | None, None, "PNG path (default: RUN/reconstructions.png)"),
        },
        reconstructions,
    ),
    "cards": Command(
        "the method-card table of every registered method (.png, or .md for a Markdown table)",
        {"out": Option(str, "method_cards.png", "PNG (or .md) path")},
        cards,
    ),
}


def usage() -> str:
    lines = ["usage: python -m sslzoo.viz COMMAND key=value ...", ""]
    for name, command in COMMANDS.items():
        lines += [f"{name}: {command.summary}", Parser(name, command.options).usage()]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str]) -> int:
    if not argv or asks_for_help(argv):
        print(usage())
        return 0
    name, rest = command_of(argv, COMMANDS)
    if asks_for_help(rest):
        print(usage())
        return 0
    command = COMMANDS[name]
    path = command.make(Parser(name, command.options).parse(rest).options)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
