"""``polaris list``: optimizers, updates and schedules with their options and defaults."""

from __future__ import annotations

import inspect
import json

import click

from polaris.cli.options import json_option


def _updates() -> list[dict]:
    import polaris.updates as U

    out = []
    for name in U.__all__:
        obj = getattr(U, name)
        if not inspect.isfunction(obj) or name in ("apply_updates",):
            continue
        fn = inspect.unwrap(obj)
        params = [
            {"name": p.name, "default": None if p.default is inspect.Parameter.empty else repr(p.default)}
            for p in inspect.signature(fn).parameters.values()
            if p.name not in ("parent",)
        ]
        doc = (inspect.getdoc(obj) or "").splitlines()
        out.append({"name": name, "options": params, "summary": doc[0] if doc else ""})
    return out


def _schedules() -> list[dict]:
    from polaris._src.schedules import SCHEDULES

    out = []
    for name, fn in SCHEDULES.items():
        sig = inspect.signature(inspect.unwrap(fn))
        doc = (inspect.getdoc(fn) or "").splitlines()
        out.append({"name": name, "signature": f"{name}{sig}", "summary": doc[0] if doc else ""})
    return out


@click.command("list")
@json_option
@click.option("--what", type=click.Choice(["all", "optimizers", "updates", "schedules"]), default="all")
def list_cmd(as_json: bool, what: str) -> None:
    """List optimizers (with their options and defaults), updates and schedules."""
    from polaris._src import registry

    data: dict = {}
    if what in ("all", "optimizers"):
        data["optimizers"] = [
            {
                "name": s.name,
                "summary": s.summary,
                "options": [{"name": o.name, "default": o.default if not callable(o.default) else repr(o.default), "kind": o.kind} for o in s.options],
            }
            for s in registry.specs()
        ]
    if what in ("all", "updates"):
        data["updates"] = _updates()
    if what in ("all", "schedules"):
        data["schedules"] = _schedules()
    if as_json:
        click.echo(json.dumps(data, indent=2, default=repr))
        return
    if "optimizers" in data:
        click.secho("Optimizers (polaris compile NAME [KEY=VALUE ...]):", bold=True)
        for s in data["optimizers"]:
            click.echo(f"  {s['name']:<14} {s['summary']}")
            opts = ", ".join(f"{o['name']}={o['default']}" for o in s["options"])
            click.echo(f"  {'':<14} options: {opts}")
    if "updates" in data:
        click.secho("\nUpdates (polaris.updates, composable):", bold=True)
        for u in data["updates"]:
            opts = ", ".join(o["name"] if o["default"] is None else f"{o['name']}={o['default']}" for o in u["options"])
            click.echo(f"  {u['name']:<24} ({opts})")
    if "schedules" in data:
        click.secho("\nSchedules (learning_rate='NAME(init_value, key=value, ...)'):", bold=True)
        for s in data["schedules"]:
            click.echo(f"  {s['signature']}")
