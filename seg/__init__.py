"""g2sd.seg: mmseg plugin (multi-level ViT with UperNet, channel-wise distillation, CWD).

Installed as ``g2sd.seg`` (``package_dir`` in setup.cfg) and loaded by configs through
``custom_imports=dict(imports=['g2sd.seg'])``. Implemented in a later milestone.
"""
