"""Dockerfile instructions as `changes` to an image's config (`docker import --change`),
read as dockerd reads them (`builder/dockerfile.BuildFromConfig` over BuildKit's parser).

The changes are joined with newlines and parsed as a Dockerfile: `#` comments, `\\`
line continuations, leading `--flag=value` words, instruction names in any case.
Only the instructions that change a config are allowed, as in dockerd: CMD,
ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME and
WORKDIR (`run is not a valid change command`). CMD, ENTRYPOINT and HEALTHCHECK take the
JSON (exec) form or the shell form (`/bin/sh -c …`); ENV, LABEL, EXPOSE, USER, WORKDIR,
VOLUME and STOPSIGNAL expand `$VAR` and `${VAR…}` from the ENV set before them, and
drop quotes as a shell would. Every refusal is a BadRequestError with BuildKit's words.
"""

from __future__ import annotations

import json
import posixpath
import re
import signal
from collections.abc import Callable
from typing import Any

from ferryd.errors import BadRequestError
from ferryd.untrusted import loads

_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_CONTINUATION = re.compile(r"\\[ \t]*$")
_DEFAULT_SHELL = ["/bin/sh", "-c"]
_MIN_DURATION_NS = 1_000_000  # 1 ms: container.MinimumDuration


def empty_config() -> dict[str, Any]:
    """A `container.Config{}` as dockerd writes it into an image (omitempty fields left
    out, the others at their zero values)."""
    return {
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": None,
        "Cmd": None,
        "Image": "",
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "Labels": None,
    }


def apply_changes(changes: list[str], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """`config` (default: an empty one) with `changes` applied, in order."""
    result = dict(empty_config() if config is None else config)
    if not changes:
        return result
    lines = _logical_lines("\n".join(changes))
    if not lines:
        raise BadRequestError("file with no instructions")
    state = _State(result)
    for line in lines:
        name, flags, rest = _split_command(line)
        apply = _DISPATCH.get(name.lower())
        if apply is None:
            raise BadRequestError(f"{name.lower()} is not a valid change command")
        apply(state, _Instruction(name.upper(), flags, rest, line))
    return result


# -- the Dockerfile's lines ---------------------------------------------------------------


def _logical_lines(text: str) -> list[str]:
    """Comments dropped, continuations joined, blank lines skipped (BuildKit's Parse)."""
    lines: list[str] = []
    physical = text.split("\n")
    index = 0
    while index < len(physical):
        line = physical[index].lstrip().rstrip("\r")
        index += 1
        if not line or line.startswith("#"):
            continue
        buffer = ""
        while True:
            continued = _CONTINUATION.search(line) is not None
            buffer += _CONTINUATION.sub("", line) if continued else line
            if not continued or index >= len(physical):
                break
            line = physical[index].lstrip().rstrip("\r")
            index += 1
            while (not line or line.startswith("#")) and index < len(physical):
                line = physical[index].lstrip().rstrip("\r")
                index += 1
            if not line or line.startswith("#"):
                break
        if buffer.strip():
            lines.append(buffer)
    return lines


def _split_command(line: str) -> tuple[str, list[str], str]:
    """The instruction's name, its leading `--flags` and the rest (BuildKit's
    splitCommand and extractBuilderFlags)."""
    parts = _WHITESPACE.split(line.strip(), maxsplit=1)
    name = parts[0]
    if len(parts) < 2:
        return name, [], ""
    rest = parts[1]
    flags: list[str] = []
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        if word == "--":
            rest = after.lstrip()
            break
        flags.append(_unquote_flag(word))
        rest = after.lstrip()
    return name, flags, rest.strip()


def _unquote_flag(word: str) -> str:
    out, quote = "", ""
    for char in word:
        if quote:
            if char == quote:
                quote = ""
            else:
                out += char
        elif char in "'\"":
            quote = char
        else:
            out += char
    return out


class _Instruction:
    def __init__(self, name: str, flags: list[str], rest: str, original: str) -> None:
        self.name = name
        self.flags = flags
        self.rest = rest
        self.original = original

    def flag_values(self, allowed: tuple[str, ...]) -> dict[str, str]:
        values: dict[str, str] = {}
        for flag in self.flags:
            key, equals, value = flag.removeprefix("--").partition("=")
            if key not in allowed:
                raise BadRequestError(f"unknown flag: {key}")
            if key in values:
                raise BadRequestError(f"duplicate flag specified: {key}")
            if not equals:
                raise BadRequestError(f"missing a value on flag: {key}")
            values[key] = value
        return values

    def no_flags(self) -> None:
        self.flag_values(())


class _State:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.cmd_set = False

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            key, _, value = item.partition("=")
            found[key] = value
        return found

    def word(self, text: str) -> str:
        return _Shell(self.env()).word(text)

    def words(self, text: str) -> list[str]:
        return _Shell(self.env()).words(text)


# -- argument forms -------------------------------------------------------------------------


def _parse_words(rest: str) -> list[str]:
    """Space-separated words, quotes kept (BuildKit's parseWords): expansion drops them."""
    words: list[str] = []
    current, quote, blank_ok, in_word = "", "", False, False
    index = 0
    while index < len(rest):
        char = rest[index]
        if not in_word:
            if char.isspace():
                index += 1
                continue
            in_word = True
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote != "'" and index + 1 < len(rest):
                current += char
                index += 1
                char = rest[index]
            current += char
        elif char.isspace():
            if blank_ok or current:
                words.append(current)
            current, blank_ok, in_word = "", False, False
        else:
            if char in "'\"":
                quote, blank_ok = char, True
            elif char == "\\" and index + 1 < len(rest):
                current += char
                index += 1
                char = rest[index]
            current += char
        index += 1
    if in_word and (blank_ok or current):
        words.append(current)
    return words


def _name_values(instruction: _Instruction) -> list[tuple[str, str]]:
    """`KEY value` (the old form) or `KEY=value …` (BuildKit's parseNameVal)."""
    words = _parse_words(instruction.rest)
    if not words:
        raise BadRequestError(f"{instruction.name} requires at least one argument")
    if "=" not in words[0]:
        parts = _WHITESPACE.split(instruction.rest, maxsplit=1)
        if len(parts) < 2:
            raise BadRequestError(f"{instruction.name} must have two arguments")
        return [(parts[0], parts[1])]
    pairs = []
    for word in words:
        if "=" not in word:
            raise BadRequestError(
                f"Syntax error - can't find = in {json.dumps(word)}. Must be of the form: "
                "name=value"
            )
        key, _, value = word.partition("=")
        pairs.append((key, value))
    return pairs


def _json_array(rest: str) -> list[str] | None:
    """The exec form `["a", "b"]`, or None when `rest` is not a JSON array."""
    text = rest.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = loads(text)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise BadRequestError(
            "when using JSON array syntax, arrays must be comprised of strings only"
        )
    return value


def _command_line(
    state: _State, instruction: _Instruction, *, empty_as_nil: bool
) -> list[str] | None:
    """CMD and ENTRYPOINT: the exec form as given, the shell form after the shell."""
    exec_form = _json_array(instruction.rest) if instruction.rest else None
    if exec_form is not None:
        return None if empty_as_nil and not exec_form else exec_form
    if not instruction.rest:
        if empty_as_nil:
            return None
        return [*(state.config.get("Shell") or _DEFAULT_SHELL)]
    return [*(state.config.get("Shell") or _DEFAULT_SHELL), instruction.rest]


# -- the instructions ---------------------------------------------------------------------


def _env(state: _State, instruction: _Instruction) -> None:
    instruction.no_flags()
    for raw_key, raw_value in _name_values(instruction):
        if not raw_key:
            raise BadRequestError("ENV names can not be blank")
        key, value = state.word(raw_key), state.word(raw_value)
        env = list(state.config.get("Env") or [])
        for index, item in enumerate(env):
            if item.partition("=")[0] == key:
                env[index] = f"{key}={value}"
                break
        else:
            env.append(f"{key}={value}")
        state.config["Env"] = env


def _label(state: _State, instruction: _Instruction) -> None:
    instruction.no_flags()
    labels = dict(state.config.get("Labels") or {})
    for raw_key, raw_value in _name_values(instruction):
        if not raw_key:
            raise BadRequestError("LABEL names can not be blank")
        labels[state.word(raw_key)] = state.word(raw_value)
    state.config["Labels"] = labels


def _cmd(state: _State, instruction: _Instruction) -> None:
    instruction.no_flags()
    state.config["Cmd"] = _command_line(state, instruction, empty_as_nil=False)
    if instruction.rest:
        state.cmd_set = True


def _entrypoint(state: _State, instruction: _Instruction) -> None:
    instruction.no_flags()
    state.config["Entrypoint"] = _command_line(state, instruction, empty_as_nil=True)
    if not state.cmd_set:
        state.config["Cmd"] = None


def _one_argument(instruction: _Instruction) -> str:
    instruction.no_flags()
    if not instruction.rest:
        raise BadRequestError(f"{instruction.name} requires exactly one argument")
    return instruction.rest


def _user(state: _State, instruction: _Instruction) -> None:
    state.config["User"] = state.word(_one_argument(instruction))


def _workdir(state: _State, instruction: _Instruction) -> None:
    requested = state.word(_one_argument(instruction))
    if not requested:
        raise BadRequestError("cannot normalize nothing")
    current = state.config.get("WorkingDir") or ""
    if requested.startswith("/"):
        state.config["WorkingDir"] = posixpath.normpath(requested).replace("//", "/")
    else:
        state.config["WorkingDir"] = posixpath.normpath(posixpath.join("/", current, requested))


def _volume(state: _State, instruction: _Instruction) -> None:
    instruction.no_flags()
    listed = _json_array(instruction.rest)
    if listed is None:
        listed = [word for word in _WHITESPACE.split(instruction.rest) if word]
    if not listed:
        raise BadRequestError("VOLUME requires at least one argument")
    volumes = dict(state.config.get("Volumes") or {})
    for raw in listed:
        volume = state.word(raw.strip()).strip()
        if not volume:
            raise BadRequestError("VOLUME specified can not be an empty string")
        volumes[volume] = {}
    state.config["Volumes"] = volumes


def _stopsignal(state: _State, instruction: _Instruction) -> None:
    raw = state.word(_one_argument(instruction))
    if raw.isdigit():
        if int(raw) == 0:
            raise BadRequestError(f"Invalid signal: {raw}")
    else:
        name = raw.upper().removeprefix("SIG")
        if not hasattr(signal.Signals, "SIG" + name) or name in ("IGN", "DFL"):
            raise BadRequestError(f"Invalid signal: {raw}")
    state.config["StopSignal"] = raw


def _expose(state: _State, instruction: _Instruction) -> None:
    instruction.no_flags()
    raw = [word for word in _WHITESPACE.split(instruction.rest) if word]
    if not raw:
        raise BadRequestError("EXPOSE requires at least one argument")
    ports = dict(state.config.get("ExposedPorts") or {})
    for word in sorted(raw):
        for spec in state.words(word):
            for port in _port_spec(spec):
                ports[port] = {}
    state.config["ExposedPorts"] = ports


def _port_spec(spec: str) -> list[str]:
    """`80`, `80/udp`, `8000-8010/tcp` (and `ip:host:container` forms, of which only the
    container port counts): the `port/proto` keys of ExposedPorts."""
    raw, _, proto = spec.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise BadRequestError(f"invalid proto: {proto}")
    container = raw.rsplit(":", 1)[-1] if raw.count(":") <= 2 or raw.startswith("[") else raw
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", container)
    if match is None:
        raise BadRequestError(f"invalid containerPort: {container}")
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else start
    if not 0 < start <= 65535 or not 0 < end <= 65535 or end < start:
        raise BadRequestError(f"invalid containerPort: {container}")
    return [f"{port}/{proto}" for port in range(start, end + 1)]


def _onbuild(state: _State, instruction: _Instruction) -> None:
    instruction.no_flags()
    if not instruction.rest:
        raise BadRequestError("ONBUILD requires at least one argument")
    trigger = _WHITESPACE.split(instruction.rest.strip(), maxsplit=1)[0].upper()
    if trigger == "ONBUILD":
        raise BadRequestError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise BadRequestError(f"{trigger} isn't allowed as an ONBUILD trigger")
    expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", instruction.original)
    state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), expression]


_HEALTH_FLAGS = ("interval", "timeout", "start-period", "start-interval", "retries")
_HEALTH_FIELDS = {
    "interval": "Interval",
    "timeout": "Timeout",
    "start-period": "StartPeriod",
    "start-interval": "StartInterval",
}


def _healthcheck(state: _State, instruction: _Instruction) -> None:
    if not instruction.rest:
        raise BadRequestError("HEALTHCHECK requires at least one argument")
    kind, _, rest = instruction.rest.partition(" ")
    kind, rest = kind.upper(), rest.strip()
    if kind == "NONE":
        instruction.no_flags()
        if rest:
            raise BadRequestError("HEALTHCHECK NONE takes no arguments")
        state.config["Healthcheck"] = {"Test": ["NONE"]}
        return
    flags = instruction.flag_values(_HEALTH_FLAGS)
    if kind != "CMD":
        raise BadRequestError(f"Unknown type {json.dumps(kind)} in HEALTHCHECK (try CMD)")
    exec_form = _json_array(rest) if rest else None
    if exec_form is not None:
        test = ["CMD", *exec_form]
    elif rest:
        test = ["CMD-SHELL", rest]
    else:
        test = []
    if len(test) < 2:
        raise BadRequestError("Missing command after HEALTHCHECK CMD")
    health: dict[str, Any] = {"Test": test}
    for flag, field in _HEALTH_FIELDS.items():
        nanoseconds = _duration(flags.get(flag, ""), flag)
        if nanoseconds:
            health[field] = nanoseconds
    retries = flags.get("retries", "")
    if retries:
        if not re.fullmatch(r"[+-]?\d+", retries):
            raise BadRequestError(f'strconv.ParseInt: parsing "{retries}": invalid syntax')
        if int(retries) < 0:
            raise BadRequestError(f"--retries cannot be negative ({int(retries)})")
        if int(retries):
            health["Retries"] = int(retries)
    state.config["Healthcheck"] = health


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def _duration(text: str, flag: str) -> int:
    """Go's time.ParseDuration, in nanoseconds; 0 for none; under 1 ms refused."""
    if not text:
        return 0
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.removeprefix("+"))
    if body == "0":
        return 0
    total, position = 0.0, 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            raise BadRequestError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        position = match.end()
    if not body:
        raise BadRequestError(f'time: invalid duration "{text}"')
    nanoseconds = sign * int(total)
    if nanoseconds == 0:
        return 0
    if nanoseconds < _MIN_DURATION_NS:
        raise BadRequestError(f'Interval "{flag}" cannot be less than 1ms')
    return nanoseconds


# The instructions a change may be (dockerd's validCommitCommands), each with its effect.
_DISPATCH: dict[str, Callable[[_State, _Instruction], None]] = {
    "cmd": _cmd,
    "entrypoint": _entrypoint,
    "env": _env,
    "expose": _expose,
    "healthcheck": _healthcheck,
    "label": _label,
    "onbuild": _onbuild,
    "stopsignal": _stopsignal,
    "user": _user,
    "volume": _volume,
    "workdir": _workdir,
}


# -- words as a shell reads them (BuildKit's shell.Lex) ------------------------------------


class _Shell:
    """Quotes, `\\` escapes and `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`,
    `${VAR:+word}`, `${VAR+word}`, `${VAR:?msg}`, `${VAR?msg}`."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env

    def word(self, text: str) -> str:
        return "".join(piece for piece, _ in self._pieces(text))

    def words(self, text: str) -> list[str]:
        """Split on whitespace outside quotes, also inside expanded variables."""
        words: list[str] = []
        current, have = "", False
        for piece, quoted in self._pieces(text):
            if quoted:
                current, have = current + piece, True
                continue
            for index, part in enumerate(re.split(r"\s+", piece)):
                if index and have:
                    words.append(current)
                    current, have = "", False
                if part:
                    current, have = current + part, True
        if have:
            words.append(current)
        return words

    def _pieces(self, text: str) -> list[tuple[str, bool]]:
        """(text, quoted) pieces: what quotes held, and what they did not."""
        pieces: list[tuple[str, bool]] = []
        index = 0
        while index < len(text):
            char = text[index]
            if char == "\\":
                if index + 1 < len(text):
                    pieces.append((text[index + 1], True))
                index += 2
            elif char == "'":
                end = text.find("'", index + 1)
                if end < 0:
                    raise BadRequestError(
                        "unexpected end of statement while looking for matching '"
                    )
                pieces.append((text[index + 1 : end], True))
                index = end + 1
            elif char == '"':
                index = self._double(text, index + 1, pieces)
            elif char == "$":
                value, index = self._variable(text, index + 1)
                pieces.append((value, False))
            else:
                pieces.append((char, False))
                index += 1
        return pieces

    def _double(self, text: str, index: int, pieces: list[tuple[str, bool]]) -> int:
        quoted = ""
        while index < len(text):
            char = text[index]
            if char == '"':
                pieces.append((quoted, True))
                return index + 1
            if char == "\\" and index + 1 < len(text) and text[index + 1] in '"$\\':
                quoted += text[index + 1]
                index += 2
            elif char == "$":
                value, index = self._variable(text, index + 1)
                quoted += value
            else:
                quoted += char
                index += 1
        raise BadRequestError("unexpected end of statement while looking for matching double-quote")

    def _variable(self, text: str, index: int) -> tuple[str, int]:
        """The value of the variable after a `$` at `index - 1`, and where it ends."""
        if index < len(text) and text[index] == "{":
            end = text.find("}", index)
            if end < 0:
                raise BadRequestError("missing '}'")
            inner = text[index + 1 : end]
            match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+?])(.*))?", inner, re.S)
            if match is None:
                raise BadRequestError(f"bad substitution: ${{{inner}}}")
            name, operator, word = match.group(1), match.group(2), match.group(3) or ""
            value = self._env.get(name)
            if operator is None:
                return value or "", end + 1
            unset = value is None or (operator.startswith(":") and value == "")
            kind = operator[-1]
            if kind == "-":
                return (self.word(word) if unset else value or ""), end + 1
            if kind == "+":
                return ("" if unset else self.word(word)), end + 1
            if unset:
                raise BadRequestError(f"{name}: {self.word(word) or 'is not allowed to be unset'}")
            return value or "", end + 1
        match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, index)
        if match is None:
            return "$", index
        return self._env.get(match.group(0), ""), match.end()
