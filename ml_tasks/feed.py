"""Feed the loop: send real images through the model service, as production traffic would.

The annotation loop starts from the images the model service keeps in the lake's ``incoming/``
(a ``--sample-rate`` share of what it is asked to predict). On a laptop nobody sends it any, so
this command plays production: scikit-learn's handwritten digits (shipped offline), each lightly
transformed (shifted by up to a pixel, a little noise) so that they are new images the model has
not seen, sent to the service's v1 ``:predict`` endpoint in small batches. It reports how many
were answered and how often the champion's label matched the true digit, a live accuracy a
person can watch drift.

    python -m ml_tasks.feed --url http://127.0.0.1:8085 --count 120

When ``incoming/`` holds ``min_images`` of them (the intake DAG's param, 100 by default), the
intake's sensor fires.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ml_tasks.core.command import command_app, entry_point, report
from ml_tasks.core.options import NoProgress, ResultPath
from ml_tasks.serving.feeding import DEFAULT_URL, feed

app = command_app()


@app.command()
def main_command(
    url: Annotated[
        str,
        typer.Option(
            "--url",
            envvar="FLYWHEEL_SERVE_URL",
            help="the model service (default: FLYWHEEL_SERVE_URL)",
        ),
    ] = DEFAULT_URL,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            envvar="FLYWHEEL_MODEL_NAME",
            help="model name in the URL (default: FLYWHEEL_MODEL_NAME, else digits)",
        ),
    ] = "digits",
    count: Annotated[int, typer.Option("--count", min=1, help="images to send")] = 100,
    batch: Annotated[int, typer.Option("--batch", min=1, help="images per request")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="which digits and transforms")] = 0,
    no_progress: NoProgress = False,
    result_path: ResultPath = None,
) -> None:
    """Send real, lightly transformed handwritten digits through the model service, as
    production traffic would: the service keeps a sample of them in the lake's incoming/,
    which feeds the annotation loop (the intake DAG starts at min_images, 100 by default)."""
    progress = not no_progress and sys.stderr.isatty()
    report(
        "feed",
        lambda: feed(url, model, count=count, batch=batch, seed=seed, progress=progress),
        result_path=result_path,
        url=url,
    )


main = entry_point(app, "ml_tasks.feed")

if __name__ == "__main__":
    raise SystemExit(main())
