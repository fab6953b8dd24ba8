"""g2sd.cls: classification with task-specific distillation (DeiT-style distillation token).

Installed as ``g2sd.cls`` (``package_dir`` in setup.cfg). Implemented in a later milestone.
"""
