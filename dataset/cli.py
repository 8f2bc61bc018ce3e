"""Command-line plumbing shared by the dataset builders: parsers, argument types, the runner."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping

from dataset.errors import DatasetError


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is out of range: must be >= {minimum}")
    return value


def run_cli(args: argparse.Namespace, commands: Mapping[str, Callable[..., object]]) -> None:
    """Run a builder CLI's sub-command (`args.command`) and time it; a DatasetError becomes a
    one-line error and exit status 1."""
    kwargs = dict(vars(args))
    command = kwargs.pop("command")
    start = time.perf_counter()
    try:
        commands[command](**kwargs)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    print(f"{command} finished in {time.perf_counter() - start:.2f} s -> {kwargs['output_dir']}")


def builder_parsers(
    script: str, doc: str, generate_doc: str
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The build and `generate` sub-command parsers, with the options every builder shares."""
    build = argparse.ArgumentParser(prog=script, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--source", required=True, help="directory or gs:// prefix with train.csv and test.csv")
    build.add_argument("--subsample-size", type=positive_int, default=None, help="keep this many training puzzles")
    gen = argparse.ArgumentParser(prog=f"{script} generate", description=generate_doc)
    gen.add_argument("--num-train", type=positive_int, required=True)
    gen.add_argument("--num-test", type=positive_int, required=True)
    for p in (build, gen):
        p.add_argument("--output-dir", required=True)
        p.add_argument("--seed", type=int, default=0)
    return build, gen


def parse_builder_args(
    argv: list[str], build: argparse.ArgumentParser, gen: argparse.ArgumentParser
) -> argparse.Namespace:
    if argv[:1] == ["generate"]:
        return gen.parse_args(argv[1:], namespace=argparse.Namespace(command="generate"))
    return build.parse_args(argv, namespace=argparse.Namespace(command="build"))
