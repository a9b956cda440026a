"""The configuration: one JSON schema (``config.schema.yaml`` beside this module) holds every default.

The Snakefile validates the whole config against the schema (which fills the defaults in); the package reads
the same file whenever it is called directly, so no default is written anywhere else. Two things are built on it:

* :func:`validate` / :func:`fill_defaults`: a whole config, or one value, validated with its defaults filled in
  (the same default-filling recipe as ``snakemake.utils.validate``, so ``if``/``then`` defaults that depend on
  another key, such as the render kind, work in both).
* :func:`job`: the decorator of every job entry point. It declares the settings the job reads: ``reads`` (those
  that change its results; the workflow passes them as rule ``params``, so changing one reruns the job) and
  ``tunes`` (those that change only its speed, memory or device; passed as a rule resource, so changing one
  reruns nothing). The job receives ``settings = {section: {key: value}}`` holding exactly the declared keys,
  each validated against the schema, missing ones filled with the schema's default; a key the schema does not
  know is an error naming it.

Sections are the schema's top-level sections (``mel``, ``probe``, ...) and ``dataset``, one entry of
``datasets`` (its keys: ``format``, ``render``, ``tasks``, ...). This module imports only the standard library,
PyYAML and jsonschema (both Snakemake dependencies): the workflow imports it while parsing the Snakefile.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from deepfeat.runtime import UserError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
DATASET = "dataset"  # the pseudo-section of one ``datasets.<name>`` entry


class ConfigError(UserError, ValueError):
    """A config value is unknown, of the wrong type or out of range; the message names the key."""


@lru_cache(maxsize=1)
def schema() -> dict:
    """The parsed JSON schema (read once; treat as read-only)."""
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def _validator_class():
    from jsonschema import Draft202012Validator, validators

    props = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sch):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from props(validator, properties, instance, sch)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})


def _path(prefix: str, error) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in error.absolute_path]
    return ".".join(parts) or "config"


def fill_defaults(value, sub: dict, where: str):
    """``value`` validated against the (sub)schema ``sub`` with every default filled in (a new object).

    ``sub`` may use ``$ref``s into the schema's ``$defs``. Raises :class:`ConfigError` naming ``where`` and the
    offending key.
    """
    from jsonschema import exceptions

    value = copy.deepcopy(value)
    errors = sorted(_validator(sub).iter_errors(value), key=lambda e: len(list(e.absolute_path)))
    if errors:
        e = exceptions.best_match(errors)
        raise ConfigError(f"{_path(where, e)}: {e.message}")
    return value


_VALIDATORS: dict[int, object] = {}


def _validator(sub: dict):
    """A (cached) default-filling validator of the subschema ``sub`` (a node of :func:`schema`, so it lives as long
    as the cache), with the schema's ``$defs`` available to its ``$ref``s."""
    v = _VALIDATORS.get(id(sub))
    if v is None or v[0] is not sub:
        v = _VALIDATORS[id(sub)] = (sub, _validator_class()({"$defs": schema().get("$defs", {}), **sub}))
    return v[1]


def validate(config: Mapping) -> dict:
    """The whole config validated, with every default filled in (a new dict); :class:`ConfigError` names the key."""
    return fill_defaults(dict(config), schema(), "")


def section_schema(section: str) -> dict:
    """The schema of one section: a top-level one (``mel``, ``probe``, ...) or ``dataset``."""
    root = schema()
    if section == DATASET:
        return root["$defs"]["dataset"]
    props = root["properties"]
    if section not in props or section == "datasets":
        known = sorted([k for k in props if k != "datasets"] + [DATASET])
        raise ConfigError(f"unknown config section '{section}'; known: {known}")
    return props[section]


def section_keys(section: str) -> list[str]:
    """Every key the schema allows in a section."""
    return list(section_schema(section).get("properties", {}))


def _resolve(sub: dict) -> dict:
    """Follow a local ``$ref`` to the schema it names (one level: the schema's refs are all into ``$defs``)."""
    ref = sub.get("$ref")
    if not ref:
        return sub
    node = schema()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return {**node, **{k: v for k, v in sub.items() if k != "$ref"}}


def default(section: str, key: str):
    """The schema's default of ``section.key`` (ConfigError when the key has none)."""
    sub = _key_schema(section, key)
    if "default" not in sub:
        raise ConfigError(f"{section}.{key} has no default; it must be given")
    return fill_defaults(sub["default"], sub, f"{section}.{key}")


def defaults(section: str) -> dict:
    """Every default of a section (keys without a default are left out)."""
    out = {}
    for key in section_keys(section):
        if "default" in _key_schema(section, key):
            out[key] = default(section, key)
    return out


@functools.cache
def _key_schema(section: str, key: str) -> dict:
    props = section_schema(section).get("properties", {})
    if key not in props:
        raise ConfigError(f"{section}.{key}: unknown key; known: {sorted(props)}")
    return _resolve(props[key])


def settings(section: str, given: Mapping | None, keys) -> dict:
    """``section.<key>`` for each of ``keys``: the given value (validated against the schema) or the schema's
    default. A given key that the schema does not know is an error naming it; known keys outside ``keys`` are
    left out (this caller does not read them)."""
    given = dict(given or {})
    known = set(section_keys(section))
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(
            f"{section}.{unknown[0]}: unknown key"
            + ("s " + str(unknown) if len(unknown) > 1 else "")
            + f"; known: {sorted(known)}"
        )
    out = {}
    for key in keys:
        sub = _key_schema(section, key)
        if key in given:
            out[key] = fill_defaults(given[key], sub, f"{section}.{key}")
        elif "default" in sub:
            out[key] = fill_defaults(sub["default"], sub, f"{section}.{key}")
        else:
            raise ConfigError(f"{section}.{key}: required (it has no default)")
    return out


# ----------------------------------------------------------------------------------------------------------
# Job entry points
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """What a job reads from the config: ``reads`` (results depend on them) and ``tunes`` (speed/memory only)."""

    name: str
    reads: dict = field(default_factory=dict)
    tunes: dict = field(default_factory=dict)

    def keys(self) -> dict[str, list[str]]:
        """{section: keys} of reads and tunes together, in declaration order."""
        out: dict[str, list[str]] = {}
        for part in (self.reads, self.tunes):
            for sec, ks in part.items():
                out.setdefault(sec, [])
                out[sec] += [k for k in ks if k not in out[sec]]
        return out

    def resolve(self, given: Mapping | None) -> dict[str, dict]:
        """The settings this job receives: every declared key, validated or defaulted (see :func:`settings`)."""
        given = dict(given or {})
        wanted = self.keys()
        extra = sorted(set(given) - set(wanted))
        for sec in extra:
            section_schema(sec)  # an unknown section name is an error; a known one this job does not read is ignored
        return {sec: settings(sec, given.get(sec), ks) for sec, ks in wanted.items()}


def _norm(decl: Mapping | None) -> dict:
    out = {}
    for sec, keys in (decl or {}).items():
        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        for k in keys:
            _key_schema(sec, k)  # a declaration naming a key the schema lacks fails at import
        out[sec] = keys
    return out


def job(reads: Mapping | None = None, tunes: Mapping | None = None) -> Callable:
    """Decorate a job entry point: ``@job(reads={"probe": ("epochs", ...)}, tunes={"probe": ("device",)})``.

    The function must take a keyword argument ``settings``; it is called with the resolved settings (see
    :class:`JobSpec`). The declaration is also read statically (without importing) by
    :func:`deepfeat.workflow.job_spec`, so keep its arguments literal.
    """
    reads, tunes = _norm(reads), _norm(tunes)  # a key the schema lacks is an error here, at import

    def deco(fn: Callable) -> Callable:
        spec = JobSpec(fn.__name__, reads, tunes)

        @functools.wraps(fn)
        def wrapper(*args, settings: Mapping | None = None, **kwargs):
            return fn(*args, settings=spec.resolve(settings), **kwargs)

        wrapper.job = spec
        return wrapper

    return deco


__all__ = [
    "ConfigError",
    "JobSpec",
    "SCHEMA_PATH",
    "default",
    "defaults",
    "fill_defaults",
    "job",
    "schema",
    "section_keys",
    "section_schema",
    "settings",
    "validate",
]
