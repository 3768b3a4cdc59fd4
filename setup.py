"""Packaging hook: an editable install (``pip install -e .``) registers the twistd commands.

A regular install copies ``plugins/twisted/plugins/`` into Twisted's
``twisted/plugins`` (setup.cfg maps that package).  An editable install only
maps packages that are not found elsewhere, and ``twisted.plugins`` is always
Twisted's own, so twistd would not see ``inginious-backend``.  Twisted's plugin
system also searches ``twisted/plugins`` below every ``sys.path`` entry, so the
editable wheel gets one ``.pth`` line putting ``plugins/`` on ``sys.path``.
Everything else is declared in setup.cfg.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.editable_wheel import editable_wheel

PLUGINS = Path(__file__).resolve().parent / "plugins"


class EditableWheelWithDropin(editable_wheel):
    """setuptools' editable wheel plus ``inginious_tx_twistd_dropin.pth``."""

    def _install_namespaces(self, installation_dir: str, pth_prefix: str) -> None:
        # Runs once, with the unpacked wheel's root: what is written there is shipped.
        super()._install_namespaces(installation_dir, pth_prefix)
        Path(installation_dir, "inginious_tx_twistd_dropin.pth").write_text(f"{PLUGINS}\n")


setup(cmdclass={"editable_wheel": EditableWheelWithDropin})
