"""``--config FILE`` and ``--runtime-env FILE``: settings and Ray runtime envs read from JSON or YAML.

A config file maps long flag names (``steps``, ``checkpoint-interval`` or ``checkpoint_interval``)
to values. Its values become the command's defaults and every value goes through the flag's own
type and choices, so ``steps: 0`` is refused exactly like ``--steps 0``; a flag given on the command
line still wins. A runtime env file is what ``ray job submit --runtime-env`` takes; it is checked
field by field before Ray starts, and :func:`driver_runtime_env` hands it to ``connect_ray``.

No Ray import at module level: ``spectral-gpt --help`` and ``ls`` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from spectral_gpt.config import ConfigError

_RUNTIME_ENV: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("runtime_env", default=None)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a JSON (``*.json``) or YAML (anything else) file; ConfigError otherwise.

    ``what`` names the file's role in the message ("config file", "runtime env"), which always
    names the path and, for a syntax error, its line.
    """
    label = f"{what} {str(path)!r}"
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{label} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{label} is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{label} cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"{label} is empty; it must map names to values, e.g. 'steps: 500'")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{label} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or exc
            raise ConfigError(f"{label}{where}: invalid YAML ({_one_line(problem)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label} holds a {type(data).__name__}, not a mapping of names to values")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"{label}: key {bad_keys[0]!r} is not a string")
    return data


# -- --config ------------------------------------------------------------------------------------

def _config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Flag name (without ``--``) -> action, for every long flag a config file may set."""
    keys = {}
    for action in parser._actions:  # argparse offers no public listing of a parser's flags
        if isinstance(action, (argparse._HelpAction, ConfigFileAction)):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                keys[option[2:]] = action
    return keys


def _flag_value(action: argparse.Action, key: str, value: Any) -> Any:
    """``value`` as the flag ``--key`` would give it, through the same type and choices checks."""
    if action.nargs == 0:  # store_true / store_false: "gpu: true" means the flag is given
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return action.const if value else action.default
    if action.nargs in ("+", "*"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{key}={value!r} must be a value or a non-empty list of values")
        return [_scalar(action, key, item) for item in items]
    return _scalar(action, key, value)


def _scalar(action: argparse.Action, key: str, value: Any) -> Any:
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{key}={value!r} must be a single value, not a {type(value).__name__}")
    if action.type is None:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string (quote it)")
        converted = value
    else:
        try:
            converted = action.type(str(value))
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number"}.get(action.type, "valid")
            raise ConfigError(f"{key}={value!r} is not {kind}") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(f"{key}={converted!r} is not one of: {', '.join(map(str, action.choices))}")
    return converted


def config_defaults(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The defaults (``dest -> value``) a config file gives ``parser``'s flags; ConfigError names the key.

    Keys are long flag names with ``-`` or ``_``; ``null`` leaves a flag at its default. Relative
    paths in values mean the same as on the command line (relative to the current folder).
    """
    data = read_mapping(path, "config file")
    keys = _config_keys(parser)
    defaults: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("_", "-")
        action = keys.get(key)
        if action is None:
            raise ConfigError(f"config file {path!r}: unknown key {raw_key!r}; allowed: {', '.join(sorted(keys))}")
        if value is None:
            continue
        if action.dest in set_by:  # max-failures and max_failures, or gpu and cpu (one flag's two names)
            raise ConfigError(f"config file {path!r}: {set_by[action.dest]!r} and {raw_key!r} both set "
                              f"{action.dest}; keep one")
        set_by[action.dest] = raw_key
        try:
            defaults[action.dest] = _flag_value(action, key, value)
        except ConfigError as exc:
            raise ConfigError(f"config file {path!r}: {exc}") from None
    return defaults


class ConfigFileAction(argparse.Action):
    """``--config FILE``: makes the file's values the defaults of the sub-command that owns the flag.

    argparse calls an action with the parser it belongs to, so the defaults land on the right
    sub-command; :func:`parse_args` then parses once more, and flags on the command line win.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        try:
            parser.set_defaults(**config_defaults(values, parser))
        except ConfigError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, values)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` to a command whose flags a config file may set."""
    parser.add_argument("--config", metavar="FILE", action=ConfigFileAction, default=None,
                        help="JSON or YAML file of flag names and values (e.g. 'steps: 2000'), used as "
                             "defaults; flags on the command line override it")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--config`` applied: its values first, the command line on top."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    return parser.parse_args(argv)  # the first pass set the sub-command's defaults from the file


# -- --runtime-env -------------------------------------------------------------------------------

def load_runtime_env(path: str | Path) -> dict[str, Any]:
    """A validated Ray runtime env from a JSON or YAML file (``ray job submit --runtime-env``'s format).

    Ray's own ``RuntimeEnv`` accepts unknown fields (they may be plugins) and echoes values in its
    errors, so unknown fields and ``env_vars`` (which often carry tokens) are checked here first,
    naming keys but never values; ``RuntimeEnv`` then checks the remaining fields' types.
    """
    from ray.runtime_env import RuntimeEnv  # imports ray: only when the flag is used

    label = f"runtime env {str(path)!r}"
    env = read_mapping(path, "runtime env")
    known = sorted(f for f in RuntimeEnv.known_fields if not f.startswith("_"))
    unknown = [k for k in env if k not in RuntimeEnv.known_fields]
    if unknown:
        raise ConfigError(f"{label}: unknown field {unknown[0]!r}; allowed: {', '.join(known)}")
    env_vars = env.get("env_vars")
    if env_vars is not None:
        if not isinstance(env_vars, Mapping):
            raise ConfigError(f"{label}: env_vars must map names to strings, not a {type(env_vars).__name__}")
        for name, value in env_vars.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ConfigError(f"{label}: env_vars[{name!r}] must be a string name with a string value "
                                  f"(quote numbers and booleans), not {type(value).__name__}")
    try:
        RuntimeEnv(**env)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {_one_line(str(exc).splitlines()[0] if str(exc) else exc)}") from None
    return env


def runtime_env_argument(text: str) -> dict[str, Any]:
    """argparse ``type`` of ``--runtime-env``: the loaded env, or argparse's one-line error."""
    try:
        return load_runtime_env(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@contextlib.contextmanager
def driver_runtime_env(runtime_env: dict[str, Any] | None) -> Iterator[None]:
    """Inside the block, ``connect_ray`` starts or joins Ray with ``runtime_env``.

    Ray's connection belongs to the process, and a sweep connects deep inside ``run_sweep``; the CLI
    sets the env around the whole command instead of threading it through every call.
    """
    token = _RUNTIME_ENV.set(runtime_env)
    try:
        yield
    finally:
        _RUNTIME_ENV.reset(token)


def current_runtime_env() -> dict[str, Any] | None:
    """The runtime env of the enclosing :func:`driver_runtime_env` block, if any."""
    return _RUNTIME_ENV.get()
