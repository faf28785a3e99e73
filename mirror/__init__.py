"""mirror: keep a local registry in step with images on Docker Hub (or any registry).

The library layer (``reference``, ``manifest``, ``auth``, ``registry``, ``copy``) knows nothing
of config files, schedules or logging set-up; the application layer (``config``, ``jobs``,
``cli``) builds on it. Import submodules directly: this package keeps start-up cheap.
"""

__version__ = "0.1.0"
