"""``python -m tools.images tools|base|build|push``: see :mod:`tools.images`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tools.images import __doc__ as IMAGES_DOC
from tools.images.build import IMAGES, airflow_base, build, ensure_base
from tools.images.engine import ensure_tools, image_exists
from tools.images.push import Registry, push
from tools.images.tags import local_ref, revision


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.images", description=(IMAGES_DOC or "").split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tools", help="install buildah, docker-registry, debootstrap when missing")
    sub.add_parser("base", help="make the Python base image once (debootstrap)")
    for command in ("build", "push"):
        p = sub.add_parser(command, help=f"{command} the images (default: all)")
        p.add_argument("names", nargs="*", default=list(IMAGES), help=", ".join(IMAGES))
    args = parser.parse_args(argv)
    if unknown := set(getattr(args, "names", ())) - set(IMAGES):
        parser.error(f"unknown image {', '.join(sorted(unknown))}: expected {', '.join(IMAGES)}")
    if args.command == "tools":
        ensure_tools()
    elif args.command == "base":
        print(ensure_base())
    elif args.command == "build":
        for item in build(args.names):
            print(f"{item.ref}\t{item.seconds:.0f} s")
    elif args.command == "push":
        registry = Registry.from_env()
        for name in args.names:
            local = local_ref(name, revision(name))
            if not image_exists(local):
                if name == "airflow" and airflow_base() is None:
                    continue
                raise SystemExit(f"{local} is not built: run `make images` first")
            push(local, registry.ref(name, revision(name)), registry)
            print(registry.ref(name, revision(name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
