"""The reactor type of the parameters that need several reactor interfaces at once.

A parameter that needs one interface of the reactor is typed with it
(``IReactorTime``, ``IReactorFDSet``...).  One that needs several (timers and
processes, timers and file descriptors, TCP and processes, an endpoint string
that may name TCP...) is typed :class:`CommonReactor`: the intersection of
``IReactorCore``, ``IReactorTime``, ``IReactorFDSet``, ``IReactorTCP`` and
``IReactorProcess``, which is how Twisted itself types its global reactor, so
that the global reactor (the lazy default everywhere) and any reactor passes.
What every reactor need not provide (``IReactorUNIX``, ``IReactorSSL``,
``IReactorFromThreads``) is adapted where it is used, as Twisted advises
(``IReactorFromThreads(reactor)``): it fails there, with a clear error.

It is a type for annotations: no reactor declares that it provides it (check
what a reactor provides with the interfaces themselves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Twisted's own intersection (twisted/internet/__init__.py types the global reactor with it).
    from twisted.internet import _IReactorCommon as CommonReactor
else:
    from twisted.internet.interfaces import IReactorCore, IReactorFDSet, IReactorProcess, IReactorTCP, IReactorTime

    class CommonReactor(IReactorCore, IReactorTime, IReactorFDSet, IReactorTCP, IReactorProcess):
        """At run time, the same intersection for whoever reads the annotations
        (``typing.get_type_hints``, the docs); only type checkers use it."""


__all__ = ["CommonReactor"]
