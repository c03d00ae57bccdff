"""The ``nasproxy`` command: parse arguments, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from nasproxy.errors import NasproxyError

Handler = Callable[[argparse.Namespace], int]


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="digits",
        help="digits (embedded), cifar10, cifar100 or imagefolder:PATH (folder or .tar.gz)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="download and cache folder (default $NASPROXY_DATA_ROOT or ~/.cache/nasproxy)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out of train per class")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")


def _load_data(args: argparse.Namespace):
    from nasproxy.data import load_dataset

    return load_dataset(args.dataset, args.data_root, args.val_fraction, args.split_seed)


def cmd_space(args: argparse.Namespace) -> int:
    from nasproxy import spaces

    space = spaces.load(args.space, image_size=args.image_size)
    if args.json:
        for arch in space:
            rec = {"id": arch.id, "index": space.index(arch), **vars(arch)}
            rec["params"] = arch.param_count(args.in_channels, args.num_classes, args.image_size)
            rec["macs"] = arch.macs(args.in_channels, args.num_classes, args.image_size)
            print(json.dumps(rec))
    else:
        for arch in space:
            print(arch.id)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nasproxy.spaces import Arch
    from nasproxy.train import TrainConfig, train

    arch = Arch.from_id(args.arch)
    data = _load_data(args)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    record = train(arch, data, None, cfg)
    print(json.dumps(record.to_dict(), indent=2))
    return 0 if record.status == "ok" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasproxy",
        description="How much of a dataset can a neural-architecture search throw away?",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("space", help="list the architectures of a search space")
    p.add_argument("space", help="a space name (e.g. convnet720) or a .yaml path")
    p.add_argument("--json", action="store_true", help="one JSON record per architecture")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(handler=cmd_space)

    p = sub.add_parser("train", help="train one architecture and print its record")
    p.add_argument("--arch", required=True, help="an id, e.g. w32-d3-relu-instancenorm-avgpooling")
    _add_dataset_args(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(handler=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasproxy`` console script."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except NasproxyError as exc:
        print(f"nasproxy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasproxy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
