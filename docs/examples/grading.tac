# A whole grading server in one process: a backend and a local agent.
#
#   ITX_TASKS=/srv/tasks twistd -ny grading.tac
#
# Frontends connect to ITX_CLIENTS (default: zmq:tcp://127.0.0.1:2000, as
# INGInious expects); the agent reaches the backend over the Unix socket
# ITX_AGENTS.  The local agent is for trusted code only: use Docker agents
# for students' code.
import os

from twisted.application.service import Application
from twisted.internet import reactor

from inginious_tx.agent import Agent, AgentConfig
from inginious_tx.agent.local import LocalBackend
from inginious_tx.backend import BackendService

clients = os.environ.get("ITX_CLIENTS", "zmq:tcp://127.0.0.1:2000")
agents = os.environ.get("ITX_AGENTS", "unix:/run/inginious-tx/agents.sock")
slots = int(os.environ.get("ITX_SLOTS", "2"))

application = Application("grading")

backend = BackendService(reactor, [clients], [agents], policy="fair")
backend.setServiceParent(application)

config = AgentConfig(tasks_dir=os.environ["ITX_TASKS"], slots=slots)
agent = Agent(reactor, LocalBackend(reactor, config), "local-1", slots, agents)
agent.setServiceParent(application)
