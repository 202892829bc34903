"""``python -m sslzoo.eval {knn,linear,all} run=RUN_DIR | ckpt=PATH [key=value ...]``."""

from __future__ import annotations

from pathlib import Path

from sslzoo.config import parse_overrides
from sslzoo.errors import UserError, cli_entry
from sslzoo.eval.protocol import load_protocol, protocol_keys

USAGE = """usage: python -m sslzoo.eval {{knn,linear,all}} run=RUN_DIR | ckpt=PATH [out=DIR] [key=value ...]

Offline evaluation of a frozen backbone (not the online probe of pre-training):
  knn     weighted kNN (DINO eval_knn.py)             -> eval_knn.json with knn_top1 per k
  linear  linear probe (DINO eval_linear.py)           -> eval_linear.json with linear_top1
  all     both, from one feature extraction
run=RUN_DIR evaluates the run's backbone.pt (or checkpoints/last.pt if newer); ckpt=PATH a
checkpoint. Results go to the run folder, or out=DIR. Protocol keys (sslzoo/eval/protocol.yaml):
{keys}"""

COMMANDS = ("knn", "linear", "all")


def percent(x: float) -> str:
    return f"{100 * x:6.2f}"


def print_knn(record: dict) -> None:
    print(f"offline kNN top-1 (%), T={record['temperature']}, features: {record['features']}")
    print("     k  top-1")
    for k, acc in record["knn_top1"].items():
        mark = "  <- headline" if int(k) == record["headline"]["k"] else ""
        print(f"{int(k):6d} {percent(acc)}{mark}")


def print_linear(record: dict) -> None:
    print(
        f"offline linear probe top-1: {percent(record['linear_top1']).strip()}% "
        f"({record['epochs']} epochs, features: {record['features']}, {record['feature_dim']} dims)"
    )


@cli_entry
def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(keys=", ".join(protocol_keys())))
        return 0
    command, overrides = argv[0], parse_overrides(argv[1:])
    if command not in COMMANDS:
        raise UserError(f"unknown command '{command}': choose one of {', '.join(COMMANDS)}")
    run, ckpt, out = overrides.pop("run", None), overrides.pop("ckpt", None), overrides.pop("out", None)
    if (run is None) == (ckpt is None):
        raise UserError(f"name what to evaluate: python -m sslzoo.eval {command} run=RUN_DIR (or ckpt=PATH)")
    protocol = load_protocol(overrides)

    from sslzoo.eval.evaluate import KNN_FILE, LINEAR_FILE, Evaluator, from_checkpoint, from_run, write_record

    if run is not None:
        if not Path(str(run)).is_dir():
            raise UserError(f"run={run} is not a folder; pass a training run's trainer.out_dir")
        subject = from_run(Path(str(run)))
    else:
        subject = from_checkpoint(Path(str(ckpt)))
    out_dir = Path(str(out)) if out is not None else subject.out_dir
    print(f"evaluating {subject.weights['source']} (step {subject.weights['step']}) on {subject.data.name}")
    evaluator = Evaluator(protocol)
    features = evaluator.features(subject)
    if command in ("knn", "all"):
        record = evaluator.knn(subject, features)
        print_knn(record)
        write_record(out_dir / KNN_FILE, record, subject, protocol)
        print(f"wrote {out_dir / KNN_FILE}")
    if command in ("linear", "all"):
        record = evaluator.linear(subject, features)
        print_linear(record)
        write_record(out_dir / LINEAR_FILE, record, subject, protocol)
        print(f"wrote {out_dir / LINEAR_FILE}")
    return 0


if __name__ == "__main__":
    main()
