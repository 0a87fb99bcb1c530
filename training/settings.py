"""Training settings: frozen dataclasses filled from defaults, then a YAML preset, then flags."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PRESETS = ("tiny", "fast", "default")  # every model has these; some have more (captioner_coco.yaml)
S = TypeVar("S", bound="LoopSettings")


class SettingsError(ValueError):
    """A preset or flag value that cannot be used; the message says which and why."""


def setting(default: Any, help: str, choices: tuple[Any, ...] = ()) -> Any:  # noqa: A002
    """A dataclass field that carries its command-line help and, when it has a fixed set of
    values, those `choices` (checked for flags by argparse and for presets by LoopSettings)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class LoopSettings:
    """What the shared training loop needs, whatever the model."""

    name: str = setting("", "run name: outputs go to <output-dir>/<name> (empty: <kind>_<preset>)")
    output_dir: str = setting("runs", "folder that holds one sub-folder per run")
    epochs: int = setting(20, "maximum number of passes over the training data")
    max_steps: int = setting(0, "stop after this many optimizer steps in total (0: no limit)")
    time_limit_min: float = setting(0.0, "stop after this many minutes of training (0: no limit)")
    batch_size: int = setting(64, "examples per optimizer step, over all processes")
    lr: float = setting(1e-3, "peak learning rate of Adam")
    weight_decay: float = setting(0.0, "Adam's L2 weight decay")
    warmup_steps: int = setting(100, "steps of linear learning-rate warm-up from 0")
    schedule: str = setting(
        "plateau",
        "after warm-up: plateau (halve on no progress), cosine, constant",
        choices=("plateau", "cosine", "constant"),
    )
    plateau_factor: float = setting(0.5, "learning-rate factor when the validation metric stalls")
    min_lr_ratio: float = setting(0.02, "the learning rate never falls below lr times this")
    clip_norm: float = setting(1.0, "clip gradients to this global L2 norm (0: only measure it)")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy")
    patience: int = setting(4, "stop after this many epochs without a better validation metric")
    select_metric: str = setting(
        "loss",
        "validation metric for early stopping and best/: loss, bleu or cider",
        choices=("loss", "bleu", "cider"),
    )
    metric_subset: int = setting(500, "validation examples decoded greedily for bleu / cider")
    keep_snapshots: int = setting(
        0,
        "keep the weights of the last N snapshots in <run>/snapshots, for "
        "python -m training.average_checkpoints (0: none)",
    )
    snapshot_every: int = setting(
        0, "with --keep-snapshots: a snapshot every N steps (0: at each validation)"
    )
    seed: int = setting(1, "random seed of initialisation, shuffling and dropout")
    log_every: int = setting(50, "write a metrics line every this many steps")
    measure_memory: bool = setting(False, "log each epoch's peak bytes autograd keeps for backward")
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    threads: int = setting(0, "torch CPU threads per process (0: torch's choice)")
    resume: bool = setting(False, "continue from <run>/checkpoint.pt when it exists")
    progress: bool = setting(True, "show a progress bar")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices, value = f.metadata.get("choices", ()), getattr(self, f.name)
            if choices and value not in choices:
                options = ", ".join(map(str, choices))
                raise SettingsError(f"{f.name} must be one of {options}; got {value!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_parser(
    settings_class: type[LoopSettings], kind: str, description: str | None
) -> argparse.ArgumentParser:
    """`--preset` and one kebab-case flag per settings field; unset flags keep the preset's value.

    `--help` states each setting's effective default: the preset's value (`--preset NAME --help`
    shows that preset's), else the dataclass default.
    """
    parser = argparse.ArgumentParser(description=description, add_help=False)
    flags: dict[str, argparse.Action] = {}  # filled below; read when --help runs
    parser.add_argument(
        "-h",
        "--help",
        action=_EffectiveHelp,
        settings_class=settings_class,
        kind=kind,
        flags=flags,
        help="show this help, with the defaults of --preset (give it first), and exit",
    )
    parser.add_argument(
        "--preset",
        default="default",
        help=f"a preset name ({', '.join(preset_names(kind))}) or a YAML file (default: default)",
    )
    hints = typing.get_type_hints(settings_class)
    for f in dataclasses.fields(settings_class):
        flag, kind_of = "--" + f.name.replace("_", "-"), hints[f.name]
        text = _help_text(f)  # until --help names the preset's values
        if kind_of is bool:
            action = parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            choices = f.metadata.get("choices") or None
            action = parser.add_argument(
                flag, type=_scalar_type(kind_of), default=None, choices=choices, help=text
            )
        flags[f.name] = action
    return parser


class _EffectiveHelp(argparse.Action):
    """--help whose defaults are the values a run with the chosen preset would use."""

    def __init__(
        self,
        option_strings: list[str],
        dest: str,
        settings_class: type[LoopSettings],
        kind: str,
        flags: dict[str, argparse.Action],
        help: str | None = None,  # noqa: A002 - argparse's name
    ) -> None:
        super().__init__(
            option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )
        self.settings_class, self.kind, self.flags = settings_class, kind, flags

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        preset = namespace.preset
        try:
            effective = resolve_settings(
                self.settings_class, self.kind, argparse.Namespace(preset=preset)
            )
            source = f"preset {preset}"
        except (OSError, ValueError, TypeError) as error:  # still show help for a broken preset
            effective, source = self.settings_class(), f"dataclass; preset {preset}: {error}"
        fields = {f.name: f for f in dataclasses.fields(self.settings_class)}
        for name, action in self.flags.items():
            action.help = _help_text(fields[name], getattr(effective, name))
        parser.epilog = f"Defaults shown are those of {source}.".replace("%", "%%")
        parser.print_help()
        parser.exit()


def _help_text(f: dataclasses.Field[Any], default: Any = dataclasses.MISSING) -> str:
    """A field's help and its default (the dataclass's unless given), `%` escaped for argparse."""
    value = f.default if default is dataclasses.MISSING else default
    return f"{f.metadata.get('help', '')} (default: {value!r})".replace("%", "%%")


def _scalar_type(kind: Any) -> type:
    if isinstance(kind, types.UnionType):  # `int | None` style
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return kind if kind in (int, float, str) else str


def preset_names(kind: str) -> list[str]:
    """The presets of one model: `training/configs/<kind>_<name>.yaml`."""
    return sorted(p.stem.removeprefix(f"{kind}_") for p in CONFIG_DIR.glob(f"{kind}_*.yaml"))


def preset_path(preset: str, kind: str) -> Path:
    """`training/configs/<kind>_<preset>.yaml` for a preset name, else the path itself."""
    named = CONFIG_DIR / f"{kind}_{preset}.yaml"
    if preset in PRESETS or ("/" not in preset and named.is_file()):
        return named
    return Path(preset)


def resolve_settings(settings_class: type[S], kind: str, args: argparse.Namespace) -> S:
    """Defaults, overridden by the preset file, overridden by flags given on the command line."""
    path = preset_path(args.preset, kind)
    if not path.is_file():
        raise FileNotFoundError(
            f"no preset {args.preset!r}: {path} does not exist; the {kind} presets are "
            f"{', '.join(preset_names(kind))}, or give a YAML file"
        )
    values = yaml.safe_load(path.read_text()) or {}
    names = {f.name for f in dataclasses.fields(settings_class)}
    unknown = set(values) - names
    if unknown:
        raise SettingsError(f"{path}: unknown settings {sorted(unknown)}; see --help")
    values.update({n: getattr(args, n) for n in names if getattr(args, n, None) is not None})
    if not values.get("name"):
        values["name"] = f"{kind}_{path.stem.removeprefix(kind + '_')}"
    return settings_class(**values)
