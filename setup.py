"""Package discovery for fedsim's layout; all metadata lives in ``pyproject.toml``.

The import package ``fedsim`` spans four top-level folders: ``fedsim/`` itself, and
``strategies/``, ``clients/`` and ``datasets/`` as its subpackages ``fedsim.strategies``,
``fedsim.clients`` and ``fedsim.datasets``. setuptools' ``packages.find`` cannot map top-level
folders into one package, so this finds every package (every folder with an ``__init__.py``)
under each root and maps the root: a new subpackage is included without listing it anywhere.
"""

from setuptools import find_packages, setup

ROOTS = {"fedsim": "fedsim", "fedsim.strategies": "strategies", "fedsim.clients": "clients",
         "fedsim.datasets": "datasets"}

packages = []
for package, folder in ROOTS.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=dict(ROOTS))
