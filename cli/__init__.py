"""The `latte` command line: `latte <stage> [options]`, one module per stage.

Every command follows one shape: its options and `-c config.yaml` resolve into the stage's key table
(`configured`), the stage runs on that config, and a summary is printed. Errors follow LatteGroup's rule.
Exit codes: 0 all done, 1 finished with failed inputs, 2 bad usage or bad input.
"""
import functools
import logging
import math
import os

import click

from latte_core.errors import JobAborted, UserError, bounded


class BadInput(click.ClickException):
    """A user error (bad file, bad option value): one line on stderr, exit code 2."""
    exit_code = 2


class LatteGroup(click.Group):
    """The one error rule of every command: a UserError (bad input, key or value) is one `Error:` line and
    exit 2; a JobAborted (e.g. a full disk; committed units stay valid) one `Error:` line and exit 1; any
    other exception one `Error:` line and exit 1, its traceback only with `latte -v`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except UserError as err:
            _fail(err, 2)
        except JobAborted as err:
            _fail(err, 1)
        except Exception as err:
            if (ctx.obj or {}).get("verbose"):
                raise
            _fail(f"unexpected {type(err).__name__}: {err} (run `latte -v ...` for the traceback)", 1)


def _fail(message, code):
    text = " ".join(str(message).split()) or "failed"
    click.echo(f"Error: {text}", err=True)
    raise SystemExit(code)


def setup_mindspore(device, mode="graph"):
    # kept here: MindSpore adds ~2.1 s to `latte --help`, and GLOG_v (main) must be set before it loads
    import mindspore as ms
    from latte_core.runtime import prefer_avx2_onednn
    prefer_avx2_onednn()
    ms.set_device(device)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)


def finish_job(summary, table):
    """The end of a batch job's summary: the units that raised, where its `table` and failures.parquet
    are; exit code 1 when inputs failed or units raised."""
    if summary["unit_errors"]:
        click.echo(f"  units that raised (re-run to retry): {', '.join(summary['unit_errors'])}")
    click.echo(f"  {table.split('.')[0]}: {os.path.join(summary['out_dir'], table)}")
    if summary["failed"]:
        click.echo(f"  failures: {os.path.join(summary['out_dir'], 'failures.parquet')}")
    if summary["failed"] or summary["unit_errors"]:
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------- options from key tables
class PathOrURL(click.Path):
    """A local path checked as click.Path checks it, or an object-store URL (s3://..., checked when used)."""

    def convert(self, value, param, ctx):
        from latte_toolkit.datasets.storage import is_url
        if isinstance(value, str) and is_url(value):
            return value
        return super().convert(value, param, ctx)


class IntList(click.ParamType):
    """Comma-separated integers, e.g. 32,64,64."""
    name = "N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return [int(item) for item in value.split(",")]
        except ValueError:
            self.fail(f"must be integers separated by commas, got {bounded(value)}", param, ctx)


class FiniteFloat(click.FloatRange):
    """A float option in a range that refuses nan and infinities (click.FLOAT and FloatRange take them)."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{bounded(value)} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self):
        return "" if self.min is None and self.max is None else super()._describe_range()


def _click_type(key):
    """The click type that checks a key's choices, or its type and range, as the option is parsed (so a
    bad value is click's one error line naming the flag)."""
    if key.choices:
        return click.Choice([choice for choice in key.choices if choice is not None])
    if bool in key.types:
        return click.BOOL
    numeric = float if float in key.types else int if int in key.types else None
    if numeric is None:
        return click.STRING
    if key.range is None:
        return FiniteFloat() if numeric is float else click.INT
    low = None if key.range.low == -math.inf else numeric(key.range.low)
    high = None if key.range.high == math.inf else numeric(key.range.high)
    if numeric is float:
        return FiniteFloat(low, high, min_open=key.range.low_open, max_open=key.range.high_open)
    return click.IntRange(low, high, min_open=key.range.low_open, max_open=key.range.high_open)


def _default_text(key):
    if not isinstance(key.default, key.types) or key.default in (None, "") or isinstance(key.default, bool):
        return ""
    shown = ",".join(map(str, key.default)) if isinstance(key.default, list) else key.default
    return f" [{shown}]"


def key_option(name, *flags, **settings):
    """An option setting the config key `name` (flags default to --name-with-dashes). settings: click's
    (type, multiple, is_flag, help; help defaults to the key's doc and default), or argument=True for a
    positional argument."""
    return name, flags or ("--" + name.replace("_", "-"),), settings


def _parameter(table, name, flags, settings):
    key, settings = table.by_name[name], dict(settings)
    if "type" not in settings and not settings.get("is_flag") and not any("/" in flag for flag in flags):
        settings["type"] = _click_type(key)
    if settings.pop("argument", False):
        return click.argument(name, required=False, **settings)
    settings.setdefault("help", key.doc[0].upper() + key.doc[1:] + _default_text(key) + ".")
    return click.option(*flags, name, default=None, **settings)


def _given(value):
    """A parsed option value as a key value: absent (None, an empty repeatable option) is None."""
    if isinstance(value, tuple):
        return list(value) or None
    return value


def configured(table, *options, yaml="YAML of this command's keys (flat or under data_config:); options "
                                     "override it. `--keys` lists them.", overrides=None):
    """Give a command `table`'s config: `--keys` lists the keys, `-c/--config` reads a YAML of them (yaml:
    its help, or False for none), and each key_option sets its key. The command is called with the
    resolved {key: value} first, then its other options. overrides(options) turns other options into
    key values (popping them). A required key left unset is an error naming its flag."""
    flags = {name: settings.get("metavar") or names[0] for name, names, settings in options}

    def show_keys(ctx, _, value):
        if value:
            click.echo(table.describe())
            ctx.exit()

    def decorate(command):
        @functools.wraps(command)
        def run(config_path=None, **given):
            values = {name: _given(given.pop(name)) for name, _, _ in options}
            values.update(overrides(given) if overrides else {})
            config = table.load(config_path, values)
            missing = table.missing(config)
            if missing:
                raise BadInput(f"give {flags.get(missing[0], missing[0])} (or `{missing[0]}:` in the config)")
            return command(config, **given)

        for name, names, settings in reversed(options):
            run = _parameter(table, name, names, settings)(run)
        if yaml:
            run = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=yaml)(run)
        return click.option("--keys", is_flag=True, is_eager=True, expose_value=False, callback=show_keys,
                            help="List every config key with its default and exit.")(run)
    return decorate


@click.group(cls=LatteGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages, and show the traceback of an unexpected error.")
@click.pass_context
def main(ctx, verbose):
    """Latte toolkit: ingest videos, cache VAE latents, train and sample Latte on MindSpore.

    A command's settings are its config keys (`latte <command> --keys`), read from `-c config.yaml`
    and overridden by its options.

    \b
    Example:
      latte ingest --source sky_train/ --out work/ingest --num-frames 16 --sample-stride 3
      latte curate --manifest work/ingest --out work/curate
      latte cache --manifest work/ingest --vae sd-vae-ft-mse/ --out work/cache --format mindrecord
      latte report work/cache --verify
      latte convert latte --source skytimelapse.pt --target skytimelapse.ckpt
      latte eval fvd --real work/ingest --fake samples/ --i3d i3d_pretrained_400.pt
      latte bench step --model Latte-S/2 --frames 8 --latent 16 --batch 2
    """
    # MindSpore's C++ warnings are noise for users; set before mindspore is first imported. So are the ~25 INFO
    # lines a local dask run's scheduler logs of its own start and stop (dask reads this when first imported).
    os.environ.setdefault("GLOG_v", "3")
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# the stages register their commands on `main`
from . import (bench, cache, convert, curate, demo, diagnose, eval, ingest, quality, report, sample,  # noqa: E402,F401
               train, train_vae)
