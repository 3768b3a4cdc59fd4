"""The unchecked constructor the backend relays already-checked fields with (``_trusted``)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from inginious_tx.backend import dialect06, dialect09
from inginious_tx.backend.adapter import relay
from inginious_tx.messages import v06, v09

RELAYED = [v06.BackendNewJob, v06.BackendJobStarted, v06.BackendJobDone,
           v09.BackendNewJob, v09.BackendJobStarted, v09.BackendJobDone]  # fmt: skip


@pytest.mark.parametrize("cls", RELAYED, ids=lambda c: f"{c.dialect}-{c.__name__}")
def test_trusted_takes_the_same_arguments_and_encodes_the_same(cls: type) -> None:
    init = inspect.signature(cls.__dict__["__init__"])
    build: Any = cls
    trusted = inspect.signature(build._trusted)
    assert list(init.parameters)[1:] == list(trusted.parameters)
    # distinct values per argument, so that an argument put in the wrong field shows
    args = [f"v{i}" for i in range(len(trusted.parameters))]
    made = build._trusted(*args)
    assert type(made) is cls
    probe = object.__new__(cls)
    cls.__dict__["__init__"].__wrapped__(probe, *args)
    assert made.__dict__ == probe.__dict__


def test_relay_checks_unless_every_field_type_matches() -> None:
    sources = {**v06.AgentJobDone.field_types, "job_id": str}
    assert relay(v06.BackendJobDone, sources) is v06.BackendJobDone._trusted  # type: ignore[attr-defined]
    # one field of another declared type: the checking constructor
    assert relay(v06.BackendJobDone, {**sources, "stdout": int}) is v06.BackendJobDone
    assert relay(v06.BackendJobDone, {"job_id": str}) is v06.BackendJobDone


def test_the_dialects_relay_the_hot_messages_unchecked() -> None:
    for module in (dialect06, dialect09):
        assert module._relays.started is not module._BackendJobStarted
        assert module._new_job is not module._BackendNewJob
        assert all(build is not module._BackendJobDone for build in module._relays._done.values())
