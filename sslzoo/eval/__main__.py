"""``python -m sslzoo.eval {knn,linear,all,lowshot,finetune} run=RUN_DIR | ckpt=PATH [key=value ...]``."""

from __future__ import annotations

from pathlib import Path

from sslzoo.arguments import Option, Parser, asks_for_help, command_of
from sslzoo.errors import UserError, cli_entry
from sslzoo.eval.protocol import load_protocol, protocol_keys

USAGE = """usage: python -m sslzoo.eval COMMAND run=RUN_DIR | ckpt=PATH [out=DIR] [key=value ...]

Offline evaluation of a backbone (not the online probe of pre-training), COMMAND one of:
  knn      weighted kNN (DINO eval_knn.py)             -> eval_knn.json with knn_top1 per k
  linear   linear probe (DINO eval_linear.py)           -> eval_linear.json with linear_top1
  all      both, from one feature extraction
  lowshot  kNN and linear probe on class-balanced label subsets, several draws (mean +- std)
           [fractions=0.01,0.1] [shots=1,2,5] [draws=3]  -> eval_lowshot.json
  finetune the whole backbone and a linear classifier, trained with the labels (MAE's protocol)
           [finetune.budget=STEPS]                      -> eval_finetune.json with finetune_top1
run=RUN_DIR evaluates the run's backbone.pt (or checkpoints/last.pt if newer); ckpt=PATH an sslzoo
checkpoint, a file the official repositories release (DINO, iBOT, MoCo v3, MAE, torchvision ResNet) or
timm:ARCH.TAG, with backbone=NAME (unless the file names it), part=teacher|student|base_encoder|
momentum_encoder, and data.name=/data.root= (default: data.name=imagefolder). Results go to the run
folder (the checkpoint's folder), or out=DIR. Protocol keys (sslzoo/eval/protocol.yaml):
{keys}"""

COMMANDS = ("knn", "linear", "all", "lowshot", "finetune")
WEIGHTS_KEYS = ("backbone", "part")  # ckpt= options besides data.*
LOWSHOT_KEYS = ("fractions", "shots", "draws")  # short forms of lowshot.fractions, ...
PARSER = Parser(
    "python -m sslzoo.eval",
    {
        "run": Option(str | None, None, "a training run's folder"),
        "ckpt": Option(str | None, None, "a checkpoint, released weights or timm:ARCH.TAG"),
        "out": Option(str | None, None, "the folder of the results"),
        "backbone": Option(str | None, None, "with ckpt=: the backbone the weights load into"),
        "part": Option(str | None, None, "with ckpt=: which network of the checkpoint"),
        "fractions": Option(list[float] | None, None, "lowshot: label fractions"),
        "shots": Option(list[int] | None, None, "lowshot: labelled images per class"),
        "draws": Option(int | None, None, "lowshot: draws of each subset"),
    },
    rest="protocol",  # every other key is a protocol key (or data.* with ckpt=)
)


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
    if not argv or asks_for_help(argv):
        print(USAGE.format(keys=", ".join(protocol_keys())))
        return 0
    command, rest = command_of(argv, COMMANDS)
    args = PARSER.parse(rest)
    options, overrides = args.options, args.passed["protocol"]
    run, ckpt, out = options["run"], options["ckpt"], options["out"]
    if (run is None) == (ckpt is None):
        raise UserError(f"name what to evaluate: python -m sslzoo.eval {command} run=RUN_DIR (or ckpt=PATH)")
    weights = {key: options[key] for key in WEIGHTS_KEYS if options[key] is not None}
    data = {key: overrides.pop(key) for key in list(overrides) if key.startswith("data.")}
    for key in LOWSHOT_KEYS:
        if options[key] is not None:
            if command != "lowshot":
                raise UserError(f"{key}= is an option of lowshot, not of {command}")
            overrides[f"lowshot.{key}"] = options[key]
    protocol = load_protocol(overrides)

    from sslzoo.eval import evaluate as ev
    from sslzoo.eval.evaluate import Evaluator, write_record
    from sslzoo.rundir import EvalKind, RunDir

    if run is not None:
        if weights or data:
            raise UserError(f"{next(iter({**weights, **data}))}= applies to ckpt= weights; a run names its own")
        if not Path(run).is_dir():
            raise UserError(f"run={run} is not a folder; pass a training run's trainer.out_dir")
        subject = ev.from_run(Path(run))
    else:
        subject = ev.from_weights(
            ckpt,
            options["backbone"],
            options["part"],
            ev.official_data(data) if data else None,
            Path(out) if out is not None else None,
        )
    results = RunDir(Path(out) if out is not None else subject.out_dir)

    def save(kind: EvalKind, record: dict) -> None:
        write_record(results.eval_record(kind), record, subject, protocol)
        print(f"wrote {results.eval_record(kind)}")

    print(f"evaluating {subject.weights['source']} (step {subject.weights['step']}) on {subject.data.name}")
    evaluator = Evaluator(protocol)
    if command == "finetune":
        from sslzoo.eval.finetune import finetune, print_finetune

        record = finetune(evaluator, subject)
        print_finetune(record)
        save("finetune", record)
        return 0
    features = evaluator.features(subject)
    if command == "lowshot":
        from sslzoo.eval.lowshot import lowshot, print_lowshot

        record = lowshot(evaluator, subject, features)
        print_lowshot(record)
        save("lowshot", record)
        return 0
    if command in ("knn", "all"):
        record = evaluator.knn(subject, features)
        print_knn(record)
        save("knn", record)
    if command in ("linear", "all"):
        record = evaluator.linear(subject, features)
        print_linear(record)
        save("linear", record)
    return 0


if __name__ == "__main__":
    main()
