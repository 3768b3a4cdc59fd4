"""examples/embed_backend.py --demo runs: backend, mock agent and client in
one Twisted application, then a clean stop."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed_backend.py"


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


@pytest_twisted.ensureDeferred
async def test_embed_example_demo(within: Any) -> None:
    from twisted.internet import reactor

    process = _Collect()
    reactor.spawnProcess(process, sys.executable, [sys.executable, str(EXAMPLE), "--demo"], env=dict(os.environ))
    code = await within(process.ended, 30)
    out, err = process.out.decode(), process.err.decode()
    assert code == 0, out + err
    assert "queue while grading:" in out
    assert out.count("success grade=100.0") == 4 and out.count("failed grade=0.0") == 2
    assert "backend shutting down: answering 0 waiting and 0 running jobs" in err
    assert "Traceback" not in err
