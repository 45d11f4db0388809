"""Typed training configuration and the one argument layer of `fastvid train` and `fastvid train-events`.

A task's config is a dataclass: `TrainerConfig` holds the fields every task shares (torchvision's
reference flags where one applies, plus the trainer's own), and each task subclasses it with its own
fields (fastvid.video.config.TrainConfig, fastvid.events.detect.config.DetectConfig). Each field carries
its command-line spelling in its metadata (`option(...)`: flags and aliases, help, choices, metavar), so
`add_arguments(parser, cls)` generates a command's flags from the dataclass: no hand-written parser,
defaults shown in --help. A task changes a shared field's default (and help) with `retune(...)`.

Values: dataclass defaults <- YAML file (--config: a path or a shipped recipe name) <- flags given
(every generated flag defaults to "not given", so only typed flags override the file). A YAML file may
spell keys with dashes or underscores; unknown keys and wrong types are errors naming the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path


def field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def coerce(name: str, value, source: str, types: dict):
    """Check/convert `value` for field `name` of a config whose field types are `types` (ints accepted
    for floats, sequences for lists)."""
    hint = types[name]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"{source}: {name} must not be null")
    base = _without_none(hint)
    origin = typing.get_origin(base) or base
    try:
        if origin is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if origin is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if origin is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        if origin is str:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)  # kinetics_version: 400
            if not isinstance(value, str):
                raise TypeError
            return value
        if origin is list:
            items = [value] if isinstance(value, int) else list(value)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                raise TypeError
            return items
        if origin is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except TypeError:
        pass
    raise ValueError(f"{source}: {name} must be {_type_name(base)}, got {value!r}")


def _type_name(t) -> str:
    origin = typing.get_origin(t)
    if origin is list:
        return "a list of integers"
    if origin is dict or t is dict:
        return "a mapping"
    return getattr(t, "__name__", str(t))


PIPE_OPT_IN = "FASTVID_ALLOW_PIPE"


def allow_pipe() -> None:
    """Let recipes name `pipe:` commands in this process (what --allow-pipe does)."""
    os.environ[PIPE_OPT_IN] = "1"


def _check_no_pipe(name: str, value, path) -> None:
    """A recipe is a file anyone may hand over: a `pipe:` data address in it would run a shell command, so it
    needs an opt-in outside the file (--allow-pipe or FASTVID_ALLOW_PIPE=1)."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, str) and v.lstrip().startswith("pipe:") and os.environ.get(PIPE_OPT_IN) != "1":
            raise ValueError(f"config file {path}: {name} is a pipe: command ({v[:60]!r}), which would run a shell "
                             f"command; a recipe runs none unless allowed outside it: pass --allow-pipe or set "
                             f"{PIPE_OPT_IN}=1")


def load_yaml(path: str | Path, types: dict, aliases: dict[str, str] | None = None) -> dict:
    """Read a YAML config into {field: value} (for a config whose field types are `types`) with dashed
    keys normalized and flag aliases (`aliases`, e.g. wd -> weight_decay) resolved; clear errors on bad files.
    A `pipe:` value is refused unless FASTVID_ALLOW_PIPE=1 (--allow-pipe)."""
    import yaml

    from fastvid.configs import resolve

    path = resolve(path)  # a file path, or the name of a shipped recipe
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must be a mapping of option: value, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = (aliases or {"wd": "weight_decay"}).get(name, name)
        if name not in types:
            raise ValueError(f"config file {path}: unknown option {key!r}")
        _check_no_pipe(name, value, path)
        out[name] = coerce(name, value, f"config file {path}", types)
    return out


def parse_step_range(text: str) -> tuple[int, int]:
    """'A-B' -> (A, B) with 0 <= A < B."""
    try:
        a, b = (int(x) for x in str(text).split("-"))
    except ValueError:
        raise ValueError(f"profile_steps must look like A-B (e.g. 10-20), got {text!r}") from None
    if not 0 <= a < b:
        raise ValueError(f"profile_steps {text!r}: need 0 <= A < B")
    return a, b


def key_value(text: str):
    """KEY=VALUE with VALUE parsed as YAML (so width=16 is an int)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a parameter name, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE is not a YAML value ({str(exc).splitlines()[0]})") from None


# ---- fields with their command-line spelling ---------------------------------------------------------------------

@dataclass(frozen=True)
class Flag:
    """How a config field appears on the command line (dataclass field metadata["flag"])."""

    help: str
    flags: tuple[str, ...] = ()          # option strings; default: --field-name
    choices: tuple | typing.Callable | None = None  # a callable is asked when the parser is built (registries)
    metavar: str | None = None
    type: typing.Callable | None = None  # argparse type; default: from the field's annotation
    repeat: bool = False                 # repeatable (KEY=VALUE pairs collected into the field's dict)
    hidden: bool = False                 # accepted, not listed in --help (test and audit hooks)


def option(default=None, *, help: str, flags: tuple[str, ...] = (), choices=None, metavar: str | None = None,
           type=None, repeat: bool = False, hidden: bool = False):
    """A config field with its flag: `lr: float = option(0.64, help="initial learning rate")`."""
    choices = choices if callable(choices) or choices is None else tuple(choices)
    meta = {"flag": Flag(help, tuple(flags), choices, metavar, type, repeat, hidden)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: _copy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value):
    return list(value) if isinstance(value, list) else dict(value)


def retune(base, name: str, default, **changes):
    """Field `name` of config class `base` with another default (and optionally other Flag settings, e.g.
    help): how a task's config changes a shared field."""
    flag = dataclasses.replace(base.__dataclass_fields__[name].metadata["flag"], **changes)
    return option(default, help=flag.help, flags=flag.flags, choices=flag.choices, metavar=flag.metavar, type=flag.type,
                  repeat=flag.repeat, hidden=flag.hidden)


def optional_float(text: str):
    """A flag's float, or None for 'none' / 'native' / '0' (--frame-rate none: the native rate)."""
    return None if text.lower() in ("none", "native", "0") else float(text)


@dataclass
class TrainerConfig:
    """The fields every training task shares: data, model, optimizer and schedule (torchvision's reference
    names and defaults), distribution, precision, checkpoints, logging. Tasks subclass it."""

    data_path: str | None = option(None, help="directory holding the shard sets made by `fastvid shard` (--train-dir and --val-dir inside)")
    train_dir: str = option("train", help="name of the training shard set directory under --data-path")
    val_dir: str = option("val", help="name of the validation shard set directory under --data-path")
    model: str = option("r2plus1d_18", help="model name (fastvid.train.models.list_models())")
    device: str = option("auto", help="cuda, cpu, or auto (cuda when visible)")
    batch_size: int = option(24, flags=("-b", "--batch-size"), help="samples per process; the total batch is world_size x batch_size")
    epochs: int = option(45, metavar="N", help="number of total epochs to run")
    workers: int = option(10, flags=("-j", "--workers"), metavar="N", help="loader threads / decode workers per process")
    lr: float = option(0.64, help="initial learning rate (for the whole world's batch)")
    momentum: float = option(0.9, metavar="M", help="SGD momentum")
    weight_decay: float = option(1e-4, flags=("--wd", "--weight-decay"), metavar="W", help="weight decay")
    lr_milestones: list[int] = option([20, 30, 40], help="epochs at which the lr is multiplied by --lr-gamma")
    lr_gamma: float = option(0.1, help="decrease lr by a factor of lr-gamma")
    lr_warmup_epochs: int = option(10, help="the number of epochs to warmup")
    lr_warmup_method: str = option("linear", type=str.lower, choices=("linear", "constant"),
                                   help="the warmup method (any case, as torchvision lower-cases it)")
    lr_warmup_decay: float = option(0.001, help="the lr factor at the start of warmup")
    print_freq: int = option(10, help="optimizer steps between log lines / progress updates, TensorBoard step scalars "
                                      "and NaN checks (SIGTERM is checked every step)")
    output_dir: str = option(".", help="where checkpoints, metrics.jsonl and traces go (one run at a time: it is locked)")
    resume: str = option("", help="checkpoint to resume from (e.g. OUTPUT/checkpoint.pth; also mid-epoch after SIGTERM)")
    start_epoch: int = option(0, metavar="N", help="start epoch (taken from the checkpoint when resuming)")
    sync_bn: bool = option(False, help="convert BatchNorm to SyncBatchNorm before DDP")
    test_only: bool = option(False, help="only evaluate (use with --resume or --weights)")
    use_deterministic_algorithms: bool = option(False, help="force deterministic torch algorithms")
    dist_url: str = option("env://", help="url used to set up distributed training")
    amp: bool = option(False, help="mixed precision as torchvision: fp16 autocast with a GradScaler; --amp-dtype bf16 "
                                   "uses bf16 autocast without a scaler (fp16 + GradScaler instead where the GPU lacks bf16)")
    amp_dtype: str = option("fp16", type=str.lower, choices=("bf16", "fp16"),
                            help="autocast dtype with --amp: fp16 (with a GradScaler, torchvision's) or bf16")
    config: str | None = option(None, metavar="NAME|FILE.yaml",
                                help="a shipped recipe by name (fastvid.configs, e.g. r2plus1d_18_k400 or events/rnn_det_gen1) "
                                     "or a YAML file of options (dashed or underscored names); flags given here override it")
    seed: int = option(0, help="random seed (model init, sampling, augmentation)")
    grad_clip: float | None = option(None, metavar="NORM", help="clip the global gradient norm")
    model_width: int | None = option(None, metavar="W", help="channel width of the first stage; same architecture, fewer channels")
    model_kwargs: dict = option({}, flags=("--model-kwarg",), repeat=True, type=key_value, metavar="KEY=VALUE",
                                help="extra model builder argument, repeatable (e.g. width=16)")
    max_steps_per_epoch: int | None = option(None, metavar="N", help="cut every epoch to N steps")
    eval_every: int = option(1, metavar="N", help="evaluate every N epochs and after the last")
    save_every_steps: int | None = option(None, metavar="N", help="also checkpoint every N training steps (mid-epoch)")
    trust_checkpoint: bool = option(False, help="allow --resume/--weights files that hold more than tensors and plain data "
                                                "(legacy or foreign pickles); unpickling such a file can run code, so only "
                                                "for files you trust")
    channels_last: bool = option(False, help="channels-last memory format for model and input")
    compile: bool = option(False, help="torch.compile the model")
    profile_steps: str | None = option(None, metavar="A-B", help="write a torch.profiler trace of global steps A..B to OUTPUT/profile/")
    tensorboard: str = option("auto", metavar="DIR", help="write TensorBoard event files to DIR ('auto': OUTPUT/tb when "
                                                         "tensorboard is installed; 'none': off)")
    wandb: bool = option(False, help="also log to Weights & Biases (pip install 'fastvid[wandb]'; WANDB_MODE=offline needs no network)")
    wandb_project: str = option("fastvid", help="Weights & Biases project name")
    no_progress: bool = option(False, help="no progress bars: a log line every --print-freq steps (the default when "
                                           "stderr is not a terminal)")
    log_keys: str | None = option(None, metavar="FILE", hidden=True,
                                  help="append one JSON line per training step and rank to FILE: the sample keys taken "
                                       "(fastvid.train.callbacks.KeyLog; tests and audits)")

    def model_arguments(self) -> dict:
        """The model builder's keyword arguments: --model-kwarg pairs, and --model-width as `width`."""
        return {**self.model_kwargs, **({"width": self.model_width} if self.model_width else {})}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check values a flag or YAML file can get wrong; tasks extend it (call super().validate())."""
        self.lr_warmup_method = self.lr_warmup_method.lower()  # torchvision lower-cases it ("Linear" works there)
        self.amp_dtype = self.amp_dtype.lower()
        for name in ("batch_size", "print_freq", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_every_steps is not None and self.save_every_steps < 1:
            raise ValueError(f"save_every_steps must be >= 1, got {self.save_every_steps}")
        if self.amp_dtype not in ("bf16", "fp16"):
            raise ValueError(f"amp_dtype must be bf16 or fp16, got {self.amp_dtype!r}")
        if self.lr_warmup_method not in ("linear", "constant"):
            raise ValueError(f"Invalid warmup lr method '{self.lr_warmup_method}'. Only linear and constant are supported.")
        if self.profile_steps is not None:
            parse_step_range(self.profile_steps)


# ---- the argument layer -----------------------------------------------------------------------------------------

def _without_none(hint):
    """X for `X | None` (Optional[X]); the hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _argparse_kwargs(f: dataclasses.Field, hint, default) -> dict:
    """add_argument keywords of config field `f` (annotation `hint`) from its Flag."""
    flag: Flag = f.metadata["flag"]
    kw: dict = {"dest": f.name, "default": argparse.SUPPRESS}
    base = _without_none(hint)
    origin = typing.get_origin(base) or base
    if flag.repeat:
        kw.update(action="append", type=flag.type)
    elif origin is bool:
        kw["action"] = "store_true"
    elif origin is list:
        kw.update(nargs="+", type=flag.type or typing.get_args(base)[0])
    else:
        kw["type"] = flag.type or (origin if origin in (int, float) else None)
    if flag.choices:
        kw["choices"] = list(flag.choices() if callable(flag.choices) else flag.choices)
    if flag.metavar:
        kw["metavar"] = flag.metavar
    help_text = flag.help
    if origin is not bool and not flag.repeat and default not in (None, {}, ""):
        help_text += f" (default: {default})"
    kw["help"] = argparse.SUPPRESS if flag.hidden else help_text
    return kw


def add_arguments(parser: argparse.ArgumentParser, cls, task_title: str) -> None:
    """The flags of config class `cls`: the shared TrainerConfig fields in one group, the task's in another."""
    types = field_types(cls)
    defaults = cls()
    shared = parser.add_argument_group("training options (shared by the training commands)")
    own = parser.add_argument_group(task_title)
    for f in dataclasses.fields(cls):
        if "flag" not in f.metadata:
            continue
        group = shared if f.name in TrainerConfig.__dataclass_fields__ else own
        flags = f.metadata["flag"].flags or (f"--{f.name.replace('_', '-')}",)
        group.add_argument(*flags, **_argparse_kwargs(f, types[f.name], getattr(defaults, f.name)))
    # A permission of this process, not a setting of the run: no config field (a recipe cannot grant it).
    shared.add_argument("--allow-pipe", action="store_true", default=argparse.SUPPRESS,
                        help=f"let a --config recipe name pipe: commands as data paths (they run shell commands; same "
                             f"as {PIPE_OPT_IN}=1)")


def _aliases(cls) -> dict[str, str]:
    """Flag spellings that are not the field name (wd -> weight_decay), for YAML keys."""
    out = {}
    for f in dataclasses.fields(cls):
        for spelling in f.metadata.get("flag", Flag("")).flags:
            name = spelling.lstrip("-").replace("-", "_")
            if spelling.startswith("--") and name != f.name:
                out[name] = f.name
    return out


def build_config(cls, overrides: dict | None = None, config_path: str | Path | None = None):
    """Config `cls` from its defaults, then the YAML file (if any), then explicit `overrides`; validated."""
    types = field_types(cls)
    overrides = dict(overrides or {})
    config_path = overrides.get("config", config_path)
    values = load_yaml(config_path, types, _aliases(cls)) if config_path else {}
    for name, value in overrides.items():
        if name not in types:
            raise ValueError(f"unknown training option {name!r}")
        values[name] = coerce(name, value, "command line", types)
    if "model_kwargs" in overrides and "model_kwargs" in values and config_path:
        # flags add to (not replace) the YAML's model_kwargs
        from_file = load_yaml(config_path, types, _aliases(cls)).get("model_kwargs") or {}
        values["model_kwargs"] = {**from_file, **values["model_kwargs"]}
    if config_path:
        from fastvid.configs import resolve

        values["config"] = str(resolve(config_path))
    cfg = cls(**values)
    cfg.validate()
    return cfg


def config_from_args(args: argparse.Namespace, cls):
    """The config for parsed flags (add_arguments' parser): defaults <- --config YAML <- flags given."""
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    if given.pop("allow_pipe", False):
        allow_pipe()
    for f in dataclasses.fields(cls):
        if f.name in given and f.metadata.get("flag", Flag("")).repeat:
            given[f.name] = dict(given[f.name])  # KEY=VALUE pairs
    return build_config(cls, given)


def training_command(cls, task_title: str, epilog: str, make_task: typing.Callable):
    """The `add_arguments(parser)`, `config_from_args(args)` and `run(args) -> int` of a training command
    (fastvid.cli's command module interface): flags generated from config class `cls` (the task's own under
    `task_title`), `epilog` under --help, and `run` training `make_task(config)` with the one Trainer.
    `make_task` imports its task when called, so --help stays torch-free."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.epilog = epilog
        add_arguments(parser, cls, task_title)

    def from_args(args: argparse.Namespace):
        return config_from_args(args, cls)

    def run(args: argparse.Namespace) -> int:
        from fastvid.train.trainer import Trainer

        return Trainer(make_task(from_args(args))).run()

    return add, from_args, run
