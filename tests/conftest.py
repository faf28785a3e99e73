"""Root conftest of the test tree.

It is deliberately (almost) empty: its only job is to exist inside the ``tests``
package so that pytest puts the repository root on ``sys.path`` and
``from tests.support.registry import RegistryProcess`` works however pytest is
started.  Fixtures that start processes live in ``tests/integration/conftest.py``
so unit tests never pay for them.
"""
