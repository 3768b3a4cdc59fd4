"""The public names of each package: changing one is an API change, so it must be deliberate."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "inginious_tx.messages": {
        "ALL_MESSAGES", "load", "load_any", "Dialect", "DIALECTS", "get_dialect", "v06", "v09",
        "MessageMeta", "MessageError", "MalformedMessage", "UnknownMessageType",
        "FieldError", "MissingField", "ExtraField", "WrongFieldType", "BackendJobId", "ClientJobId", "SPResult",
        "ClientHello", "ClientNewJob", "ClientKillJob", "ClientGetQueue", "BackendUpdateContainers",
        "BackendJobStarted", "BackendJobDone", "BackendJobSSHDebug", "BackendGetQueue", "BackendNewJob",
        "BackendKillJob", "AgentHello", "AgentJobStarted", "AgentJobDone", "AgentJobSSHDebug", "Ping", "Pong",
        "Unknown",
    },
    "inginious_tx.messages.v06": {
        "DIALECT", "ALL_MESSAGES", "load", "BackendJobId", "ClientJobId", "SPResult",
        "ClientHello", "ClientNewJob", "ClientKillJob", "ClientGetQueue", "BackendUpdateContainers",
        "BackendJobStarted", "BackendJobDone", "BackendJobSSHDebug", "BackendGetQueue", "BackendNewJob",
        "BackendKillJob", "AgentHello", "AgentJobStarted", "AgentJobDone", "AgentJobSSHDebug", "Ping", "Pong",
        "Unknown",
    },
    "inginious_tx.messages.v09": {
        "DIALECT", "ALL_MESSAGES", "load", "JobId", "SPResult",
        "ClientHello", "ClientNewJob", "ClientKillJob", "ClientGetQueue", "BackendUpdateEnvironments",
        "BackendJobStarted", "BackendJobDone", "BackendJobSSHDebug", "BackendGetQueue", "BackendNewJob",
        "BackendKillJob", "AgentHello", "AgentJobStarted", "AgentJobDone", "AgentJobSSHDebug", "Ping", "Pong",
        "Unknown",
    },
    "inginious_tx.client": {
        "Client", "connect_client", "BackendUnavailable", "EnvironmentUnavailable", "ClientJobResult",
        "QueueSnapshot", "RunningJob", "WaitingJob", "UNAVAILABLE",
    },
    "inginious_tx.transport": {
        "DEFAULT_LIMITS", "Limits", "UnknownEndpoint", "transports", "transport_for", "listen", "connect",
        "check_credentials", "shared_credentials", "SharedCredential", "check_endpoint", "LISTENING_FORMS",
        "CONNECTING_FORMS",
    },
    "inginious_tx.backend": {
        "Backend", "BackendSettings", "BackendService", "Job", "ClientState", "AgentState", "DEFAULT_POLICY",
        "PriorityPolicy", "FairPolicy", "ShortestFirstPolicy", "available_policies", "load_policy",
    },
    "inginious_tx.agent": {"Agent", "AgentConfig", "JobResult", "RESULT_TYPES"},
    "inginious_tx.dispatch": {"Dispatcher"},
    "inginious_tx.testing": {"MemoryTransport", "MemoryPeer", "MemoryListener", "MemoryConnection", "RecordingSink"},
    "inginious_tx.plugin": {"PluginError", "available", "load", "TRANSPORTS", "POLICIES", "AGENT_BACKENDS"},
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_pinned_and_importable(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"
