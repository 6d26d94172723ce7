"""One check of a whole config (and the command's paths) before a command does any work.

Every command (`smd_jax.train`, `evaluate`, `predict`, `experiments`) calls
`validate_config` first, before data are generated or anything is written. It walks
every field of the config, applies the field's rule from `smd_jax.config_rules`
(`FIELDS`, keyed by dotted path; `*` stands for any key of a mapping such as
`model.heads` or `tasks`), then the rules that tie fields together (`CHECKS`:
resolution vs the encoder's stride, batch sizes vs devices, heads vs tasks, ...),
and collects *all* problems. If there is one, it raises a single `UserError` whose
one line gives the first problem (what is wrong and what to do) and names the
fields of the others.

The rule types here compare values with the project's registries by reference
(`Name(registry.ENCODERS, ...)`), so a name added to a registry is valid at once,
and suggest the nearest known names (`difflib.get_close_matches`) for a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from smd_jax.errors import UserError

COMMANDS = ("train", "evaluate", "predict", "experiments")
# Commands that train (and so write a workdir of their own and load `init_from`).
TRAINING = ("train", "experiments")


@dataclasses.dataclass(frozen=True)
class Context:
  """What the rules may look at besides the config."""

  command: str = "train"
  workdir: str | None = None
  num_devices: int | None = None  # None: batch sizes are not checked against devices
  eval_batch_size: int | None = None  # a command's --batch_size, replacing the config's


@dataclasses.dataclass(frozen=True)
class Problem:
  field: str  # dotted config path ("" for a command's flag, e.g. --workdir)
  message: str  # one sentence: what is wrong and what to do


def _show(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def suggest(value: Any, known: Iterable[str], cutoff: float = 0.5) -> str:
  """' (did you mean 'x'?)' for the nearest known names, else ''. The default cutoff
  still pairs two-letter names one letter apart ('l2' -> 'l1')."""
  close = difflib.get_close_matches(str(value), [str(k) for k in known], n=2, cutoff=cutoff)
  return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


class Rule:
  """A field's rule: `problem(value, field, ctx)` -> a message, or None when the value is fine.

  `optional`: None is allowed (a placeholder that is not set). `required`: a config
  without the field is a problem (most fields have defaults in the code that reads them).
  `commands`: where the rule applies (e.g. `init_from` only where training starts).
  """

  def __init__(self, *, optional: bool = False, required: bool = False,
               commands: Sequence[str] = COMMANDS):
    self.optional, self.required, self.commands = optional, required, tuple(commands)

  def problem(self, value: Any, field: str, ctx: Context) -> str | None:
    if value is None:
      return None if self.optional else (f"config.{field} is not set; set it "
                                         f"(--config.{field}=...) to {self.expects()}.")
    return self.check(value, field, ctx)

  def expects(self) -> str:
    raise NotImplementedError

  def check(self, value: Any, field: str, ctx: Context) -> str | None:
    raise NotImplementedError

  def bad(self, value: Any, field: str, what: str) -> str:
    return f"config.{field}={_show(value)} {what}; set it to {self.expects()}."


class Name(Rule):
  """A name in `registry` (a dict or tuple, held by reference, so new entries count)."""

  def __init__(self, registry: Mapping[str, Any] | Sequence[str], what: str, **kwargs):
    super().__init__(**kwargs)
    self.registry, self.what = registry, what

  def expects(self) -> str:
    return f"one of {', '.join(sorted(self.registry))}"

  def check(self, value, field, ctx):
    if isinstance(value, str) and value in self.registry:
      return None
    if not isinstance(value, str):
      return self.bad(value, field, f"is not a name of a {self.what}")
    return (f"config.{field}={value!r} is not a known {self.what}{suggest(value, self.registry)};"
            f" set it to {self.expects()}.")


class Number(Rule):
  """An int (`integer=True`) or a float in [lo, hi] (bounds open where `lo_open`/`hi_open`),
  or one of the `special` values (e.g. -1 for 'never' / 'at the end')."""

  def __init__(self, lo: float | None = None, hi: float | None = None, *,
               integer: bool = False, lo_open: bool = False, hi_open: bool = False,
               special: Sequence[float] = (), meaning: str = "", **kwargs):
    super().__init__(**kwargs)
    self.lo, self.hi, self.integer = lo, hi, integer
    self.lo_open, self.hi_open, self.special, self.meaning = lo_open, hi_open, special, meaning

  def expects(self) -> str:
    kind = "an integer" if self.integer else "a number"
    bounds = []
    if self.lo is not None:
      bounds.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
    if self.hi is not None:
      bounds.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
    text = f"{kind} {' and '.join(bounds)}".strip()
    if self.special:
      text += f" (or {', '.join(f'{s:g}' for s in self.special)}{self.meaning})"
    return text

  def check(self, value, field, ctx):
    if not (_is_int(value) if self.integer else _is_number(value)):
      return self.bad(value, field, f"is not {'an integer' if self.integer else 'a number'}")
    if value in self.special:
      return None
    if not math.isfinite(value):
      return self.bad(value, field, "is not finite")
    too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
    too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
    if too_low or too_high:
      return self.bad(value, field, "is out of range")
    return None


def Int(lo=None, hi=None, **kwargs) -> Number:  # pylint: disable=invalid-name
  return Number(lo, hi, integer=True, **kwargs)


def Float(lo=None, hi=None, **kwargs) -> Number:  # pylint: disable=invalid-name
  return Number(lo, hi, **kwargs)


class Bool(Rule):
  def expects(self) -> str:
    return "True or False"

  def check(self, value, field, ctx):
    return None if isinstance(value, bool) else self.bad(value, field, "is not a boolean")


class Text(Rule):
  """A string that `accept` takes (`what` describes it in the message), e.g. a metric name."""

  def __init__(self, accept: Callable[[str], bool] = lambda s: True, what: str = "a string",
               **kwargs):
    super().__init__(**kwargs)
    self.accept, self.what = accept, what

  def expects(self) -> str:
    return self.what

  def check(self, value, field, ctx):
    if isinstance(value, str) and self.accept(value):
      return None
    return self.bad(value, field, f"is not {self.what}")


class Ints(Rule):
  """A positive int or a non-empty sequence of them (e.g. decoder widths)."""

  def expects(self) -> str:
    return "a positive integer or a list of them"

  def check(self, value, field, ctx):
    items = [value] if not isinstance(value, (list, tuple)) else list(value)
    if items and all(_is_int(v) and v > 0 for v in items):
      return None
    return self.bad(value, field, "is not a positive integer or a list of them")


class Section(Rule):
  """A mapping of fields (`nonempty`: at least one entry, e.g. `model.heads`)."""

  def __init__(self, *, nonempty: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.nonempty = nonempty

  def expects(self) -> str:
    return "a mapping of fields" + (" with at least one entry" if self.nonempty else "")

  def check(self, value, field, ctx):
    if not isinstance(value, Mapping):
      return self.bad(value, field, "is not a mapping of fields")
    if self.nonempty and not value:
      return self.bad(value, field, "is empty")
    return None


def path_kind_problem(path: str, want_dir: bool = True) -> str | None:
  """Why `path` cannot be (or become) a directory: it is a file, or lies under a file."""
  if os.path.exists(path):
    if want_dir and not os.path.isdir(path):
      return "is a file, not a directory"
    return None
  parent = os.path.dirname(os.path.abspath(path))
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    return f"lies under {parent}, which is a file"
  return None


class Directory(Rule):
  """A directory path: where one exists it must be a directory; `must_exist` for inputs."""

  def __init__(self, what: str, *, must_exist: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.what, self.must_exist = what, must_exist

  def expects(self) -> str:
    return f"the {self.what} directory"

  def check(self, value, field, ctx):
    if not isinstance(value, str) or not value.strip():
      return self.bad(value, field, "is not a path")
    if self.must_exist and not os.path.exists(value):
      return self.bad(value, field, "does not exist")
    why = path_kind_problem(os.path.expanduser(value))
    return self.bad(value, field, why) if why else None


class Weights(Rule):
  """`init_from`: '' / None (random init), a keyword (`keywords`, e.g. 'imagenet'), a Hub id
  org/name[@revision] (`is_hub_id`), or an existing directory that `directory_problem`
  (-> why not, or None) accepts."""

  def __init__(self, keywords: Sequence[str], is_hub_id: Callable[[str], bool],
               directory_problem: Callable[[str], str | None] = lambda d: None, **kwargs):
    super().__init__(optional=True, **kwargs)
    self.keywords, self.is_hub_id = keywords, is_hub_id
    self.directory_problem = directory_problem

  def expects(self) -> str:
    return (f"{' or '.join(repr(k) for k in self.keywords)}, a Hugging Face Hub id "
            "org/name[@revision], a directory written by `python -m smd_jax.convert`, or '' "
            "(random init)")

  def check(self, value, field, ctx):
    if not isinstance(value, str):
      return self.bad(value, field, "is not a string")
    value = value.strip()
    if not value or value in self.keywords:
      return None
    path = os.path.expanduser(value)
    if os.path.isdir(path):
      why = self.directory_problem(path)
      return self.bad(value, field, why) if why else None
    if os.path.exists(path):
      return self.bad(value, field, "is a file, not a directory of converted weights")
    if self.is_hub_id(value):
      return None
    return self.bad(value, field, f"is no directory, no Hub id{suggest(value, self.keywords)}")


@dataclasses.dataclass(frozen=True)
class Check:
  """A rule over several fields; skipped while any field in `needs` has a problem."""

  needs: tuple[str, ...]  # dotted paths (or their prefixes) the check reads
  fn: Callable[[Mapping[str, Any], Context], Iterable[Problem]]
  commands: tuple[str, ...] = COMMANDS


def as_dict(config: Any) -> dict[str, Any]:
  """A ConfigDict (references resolved) or a mapping as nested plain dicts."""
  if hasattr(config, "to_dict"):
    return config.to_dict()
  return {k: as_dict(v) if isinstance(v, Mapping) else v for k, v in dict(config).items()}


def _matches(pattern: str, path: str) -> bool:
  a, b = pattern.split("."), path.split(".")
  return len(a) == len(b) and all(p in ("*", q) for p, q in zip(a, b))


def rule_for(path: str, fields: Mapping[str, Rule]) -> Rule | None:
  """The rule of a dotted path: its own entry, else the entry with the fewest '*'."""
  if path in fields:
    return fields[path]
  found = [p for p in fields if "*" in p and _matches(p, path)]
  return fields[min(found, key=lambda p: p.count("*"))] if found else None


def _siblings(parent: str, fields: Mapping[str, Rule]) -> list[str]:
  depth = parent.count(".") + 1 if parent else 0
  out = []
  for p in fields:
    parts = p.split(".")
    if len(parts) == depth + 1 and (not parent or _matches(".".join(parts[:-1]), parent)):
      out.append(parts[-1])
  return [s for s in out if s != "*"]


def _walk(node: Mapping[str, Any], prefix: str, fields: Mapping[str, Rule], ctx: Context,
          problems: list[Problem]) -> None:
  for key, value in node.items():
    path = f"{prefix}{key}"
    rule = rule_for(path, fields)
    if rule is None:
      # Only names close to a known field are reported (a typo in a config file or
      # config.json); other extra fields are left to their readers.
      hint = suggest(key, _siblings(prefix[:-1], fields), cutoff=0.8)
      if hint:
        problems.append(Problem(path, f"config.{path} is not a config field{hint}; rename it."))
      elif isinstance(value, Mapping):
        _walk(value, path + ".", fields, ctx, problems)
      continue
    if ctx.command not in rule.commands:
      continue
    message = rule.problem(value, path, ctx)
    if message:
      problems.append(Problem(path, message))
    elif isinstance(value, Mapping):
      _walk(value, path + ".", fields, ctx, problems)


def _missing(config: Mapping[str, Any], fields: Mapping[str, Rule], ctx: Context
             ) -> list[Problem]:
  out = []
  for path, rule in fields.items():
    if "*" in path or not rule.required or ctx.command not in rule.commands:
      continue
    node: Any = config
    for part in path.split("."):
      if not isinstance(node, Mapping) or part not in node:
        out.append(Problem(path, f"config.{path} is missing; add it (configs/base.py has "
                                 "every field with its default)."))
        break
      node = node[part]
  return out


def problems_of(config: Any, ctx: Context = Context(), fields: Mapping[str, Rule] | None = None,
                checks: Sequence[Check] | None = None) -> list[Problem]:
  """Every problem of `config` for `ctx.command`, field rules first, then the checks."""
  if fields is None or checks is None:
    from smd_jax import config_rules  # pylint: disable=g-import-not-at-top
    fields = config_rules.FIELDS if fields is None else fields
    checks = config_rules.CHECKS if checks is None else checks
  tree = as_dict(config)
  problems = _missing(tree, fields, ctx)
  _walk(tree, "", fields, ctx, problems)
  bad = {p.field for p in problems}
  for check in checks:
    # A check reads its fields as valid: it waits while one of them (or a section
    # holding it) has a problem. Problems of fields deeper down are its own to skip.
    if ctx.command not in check.commands or any(
        b == n or n.startswith(b + ".") for b in bad for n in check.needs):
      continue
    problems.extend(p for p in check.fn(tree, ctx) if p.field not in bad)
  return problems


def one_line(problems: Sequence[Problem], source: str = "") -> str:
  """The first problem, then how many others and in which fields, as one line."""
  first = problems[0].message
  if source:
    first = f"{first} [{source}]"
  if len(problems) == 1:
    return first
  others = sorted({p.field or "flags" for p in problems[1:]})
  return (f"{first} And {len(problems) - 1} more problem(s), in: "
          f"{', '.join(others)}.")


def validate_config(config: Any, *, command: str, workdir: str | None = None,
                    num_devices: int | None = None, eval_batch_size: int | None = None,
                    source: str = "") -> None:
  """Raises one `UserError` naming every problem of `config` for `command`; returns if none.

  Args:
    config: a ConfigDict or nested mapping (e.g. a workdir's config.json).
    command: one of `COMMANDS`; some rules apply only where training starts.
    workdir: the command's --workdir: checked to be (or become) a directory; for
      evaluate and predict it must exist.
    num_devices: the devices the batches are split over (None: not checked).
    eval_batch_size: a command's --batch_size overriding `config.eval_batch_size`.
    source: where the config came from, for the message (e.g. `<workdir>/config.json`).
  """
  if command not in COMMANDS:
    raise ValueError(f"Unknown command {command!r}; known: {COMMANDS}")
  ctx = Context(command=command, workdir=workdir, num_devices=num_devices,
                eval_batch_size=eval_batch_size)
  problems = workdir_problems(workdir, command)
  if isinstance(config, Mapping) or hasattr(config, "to_dict"):
    problems += problems_of(config, ctx)
  else:
    problems.append(Problem("", f"The config is a {type(config).__name__}, not a mapping of "
                                "fields; pass a config file with get_config()."))
  if problems:
    raise UserError(one_line(problems, source))


def workdir_problems(workdir: str | None, command: str) -> list[Problem]:
  """--workdir: a directory, or for training a path where one can be made."""
  if workdir is None:
    return []
  if not isinstance(workdir, str) or not workdir.strip():
    return [Problem("", "--workdir is empty; give the run's directory.")]
  if command not in TRAINING and not os.path.isdir(workdir):
    what = "is a file" if os.path.exists(workdir) else "does not exist"
    return [Problem("", f"--workdir {workdir} {what}; give the directory of a run that "
                        "smd_jax.train wrote.")]
  why = path_kind_problem(workdir)
  if why:
    return [Problem("", f"--workdir {workdir} {why}; give a directory (a new path is made).")]
  return []
