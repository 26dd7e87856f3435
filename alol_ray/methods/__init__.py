"""Training methods of their own module: ``alol_ray/methods/<name>.py`` registers the method ``<name>``.

``alol_ray.registry`` lists these modules by file name (nothing is imported to know the names) and imports one when
its method is first used. A folder ``alol_ray/methods/`` under any entry of ``sys.path`` (``PYTHONPATH``) adds its
modules too, so a method of one's own needs no edit of alol-ray (docs/architecture.md, "How to add ...").
"""

from alol_ray.registry import plugin_folders

__path__ = plugin_folders()  # this folder first, then those under sys.path (a Ray worker's PYTHONPATH included)
