# The twistd commands of inginious-tx.  No reactor import here (it would
# break ``twistd --reactor``): the service modules load only when used.
from twisted.application.service import ServiceMaker

inginious_backend = ServiceMaker(
    "inginious-tx backend",
    "inginious_tx.backend.tap",
    "INGInious-compatible grading backend: queues jobs and dispatches them to agents",
    "inginious-backend",
)

inginious_agent = ServiceMaker(
    "inginious-tx agent",
    "inginious_tx.agent.tap",
    "INGInious-compatible grading agent: runs jobs (mock, local subprocess or Docker)",
    "inginious-agent",
)
