"""`changes` (`docker import --change`): Dockerfile instructions applied to an image's
config as dockerd's BuildFromConfig applies them."""

from __future__ import annotations

from typing import Any

import pytest

from ferryd.distribution.changes import apply_changes, empty_config
from ferryd.errors import BadRequestError


def changed(*changes: str) -> dict[str, Any]:
    config = apply_changes(list(changes))
    base = empty_config()
    return {k: v for k, v in config.items() if k not in base or v != base[k]}


def test_no_changes_is_dockerds_empty_config() -> None:
    assert apply_changes([]) == empty_config()
    assert empty_config()["Cmd"] is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ('CMD ["/bin/sh", "-c", "x"]', ["/bin/sh", "-c", "x"]),
        ("CMD echo $HOME", ["/bin/sh", "-c", "echo $HOME"]),  # no expansion in CMD
        ("cmd []", []),
        ('CMD [ "a", ]', ["/bin/sh", "-c", '[ "a", ]']),  # not JSON: the shell form
        ("CMD", ["/bin/sh", "-c"]),
    ],
)
def test_cmd_exec_and_shell_forms(change: str, expected: list[str]) -> None:
    assert changed(change)["Cmd"] == expected


def test_entrypoint_clears_cmd_unless_a_cmd_came_first() -> None:
    assert changed('ENTRYPOINT ["/e"]', 'CMD ["x"]') == {"Entrypoint": ["/e"], "Cmd": ["x"]}
    assert changed('CMD ["x"]', "ENTRYPOINT /e") == {
        "Cmd": ["x"],
        "Entrypoint": ["/bin/sh", "-c", "/e"],
    }
    assert changed("ENTRYPOINT []") == {}


def test_env_forms_quotes_and_expansion() -> None:
    config = changed(
        "ENV A=1 B='single quoted' C=\"double $A\"",
        "ENV OLD a whole value",
        "env D=${A:-x}${NOPE:-dflt}${A:+set} E=\\$A",
        "ENV A=2",
    )

    assert config["Env"] == [
        "A=2",
        "B=single quoted",
        "C=double 1",
        "OLD=a whole value",
        "D=1dfltset",
        "E=$A",
    ]


def test_continuations_and_comments() -> None:
    config = changed("# a comment\nLABEL a=1 \\\n  b=2", "  # another\n", "USER nobody")

    assert config == {"Labels": {"a": "1", "b": "2"}, "User": "nobody"}


def test_expose_volume_workdir_user_stopsignal_onbuild() -> None:
    config = changed(
        'ENV PORTS="80 443"',
        "EXPOSE $PORTS 7000-7001/udp",
        "VOLUME /a /b",
        'VOLUME ["/c"]',
        "WORKDIR /srv//x/../y",
        "WORKDIR rel",
        "USER $PORTS",
        "STOPSIGNAL 9",
        "onbuild   ADD . /app",
    )

    assert config["ExposedPorts"] == {
        "80/tcp": {},
        "443/tcp": {},
        "7000/udp": {},
        "7001/udp": {},
    }
    assert config["Volumes"] == {"/a": {}, "/b": {}, "/c": {}}
    assert config["WorkingDir"] == "/srv/y/rel"
    assert config["User"] == "80 443"
    assert config["StopSignal"] == "9"
    assert config["OnBuild"] == ["ADD . /app"]


def test_healthcheck_forms() -> None:
    assert changed("HEALTHCHECK NONE")["Healthcheck"] == {"Test": ["NONE"]}
    assert changed('HEALTHCHECK --timeout=1m30s CMD ["true"]')["Healthcheck"] == {
        "Test": ["CMD", "true"],
        "Timeout": 90_000_000_000,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("RUN make", "run is not a valid change command"),
        ("COPY a b", "copy is not a valid change command"),
        ("MAINTAINER me", "maintainer is not a valid change command"),
        ("ENV", "ENV requires at least one argument"),
        ("ENV A=1 B", 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
        ("LABEL =x", "LABEL names can not be blank"),
        ("USER", "USER requires exactly one argument"),
        ('VOLUME [""]', "VOLUME specified can not be an empty string"),
        ('CMD ["a", 1]', "when using JSON array syntax, arrays must be comprised of strings only"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK BOGUS x", 'Unknown type "BOGUS" in HEALTHCHECK (try CMD)'),
        ("HEALTHCHECK --interval=1ns CMD x", 'Interval "interval" cannot be less than 1ms'),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)"),
        ("HEALTHCHECK --bogus=1 CMD x", "unknown flag: bogus"),
        ("EXPOSE 70000", "invalid containerPort: 70000"),
        ("STOPSIGNAL 0", "Invalid signal: 0"),
        ("# only a comment", "file with no instructions"),
        ("ENV A=${B:?unset}", "B: unset"),
    ],
)
def test_refused_changes_say_what_buildkit_says(change: str, message: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        apply_changes([change])
    assert str(caught.value) == message
