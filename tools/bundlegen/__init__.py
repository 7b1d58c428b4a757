"""The bundle generator: every ``bundles/<backbone>_<pruner>`` from one specification.

- ``spec``: versions and changelog, backbones (2D and 3D), pruners, the bundles that exist, the network blocks;
- ``configs`` / ``configs_3d``: the config templates (``train``, ``evaluate``, ``inference``, ``multi_gpu_train``);
- ``metadata``: ``metadata.json``; ``templates``: the README, LICENSE and logging.conf;
- ``order``: the reading-order check (every ``@key`` defined before it is used);
- ``cli``: every generated file of a bundle and the ``generate`` / ``check`` / ``list`` command line
  (``python tools/bundles.py``).
"""
