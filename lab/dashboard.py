"""The lab's wandb workspace, as code (wandb-workspaces): `python -m lab dashboard [--save]`.

Builds the panels a user of the lab wants (bits per example against examples seen with the floor,
epistemic bits, held-out accuracy, per-position excess, dl/table for grokking, the sweep scatter).
Offline it only builds and validates the definition (the pydantic models and their serialized form)
and says what it would create; `--save` with wandb online (logged in, or WANDB_MODE=online) saves it
to the project and prints its URL.
"""

from __future__ import annotations

import os

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

X = "examples_seen"


def build(entity: str, project: str, name: str = "Compression Lab") -> ws.Workspace:
    line = lambda title, y, **kw: wr.LinePlot(title=title, x=kw.pop("x", X), y=y, **kw)  # noqa: E731
    sections = [
        ws.Section(name="Bits: the prequential code", is_open=True, panels=[
            line("bits per example vs the floor", ["bits/example", "bits/floor_example"]),
            line("epistemic bits per example (learning cost of each new example)", ["bits/epistemic_example"]),
            line("cumulative bits: total, floor, epistemic", ["bits/total", "bits/floor", "bits/epistemic"]),
            line("compression ratios", ["bits/ratio_raw", "bits/ratio_uniform", "bits/ratio_floor"]),
        ]),
        ws.Section(name="Held-out", is_open=True, panels=[
            line("exact match (greedy generation)", ["val/exact_match", "val/clean_exact_match"]),
            line("held-out bits per example, and above the floor", ["val/bits_example", "val/excess_bits_example"]),
            line("accuracy per answer digit", [], metric_regex="val/acc/.*"),
        ]),
        ws.Section(name="Per position", panels=[
            line("cumulative excess bits per position", [], metric_regex="bits/excess/.*"),
            line("held-out loss per position (nats)", [], metric_regex="val/loss/.*"),
        ]),
        ws.Section(name="Grokking", panels=[
            line("description length of the table", ["dl/table", "dl/table_floor", "dl/table_raw"], x="Step",
                 log_x=True),
            line("train and validation accuracy", ["train/exact_match", "val/exact_match"], x="Step", log_x=True),
            line("weight norm", ["grok/weight_norm"], x="Step", log_x=True),
            line("restricted and excluded loss (Fourier)", ["grok/restricted_loss", "grok/excluded_loss"],
                 x="Step", log_x=True),
        ]),
        ws.Section(name="Sweep: does compression track generalization?", panels=[
            wr.ScatterPlot(title="final dl/table vs validation accuracy", x=wr.SummaryMetric("dl/table"),
                           y=wr.SummaryMetric("val/exact_match")),
            wr.ScatterPlot(title="epistemic bits vs validation accuracy", x=wr.SummaryMetric("bits/epistemic"),
                           y=wr.SummaryMetric("val/exact_match")),
        ]),
    ]
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections)


def describe(workspace: ws.Workspace) -> str:
    lines = [f"workspace '{workspace.name}' in {workspace.entity}/{workspace.project}:"]
    for s in workspace.sections:
        lines.append(f"  section '{s.name}': " + "; ".join(p.title for p in s.panels))
    return "\n".join(lines)


def main(entity: str | None, project: str, save: bool) -> int:
    from lab.loggers import wandb_mode

    workspace = build(entity or os.environ.get("WANDB_ENTITY", "<your-entity>"), project)
    size = len(workspace._to_model().model_dump_json())  # the definition W&B would receive, validated
    print(describe(workspace))
    print(f"definition valid ({size} bytes serialized)")
    if not save:
        print("not saved: pass --save (with wandb online) to create it")
        return 0
    if wandb_mode() != "online" or entity is None and "WANDB_ENTITY" not in os.environ:
        print("not saved: wandb is offline or no entity is set (WANDB_ENTITY or --entity)")
        return 1
    workspace.save()
    print(f"saved: {workspace.url}")
    return 0
