"""g2sd.det: mmdet plugin (ViTDet backbone with simple feature pyramid, FRS distillation).

Installed as ``g2sd.det`` (``package_dir`` in setup.cfg) and loaded by configs through
``custom_imports=dict(imports=['g2sd.det'])``. Implemented in a later milestone.
"""
